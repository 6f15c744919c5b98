"""The wait an LLM worker publishes counts the broker's backlog (workers.backlog), on Redis and the embedded queue.

Tasks published to the real ``llm`` queue with no worker taking them are the backlog; the engine's figures (its
own estimate, its service time, its slots) are given, as a batched engine reports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from models.infra.kv import make_kv
from models.infra.load import current_wait, publish_wait
from models.infra.queues import LLM_QUEUE, Publisher, make_celery, queue_depth
from models.settings import Settings
from workers.backlog import BacklogThread, estimate


@pytest.fixture(params=["embedded", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    extra = {"broker_url": request.getfixturevalue("redis_url")} if request.param == "redis" else {}
    yield Settings(data_dir=tmp_path, **extra)


def test_published_wait_grows_with_the_queue_the_engine_cannot_see(settings: Settings) -> None:
    app = make_celery(settings, "backlog-test")
    with app.connection_for_write() as conn:  # an empty llm queue to start from
        conn.default_channel.queue_purge(LLM_QUEUE)
    kv = make_kv(settings)
    engine = SimpleNamespace(service_s=2.0, n_slots=4, wait_estimate_s=lambda: 0.5)  # a full engine's figures
    thread = BacklogThread(kv, lambda: engine, lambda: queue_depth(app, LLM_QUEUE))
    try:
        assert thread.publish_once() == 0.5 and current_wait(kv) == 0.5  # nothing queued: the engine's own
        publisher = Publisher(app)
        for inbound_id in range(12):
            publisher.handle_inbound(inbound_id)
        assert queue_depth(app, LLM_QUEUE) == 12
        assert thread.publish_once() == pytest.approx(0.5 + 12 * 2.0 / 4)  # drained four at a time
        assert current_wait(kv) == pytest.approx(6.5)
        assert BacklogThread(kv, lambda: None, lambda: 12).publish_once() is None  # no engine yet: says nothing
        assert BacklogThread(kv, lambda: SimpleNamespace(service_s=0.0, wait_estimate_s=lambda: 0.0),
                             lambda: 12).publish_once() is None  # no service time yet
        assert current_wait(kv) == pytest.approx(6.5)
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(LLM_QUEUE)
        publish_wait(kv, 0.0)
        getattr(kv, "close", lambda: None)()


def test_a_broker_that_fails_publishes_nothing_new() -> None:
    def broken() -> int:
        raise ConnectionError("broker down")

    published: list[float] = []
    kv = SimpleNamespace(set=lambda key, value, ttl: published.append(float(value)))
    engine = SimpleNamespace(service_s=1.0, n_slots=2, wait_estimate_s=lambda: 0.0)
    assert BacklogThread(kv, lambda: engine, broken).publish_once() is None  # type: ignore[arg-type]
    assert published == []
    assert estimate(0.0, 10, 3.0, 0) == 30.0  # no slots known: one at a time
