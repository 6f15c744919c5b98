"""The continuous-batching engine on real llama.cpp with a random-weight Qwen3 GGUF."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.envelope import Turn
from models.settings import Settings
from tests.integration.conftest import wait_for
from workers.llm.batched import PREFIX_SEQ, BatchedEngine, Request
from workers.llm.engine import GenerationError, PromptTooLong
from workers.llm.model_files import resolve_model

SYSTEM = "你是一名专业、耐心的在线客服助手。回答要简洁、礼貌、准确。" * 4
QUESTIONS = ["你好", "我的快递到哪了？", "怎么退货", "能开发票吗", "营业时间是几点", "hello, is anyone there?",
             "谢谢你的帮助", "订单号 20261121 的状态"]


def make_engine(tmp_path: Path, model: Path, **extra: object) -> BatchedEngine:
    values: dict[str, object] = {"data_dir": tmp_path, "model_path": model, "temperature": 0.0, "max_tokens": 16,
                                 "n_ctx": 1024, "seed": 7, "n_slots": 4} | extra
    settings = Settings(**values)  # type: ignore[arg-type]
    return BatchedEngine(resolve_model(settings), settings)


@pytest.fixture
def engine(tmp_path: Path, tiny_gguf: Path) -> Iterator[BatchedEngine]:
    eng = make_engine(tmp_path, tiny_gguf)
    try:
        yield eng
    finally:
        eng.close()


def turns(question: str, system: str = SYSTEM) -> list[Turn]:
    return [Turn("system", system), Turn("user", question)]


def kv_positions(engine: BatchedEngine, seq: int) -> int:
    import llama_cpp

    return int(llama_cpp.llama_memory_seq_pos_max(engine._mem, seq))


def test_batched_and_single_runs_produce_identical_tokens(engine: BatchedEngine) -> None:
    prompts = [engine.prompt_tokens(turns(q)) for q in QUESTIONS]
    alone = []
    for tokens in prompts:
        request = engine.submit(tokens)
        request.wait(60)
        alone.append(request.output_ids)
    together = [engine.submit(tokens) for tokens in prompts]  # 8 requests, 4 slots: batched and queued
    for request in together:
        request.wait(60)
    assert [r.output_ids for r in together] == alone
    assert all(len(ids) > 0 for ids in alone)
    assert engine.stats["prefix_tokens_reused"] > 0  # the system block was evaluated once and shared


def test_generate_keeps_the_simple_engine_interface(engine: BatchedEngine) -> None:
    streamed: list[str] = []
    generation = engine.generate(turns("我的快递到哪了？"), on_text=streamed.append)
    assert generation.completion_tokens > 0 and generation.finish_reason in {"stop", "length"}
    assert generation.text == "".join(streamed).strip()
    assert generation.first_token_s is not None and generation.model == engine.model_name


def test_a_thousand_short_requests_through_four_slots_leak_no_kv(engine: BatchedEngine) -> None:
    prompts = [engine.prompt_tokens(turns(f"第{i}个问题")) for i in range(20)]
    requests: list[Request] = []
    for i in range(1000):
        requests.append(engine.submit(prompts[i % 20], max_new=2))
    for request in requests:
        request.wait(120)
    assert engine.stats["completed"] == 1000
    assert all(r.result is not None and r.result.completion_tokens >= 1 for r in requests)
    for slot in range(1, 5):  # every slot's sequence is empty again
        assert kv_positions(engine, slot) == -1
    prefix = engine.shared_prefix_len(prompts[0])
    assert kv_positions(engine, PREFIX_SEQ) == prefix - 1  # only the shared prefix stays
    assert engine.generate(turns("还在吗")).completion_tokens > 0  # and the engine still works


def test_cancellation_frees_the_slot_at_once(tmp_path: Path, tiny_gguf: Path) -> None:
    engine = make_engine(tmp_path, tiny_gguf, n_slots=1, n_ctx=4096)
    try:
        tokens = engine.prompt_tokens(turns("请详细介绍一下退货流程"))
        long = engine.submit(tokens, max_new=3500, ignore_eos=True, on_text=lambda _: True)
        waiting = engine.submit(tokens, max_new=4)  # only one slot: queued behind the long one
        wait_for(lambda: kv_positions(engine, 1) >= 0, timeout=30)  # the long one is being generated
        assert engine.queue_depth() == 1
        long.cancel()
        result = long.wait(30)
        assert result.finish_reason == "cancelled" and 0 < result.completion_tokens < 3500
        assert waiting.wait(30).completion_tokens == 4  # the freed slot served the next request
        assert kv_positions(engine, 1) == -1
    finally:
        engine.close()


def test_a_deadline_ends_a_generation_and_frees_its_slot(tmp_path: Path, tiny_gguf: Path) -> None:
    engine = make_engine(tmp_path, tiny_gguf, n_slots=1, n_ctx=4096)
    try:
        tokens = engine.prompt_tokens(turns("请详细介绍一下退货流程"))
        request = engine.submit(tokens, max_new=3500, ignore_eos=True, deadline=time.monotonic() + 0.5)
        wait_for(lambda: kv_positions(engine, 1) >= 0, timeout=30)  # admitted and generating when time runs out
        result = request.wait(30)
        assert result.finish_reason == "deadline" and 0 < result.completion_tokens < 3500
        expired = engine.submit(tokens, deadline=time.monotonic() - 1)  # already past: never admitted
        assert expired.wait(30).finish_reason == "deadline" and expired.output_ids == []
        assert kv_positions(engine, 1) == -1
    finally:
        engine.close()


def test_an_over_long_prompt_is_refused_and_the_engine_keeps_serving(engine: BatchedEngine) -> None:
    tokens = engine.prompt_tokens(turns("你好"))
    with pytest.raises(PromptTooLong, match="context holds 1024"):
        engine.submit(tokens * 200)
    with pytest.raises(PromptTooLong):
        engine.generate([Turn("system", "很长的系统提示。" * 2000), Turn("user", "你好")])
    with pytest.raises(GenerationError):
        engine.submit([])
    assert engine.generate(turns("你好")).completion_tokens > 0


def test_a_new_system_prompt_replaces_the_shared_prefix(engine: BatchedEngine) -> None:
    first = engine.generate(turns("你好"))
    other = engine.prompt_tokens(turns("你好", system="You are a helpful assistant for a bookshop. " * 3))
    before = engine.stats["prefix_tokens_reused"]
    request = engine.submit(other)
    request.wait(60)
    assert engine.stats["prefix_tokens_reused"] == before + engine.shared_prefix_len(other)
    assert kv_positions(engine, PREFIX_SEQ) == engine.shared_prefix_len(other) - 1
    assert engine.generate(turns("你好")).text == first.text  # the old prompt is evaluated again, same answer


def test_close_fails_waiting_requests_instead_of_hanging(tmp_path: Path, tiny_gguf: Path) -> None:
    engine = make_engine(tmp_path, tiny_gguf, n_slots=1, n_ctx=4096)
    tokens = engine.prompt_tokens(turns("你好"))
    running = engine.submit(tokens, max_new=3500, ignore_eos=True)
    queued = engine.submit(tokens)
    engine.close()
    for request in (running, queued):
        with pytest.raises(GenerationError, match="shut down"):
            request.wait(30)


def test_the_wait_estimate_is_reported_while_requests_queue(tmp_path: Path, tiny_gguf: Path) -> None:
    engine = make_engine(tmp_path, tiny_gguf, n_slots=1, n_ctx=4096)
    reports: list[float] = []
    engine.on_wait_estimate = reports.append
    try:
        tokens = engine.prompt_tokens(turns("你好"))
        engine.submit(tokens, max_new=200, ignore_eos=True).wait(60)  # teaches the engine a service time
        long = engine.submit(tokens, max_new=1500, ignore_eos=True)
        queued = [engine.submit(tokens, max_new=200, ignore_eos=True) for _ in range(2)]
        assert engine.wait_estimate_s() > 0  # one running, two waiting, one slot
        for request in (long, *queued):
            request.wait(120)
        engine.submit(tokens, max_new=2).wait(60)
        deadline = time.monotonic() + 10
        while reports[-1] != 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.close()
    assert max(reports) > 0 and reports[-1] == 0.0  # told while busy, and told when it drained


def test_a_slow_stream_consumer_does_not_stall_the_other_conversations(engine: BatchedEngine) -> None:
    tokens = engine.prompt_tokens(turns("你好"))
    release = threading.Event()
    received: list[str] = []
    fast: list[str] = []
    results = []

    def stuck_socket(piece: str) -> None:  # a client whose socket does not drain
        release.wait(30)
        received.append(piece)

    slow = engine.submit(tokens, max_new=20, ignore_eos=True, on_text=stuck_socket)
    other = engine.submit(tokens, max_new=20, ignore_eos=True, on_text=fast.append)
    waiter = threading.Thread(target=lambda: results.append(slow.wait(30)))
    waiter.start()  # the slow conversation's own thread is stuck in its callback
    streamed = other.wait(30)  # the other conversation streams and finishes meanwhile
    assert streamed.completion_tokens == 20 and "".join(fast).strip() == streamed.text
    assert slow.done.wait(30) and not received  # generated too, while its consumer is still stuck
    release.set()
    waiter.join(30)
    assert "".join(received).strip() == results[0].text  # and every piece reached it afterwards


def test_a_listener_that_goes_away_stops_the_generation(engine: BatchedEngine) -> None:
    tokens = engine.prompt_tokens(turns("请详细介绍一下退货流程"))
    pieces: list[str] = []

    def caller_spoke_over_it(piece: str) -> bool:
        pieces.append(piece)
        return len(pieces) < 3  # False on the third piece: stop generating

    result = engine.submit(tokens, max_new=900, ignore_eos=True, on_text=caller_spoke_over_it).wait(30)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 900
    assert kv_positions(engine, 1) == -1 and kv_positions(engine, 2) == -1
