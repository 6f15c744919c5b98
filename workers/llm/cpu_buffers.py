"""Whether llama.cpp may put weights in its extra CPU buffer types (Intel AMX tiles, repacked layouts).

Measured on this project's 2-core CI VM (an Intel Xeon with AMX): llama-cpp-python 0.3.36 with the
extra buffer types on ends the process with a segmentation fault on the first decode of the demo
model (SmolLM2 Q4_1), in both engines; with them off it runs. The crash is native, so nothing can
catch it: "auto" (the default) turns them off on a CPU that reports AMX and leaves llama.cpp's
default elsewhere; ``KEFU_LLAMA_EXTRA_BUFFERS=on|off`` decides explicitly. With the weights offloaded
to a GPU the setting changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

Choice = Literal["auto", "on", "off"]


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag.startswith("amx") for flag in flags)


def use_extra_buffers(choice: Choice, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    if choice == "auto":
        return not cpu_has_amx(cpuinfo)
    return choice == "on"


@contextlib.contextmanager
def model_defaults(extra_buffers: bool) -> Iterator[None]:
    """While a high-level ``llama_cpp.Llama`` is built: its model parameters with ``use_extra_bufts`` set.

    ``Llama`` takes no argument for it, so the defaults it starts from are swapped for the duration
    (callers hold their engine's load lock; nothing else builds models in a worker process meanwhile).
    """
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def defaults() -> low.llama_model_params:
        params = original()
        params.use_extra_bufts = extra_buffers
        return params

    low.llama_model_default_params = defaults
    try:
        yield
    finally:
        low.llama_model_default_params = original
