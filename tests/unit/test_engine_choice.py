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
