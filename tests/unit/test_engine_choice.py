"""KEFU_ENGINE picks the batched engine or the simple baseline; the worker is sized to match."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from models.settings import ConfigError, Settings
from workers import cli
from workers.llm.batched import BatchedEngine
from workers.llm.engine import LlamaEngine
from workers.runtime import Runtime


@pytest.mark.parametrize(("engine", "cls"), [("batched", BatchedEngine), ("simple", LlamaEngine)])
def test_the_configured_engine_is_built(tmp_path: Path, tiny_gguf: Path, engine: str, cls: type) -> None:
    runtime = Runtime(Settings(data_dir=tmp_path, model_path=tiny_gguf, engine=engine))  # type: ignore[arg-type]
    assert isinstance(runtime.llm, cls)  # built lazily: nothing is loaded yet
    runtime.close()


def test_the_batched_engine_refuses_a_prefork_llm_worker(tmp_path: Path) -> None:
    args = argparse.Namespace(queues="llm", pool="prefork", concurrency=None, warm=False, beat=False)
    with pytest.raises(ConfigError, match="--pool threads"):
        cli.cmd_worker(Settings(data_dir=tmp_path, engine="batched"), args)


@pytest.mark.parametrize("slots", [0, 300])
def test_slot_count_is_checked(tmp_path: Path, slots: int) -> None:
    with pytest.raises(ConfigError, match="KEFU_N_SLOTS"):
        Settings(data_dir=tmp_path, n_slots=slots).check_reliability()


def test_extra_cpu_buffers_are_off_where_the_cpu_has_amx(tmp_path: Path) -> None:
    from workers.llm.cpu_buffers import use_extra_buffers

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert use_extra_buffers("auto", amx) is False and use_extra_buffers("auto", plain) is True
    assert use_extra_buffers("on", amx) is True and use_extra_buffers("off", plain) is False
    assert use_extra_buffers("auto", tmp_path / "missing") is True  # no cpuinfo: llama.cpp's default
