"""The generation deadline holds when a model step does not end: the answer comes back at the deadline.

Real llama.cpp (the tiny synthetic Qwen3, simple engine). The test holds the engine's run lock, which a
generation holds for every step: to the waiting caller it is one step that does not end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.envelope import Turn
from models.settings import Settings
from workers.llm.engine import LlamaEngine
from workers.llm.watchdog import DEADLINE_MISSED, generate_by
from workers.runtime import Runtime

TURNS = [Turn("system", "You are a helpful assistant."), Turn("user", "hello")]
PATIENCE_S = 30  # far past the deadline: only a caller that waits for the stuck step takes this long


@pytest.fixture
def engine(tmp_path: Path, tiny_gguf: Path) -> Iterator[LlamaEngine]:
    rt = Runtime(Settings(data_dir=tmp_path, model_path=tiny_gguf, engine="simple", max_tokens=16,
                          temperature=0.0, seed=7))
    llm = rt.llm
    assert isinstance(llm, LlamaEngine)
    llm.load()
    try:
        yield llm
    finally:
        rt.close()


def _in_thread(call: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, out


def test_a_stuck_step_gives_the_answer_back_at_the_deadline(engine: LlamaEngine) -> None:
    streamed: list[str] = []
    engine._run_lock.acquire()  # the step in progress does not end
    try:
        thread, out = _in_thread(lambda: generate_by(engine, TURNS, on_text=streamed.append,
                                                     deadline=time.monotonic() + 0.3))
        thread.join(PATIENCE_S)
        finished_while_stuck = not thread.is_alive()
    finally:
        engine._run_lock.release()  # the step ends; its late result is dropped
    assert finished_while_stuck, "the caller waited for the stuck step"
    generation = out[0]
    assert generation.finish_reason == DEADLINE_MISSED and generation.text == ""  # type: ignore[attr-defined]
    engine.generate(TURNS)  # the engine serves again once the step ended (after the late generation)
    assert streamed == []  # nothing reached the caller after it had its answer


def test_a_generation_in_time_is_returned_unchanged(engine: LlamaEngine) -> None:
    streamed: list[str] = []
    generation = generate_by(engine, TURNS, on_text=streamed.append, deadline=time.monotonic() + PATIENCE_S)
    assert generation.finish_reason in {"stop", "length"}
    assert "".join(streamed).strip() == generation.text


def test_engine_errors_pass_through(engine: LlamaEngine) -> None:
    from workers.llm.engine import PromptTooLong

    with pytest.raises(PromptTooLong):
        generate_by(engine, [Turn("system", "x"), Turn("user", "word " * 5000)], on_text=None,
                    deadline=time.monotonic() + PATIENCE_S)
