"""handle_inbound counts its unexpected failures apart from the retries spent waiting its turn."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Retry

from workers import tasks


class StubTask:
    def __init__(self, retries: int) -> None:
        self.request = SimpleNamespace(retries=retries)
        self.retried: list[dict[str, Any]] = []

    def retry(self, **options: Any) -> Retry:
        self.retried.append(options)
        return Retry()


def test_a_failure_after_many_waits_for_an_earlier_message_is_still_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(task: Any, inbound_id: int) -> str:
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(tasks, "_handle_inbound", broken)
    task = StubTask(retries=40)  # 40 short retries spent waiting behind a long answer
    with pytest.raises(Retry):
        tasks.handle_inbound(task, 7)  # type: ignore[arg-type]
    assert task.retried == [{"countdown": 1, "args": (7,), "kwargs": {"failures": 1}}]
    with pytest.raises(RuntimeError):  # the budget is for failures: after five, the sweeper takes over
        tasks.handle_inbound(task, 7, failures=tasks.UNEXPECTED_RETRIES)  # type: ignore[arg-type]
