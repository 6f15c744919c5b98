"""The knowledge base's FAQ sheets reach the dialogue decision: installed in the process's FAQ index when the store's
revision moves, answered at once by ``decide()``, gone when deleted; a database error keeps what was installed.

The FAQ rows are hand-written for these tests (a fictional shop), not evaluation data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from models.dialogue import Action, HandOff, Message, decide
from models.infra.db import make_session_factory, transaction
from models.knowledge import faq_cache, readers, store
from models.knowledge.faq_sync import FaqSync
from models.settings import Settings

ANSWER = "所有订单都可以开电子发票，在订单详情页申请。"


@pytest.fixture
def db(db: Engine) -> Iterator[Engine]:
    yield db
    faq_cache.install([])  # the process's index holds no entry of this test's database


def test_faq_sheets_answer_in_decide_and_stop_when_deleted(db: Engine, clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env / "var")
    sessions = make_session_factory(db)
    sync = FaqSync(sessions, settings)
    assert sync.poll()  # revision 0: nothing yet, installed as such
    assert decide(settings, Message("能开发票吗？"), HandOff.NOBODY).action is Action.GENERATE
    (clean_env / "faq.csv").write_text(f"问题,相似问,答案\n怎么开发票？,能开发票吗|发票怎么开,{ANSWER}\n")
    with transaction(sessions) as session:
        document_id = store.import_document(session, readers.read(clean_env / "faq.csv")).document.id
    assert sync.poll() and not sync.poll()  # installed once; the unchanged revision is not loaded again
    decision = decide(settings, Message("能开发票吗？"), HandOff.NOBODY)
    assert (decision.action, decision.why, decision.text) == (Action.ANSWER, "faq", ANSWER)
    with transaction(sessions) as session:
        store.delete_document(session, document_id)
    assert sync.poll()
    assert decide(settings, Message("能开发票吗？"), HandOff.NOBODY).action is Action.GENERATE


def test_a_database_error_keeps_the_installed_entries(db: Engine, clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env / "var")
    (clean_env / "faq.csv").write_text(f"问题,答案\n怎么开发票？,{ANSWER}\n")
    sessions = make_session_factory(db)
    with transaction(sessions) as session:
        store.import_document(session, readers.read(clean_env / "faq.csv"))
    sync = FaqSync(sessions, settings)
    assert sync.poll()
    with db.begin() as conn:
        conn.execute(text("DROP TABLE kb_state"))
    assert not sync.poll()
    assert decide(settings, Message("怎么开发票？"), HandOff.NOBODY).text == ANSWER


def test_the_thread_installs_the_entries_and_stops(db: Engine, clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env / "var")
    (clean_env / "faq.csv").write_text(f"问题,答案\n怎么开发票？,{ANSWER}\n")
    with transaction(make_session_factory(db)) as session:
        store.import_document(session, readers.read(clean_env / "faq.csv"))
    sync = FaqSync(make_session_factory(db), settings, interval_s=0.01)
    sync.start()
    try:
        deadline = time.monotonic() + 30
        while decide(settings, Message("怎么开发票？"), HandOff.NOBODY).text != ANSWER:
            assert time.monotonic() < deadline, "the thread never installed the entry"
            time.sleep(0.01)
    finally:
        sync.stop()
    assert sync._thread is not None and not sync._thread.is_alive()
