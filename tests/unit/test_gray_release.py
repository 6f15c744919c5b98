"""The gray release's rules on real stores (workers.gray_release, models.model_report, workers.model_command):
sticky assignment and the share, the shared window's atomic counts on Redis and on the embedded SQLite store, the
automatic rollback (threshold, minimum, one winner, audited, counted, the canary's engine freed), promote / rollback
/ resume by hand, and the side-by-side comparison read from the database."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from models.envelope import Turn, utcnow
from models.infra import metrics
from models.infra.db import make_session_factory, transaction
from models.infra.kv import KV, RedisKV, SQLiteKV
from models.model_report import compare, percentile
from models.settings import ConfigError, Settings, load_settings
from models.states import ReplySource
from models.tables import AuditEvent, ConversationRecord, CsatRecord, ReplyRecord
from tests.unit.conftest import REDIS_UNIT_URL
from workers import gray_release, model_command
from workers.gray_release import ACTIVE, CANARY, ERROR, MODERATED, OK, PRIMARY, PROMOTED, ROLLED_BACK, GrayRelease
from workers.llm.engine import Generation

pytestmark = pytest.mark.usefixtures("clean_env")


class Built:
    """A canary engine that only counts how often it was built and closed (the unit tests never generate)."""

    def __init__(self) -> None:
        self.builds = 0
        self.closed = threading.Event()

    def __call__(self) -> Any:
        self.builds += 1
        built = self

        class Engine:
            model_name = "canary-model"

            def load(self) -> None: ...

            def close(self) -> None:
                built.closed.set()

            def generate(self, turns: list[Turn], *, on_text: Any = None, deadline: float | None = None
                         ) -> Generation:
                return Generation("好的", "canary-model", 1, 1, "stop", 0.0, 0.0)

        return Engine()


def canary_file(tmp: Path) -> Path:
    path = tmp / "canary-model.gguf"
    path.write_bytes(b"not a model")  # never loaded here
    return path


def gray(settings: Settings, kv: KV, sessions: sessionmaker[Session], built: Built | None = None) -> GrayRelease:
    canary = gray_release.canary_of(settings)
    assert canary is not None
    return GrayRelease(settings, kv, sessions, canary, built or Built(), primary="primary-model")


@pytest.fixture
def sessions(db: Engine) -> sessionmaker[Session]:
    return make_session_factory(db)


@pytest.fixture(params=["sqlite", "redis"])
def kv(request: pytest.FixtureRequest, clean_env: Path) -> KV:
    if request.param == "redis":
        return RedisKV(request.getfixturevalue("redis14"), 5)
    return SQLiteKV(clean_env / "var" / "kv.sqlite")


def another(kv: KV, clean_env: Path) -> KV:
    """A second connection to the same store, as another worker process has."""
    return RedisKV(REDIS_UNIT_URL, 5) if isinstance(kv, RedisKV) else SQLiteKV(clean_env / "var" / "kv.sqlite")


def settings_for(clean_env: Path, **values: Any) -> Settings:
    return Settings(data_dir=clean_env / "var", canary_backend=str(canary_file(clean_env)), **values)


def audited(sessions: sessionmaker[Session], kind: str) -> list[dict[str, Any]]:
    with sessions() as session:
        return [e.detail for e in session.scalars(select(AuditEvent).where(AuditEvent.kind == kind))]


# --- assignment ------------------------------------------------------------------------------------------------------

def test_a_conversation_keeps_its_arm_and_the_share_holds_over_many() -> None:
    arms = [gray_release.on_canary("abc123", cid, 0.10) for cid in range(20_000)]
    assert arms == [gray_release.on_canary("abc123", cid, 0.10) for cid in range(20_000)]  # the same every time
    assert 0.09 < sum(arms) / len(arms) < 0.11
    other = [gray_release.on_canary("def456", cid, 0.10) for cid in range(20_000)]
    assert other != arms  # another canary gets another tenth, not always the same customers
    wider = [gray_release.on_canary("abc123", cid, 0.30) for cid in range(20_000)]
    assert all(w for a, w in zip(arms, wider, strict=True) if a)  # a larger share keeps those it had
    assert not any(gray_release.on_canary("abc123", cid, 0.0) for cid in range(1000))
    assert all(gray_release.on_canary("abc123", cid, 1.0) for cid in range(1000))


def test_no_canary_means_no_gray_release(clean_env: Path, sessions: sessionmaker[Session]) -> None:
    settings = Settings(data_dir=clean_env / "var")
    assert gray_release.make(settings, SQLiteKV(clean_env / "kv.sqlite"), sessions, "primary-model") is None


def test_a_canary_that_cannot_be_used_is_a_configuration_error_naming_it(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match=r"KEFU_CANARY_BACKEND.*is not a file"):
        gray_release.canary_of(Settings(canary_backend=str(clean_env / "missing.gguf")))
    with pytest.raises(ConfigError, match=r"KEFU_CANARY_BACKEND.*urls"):
        gray_release.canary_of(Settings(canary_backend='{"kind": "openai", "model": "m"}'))
    with pytest.raises(ConfigError, match=r"KEFU_CANARY_BACKEND.*kind"):
        gray_release.canary_of(Settings(canary_backend='{"kind": "ollama"}'))
    with pytest.raises(ConfigError, match="KEFU_CANARY_API_KEY"):
        load_settings(canary_backend='{"kind": "openai", "urls": ["http://x/v1"], "model": "m", "api_key": "k"}')
    with pytest.raises(ConfigError, match="KEFU_CANARY_BACKEND: not valid JSON"):
        load_settings(canary_backend='{"kind": ')
    found = gray_release.canary_of(Settings(canary_backend='{"kind": "openai", "urls": ["http://h:9/v1"], '
                                            '"model": "qwen3-32b"}', canary_api_key="sk-secret"))
    assert found is not None and found.name == "qwen3-32b" and found.backend.api_key is not None
    assert "sk-secret" not in found.backend.describe()


# --- the window and the rollback -------------------------------------------------------------------------------------

def test_counts_from_many_threads_and_two_workers_are_all_kept(clean_env: Path, kv: KV,
                                                               sessions: sessionmaker[Session]) -> None:
    settings = settings_for(clean_env, canary_min_requests=10_000)  # never judged here
    workers = [gray(settings, kv, sessions), gray(settings, another(kv, clean_env), sessions)]

    def count(worker: GrayRelease) -> None:
        for n in range(50):
            worker.record(PRIMARY, ERROR if n % 5 == 0 else OK)

    threads = [threading.Thread(target=count, args=(workers[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = workers[0].window(PRIMARY)
    assert (seen.answers, seen.errors) == (400, 80)
    assert workers[1].window(CANARY).answers == 0


def test_a_counter_counts_from_one_again_once_it_expired(kv: KV) -> None:
    assert [kv.incr("t:counter", 0.3) for _ in range(3)] == [1, 2, 3] and kv.get("t:counter") == "3"
    time.sleep(0.4)  # past the expiry
    assert kv.incr("t:counter", 0.3) == 1


def test_the_canary_is_taken_out_once_past_the_threshold_with_enough_answers(
        clean_env: Path, kv: KV, sessions: sessionmaker[Session]) -> None:
    settings = settings_for(clean_env, canary_share=0.5, canary_min_requests=20, canary_max_error_rate=0.05)
    built = Built()
    one, two = gray(settings, kv, sessions, built), gray(settings, another(kv, clean_env), sessions, built)
    conversations = [cid for cid in range(200) if one.arm(cid) == CANARY]
    assert conversations and all(two.arm(cid) == CANARY for cid in conversations)
    one.engine.load()  # the canary's engine is built (a conversation was answered by it)
    before = metrics.CANARY_ROLLBACKS.labels("canary-model")._value.get()
    for _ in range(19):
        one.record(CANARY, ERROR)  # every answer failed, but 19 < 20 answers: not judged yet
    one.record(CANARY, MODERATED)  # refused by moderation: not an error of the model, not in the window
    assert one.phase().state == ACTIVE and one.window(CANARY).answers == 19
    threads = [threading.Thread(target=w.record, args=(CANARY, ERROR, 42)) for w in (one, two, one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert two.phase().state == ROLLED_BACK and two.phase().by == "auto"
    rolled = audited(sessions, "model_rolled_back")
    assert len(rolled) == 1, "two workers saw the rate pass; only one takes the canary out"
    assert rolled[0] | {"answers": 0} == {
        "model": "canary-model", "canary": one.canary.id, "previous": "active", "by": "auto", "answers": 0,
        "reason": rolled[0]["reason"], "rate": 1.0, "errors": rolled[0]["answers"], "window_s": 300,
        "max_error_rate": 0.05, "min_requests": 20}
    assert rolled[0]["answers"] >= 20
    assert metrics.CANARY_ROLLBACKS.labels("canary-model")._value.get() == before + 1
    assert [one.arm(cid) for cid in conversations] == [PRIMARY] * len(conversations)  # moved back
    assert built.closed.wait(5), "the canary's engine was not freed"  # by whichever worker took it out, or next saw it
    assert metrics.MODEL_SHARE.labels("canary-model", CANARY)._value.get() == 0.0
    assert metrics.MODEL_SHARE.labels("primary-model", PRIMARY)._value.get() == 1.0


def test_an_error_rate_at_the_threshold_is_kept(clean_env: Path, kv: KV, sessions: sessionmaker[Session]) -> None:
    settings = settings_for(clean_env, canary_min_requests=20, canary_max_error_rate=0.05)
    g = gray(settings, kv, sessions)
    for n in range(40):
        g.record(CANARY, ERROR if n in (38, 39) else OK)  # 2 of 40 at the end: 5 %, not above it
    assert g.phase().state == ACTIVE
    g.record(CANARY, ERROR)  # 3 of 41
    assert g.phase().state == ROLLED_BACK


def test_promote_rollback_and_resume_by_hand(clean_env: Path, kv: KV, sessions: sessionmaker[Session]) -> None:
    settings = settings_for(clean_env, canary_min_requests=5)
    g = gray(settings, kv, sessions)
    assert g.change(PROMOTED, by="cli:ops", reason="looks good").state == PROMOTED
    assert all(g.arm(cid) == CANARY for cid in range(100))
    for _ in range(5):
        g.record(CANARY, ERROR)  # a promoted canary that fails is taken out as well
    assert g.phase().state == ROLLED_BACK and all(g.arm(cid) == PRIMARY for cid in range(100))
    resumed = g.change(ACTIVE, by="cli:ops", reason="fixed the template")
    assert resumed.state == ACTIVE and resumed.epoch == 2
    assert g.window(CANARY).answers == 0  # a new window: the old errors do not take it out again at once
    g.record(CANARY, ERROR)
    assert g.phase().state == ACTIVE
    for _ in range(4):
        g.record(CANARY, ERROR)  # and it can be taken out again automatically
    assert g.phase().state == ROLLED_BACK
    kinds = [(k, d["by"], d["previous"]) for k in ("model_promoted", "model_rolled_back", "model_resumed")
             for d in audited(sessions, k)]
    assert kinds == [("model_promoted", "cli:ops", "active"), ("model_rolled_back", "auto", "promoted"),
                     ("model_rolled_back", "auto", "active"), ("model_resumed", "cli:ops", "rolled_back")]


def test_a_failing_kv_store_sends_the_conversation_to_the_primary(clean_env: Path,
                                                                  sessions: sessionmaker[Session]) -> None:
    settings = settings_for(clean_env, canary_share=1.0)
    dead = RedisKV("redis://127.0.0.1:1/0", 0.2)  # nothing listens there
    g = gray(settings, dead, sessions)
    assert g.arm(7) == PRIMARY
    g.record(CANARY, ERROR)  # logged, never raised into the answer


def test_a_state_that_does_not_parse_counts_as_active(clean_env: Path, kv: KV, sessions: sessionmaker[Session]) -> None:
    g = gray(settings_for(clean_env, canary_share=0.0), kv, sessions)
    for garbage in ("not json", '{"state": "paused"}', '{"state": "promoted", "extra": 1}'):
        kv.set(f"gray:{g.canary.id}:state", garbage, 60)
        assert g.phase().state == ACTIVE and g.arm(1) == PRIMARY


def test_the_outcome_of_an_answer() -> None:
    assert gray_release.outcome_of(ReplySource.MODEL, None) == OK
    assert gray_release.outcome_of(ReplySource.MODEL, "moderated_out:mask:keyword:1") == OK
    assert gray_release.outcome_of(ReplySource.FALLBACK, None) == ERROR
    assert gray_release.outcome_of(ReplySource.FALLBACK, "moderated_out:refuse:keyword:1") == MODERATED


# --- the comparison and the command ------------------------------------------------------------------------------

def seed_answers(sessions: sessionmaker[Session]) -> None:
    """Two models: 'old' answered 3 conversations (one handed off, one scored 4), 'new' 2 (one fallback, score 2);
    conversation 3 was moved back from 'new' to 'old' and counts for both."""
    now = utcnow()
    with transaction(sessions) as session:
        convs = [ConversationRecord(channel="web", account="default", peer=f"v{n}", handoffs=1 if n == 1 else 0)
                 for n in range(5)]
        session.add_all(convs)
        session.flush()
        c = [conv.id for conv in convs]
        rows = [("old", c[0], "model", 100), ("old", c[0], "model", 300), ("old", c[1], "model", 200),
                ("old", c[3], "model", 400), ("new", c[2], "model", 50), ("new", c[3], "fallback", 9000),
                (None, c[4], "faq", 0)]
        session.add_all(ReplyRecord(model=m, conversation_id=cid, source=src, latency_ms=ms, text="x", created_at=now)
                        for m, cid, src, ms in rows)
        session.add(ReplyRecord(model="old", conversation_id=c[4], source="model", latency_ms=5, text="x",
                                created_at=now - timedelta(days=30)))  # outside the period
        session.add_all([CsatRecord(conversation_id=c[0], round=0, channel="web", score=4, created_at=now),
                         CsatRecord(conversation_id=c[2], round=0, channel="web", score=2, created_at=now)])


def test_models_compared_side_by_side_from_the_database(sessions: sessionmaker[Session]) -> None:
    seed_answers(sessions)
    with sessions() as session:
        _, lines = compare(session, days=7)
    by = {line.model: line.json() for line in lines}
    assert [line.model for line in lines] == ["old", "new"]
    assert by["old"] | {"latency_p50_ms": 0} == {
        "model": "old", "answers": 4, "fallbacks": 0, "fallback_rate": 0.0, "latency_p50_ms": 0,
        "latency_p95_ms": 400, "conversations": 3, "handed_off": 1, "handoff_rate": round(1 / 3, 4),
        "csat_mean": 4.0, "csat_count": 1}
    assert by["old"]["latency_p50_ms"] == 200
    assert by["new"] == {"model": "new", "answers": 2, "fallbacks": 1, "fallback_rate": 0.5, "latency_p50_ms": 50,
                         "latency_p95_ms": 50, "conversations": 2, "handed_off": 0, "handoff_rate": 0.0,
                         "csat_mean": 2.0, "csat_count": 1}
    assert percentile([], 50) is None and percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 95) == 4


def test_the_model_command(clean_env: Path, db: Engine, sessions: sessionmaker[Session]) -> None:
    settings = settings_for(clean_env, canary_share=0.25)

    def kefu(action: str, **kw: Any) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = model_command.run(settings, action, out=out, err=err, **kw)
        return code, out.getvalue(), err.getvalue()

    code, out, _ = kefu("status")
    assert code == 0 and "canary:  canary-model (local GGUF" in out and "state:   active" in out
    assert "canary 25.0% of conversations" in out
    assert kefu("rollback", by="ops", reason="p95 too slow")[0] == 0
    code, out, _ = kefu("status", as_json=True)
    found = json.loads(out)
    assert (found["state"], found["by"], found["reason"], found["share"]["canary"]) == (
        "rolled_back", "ops", "p95 too slow", 0.0)
    assert found["window"]["canary"] == {"answers": 0, "errors": 0, "error_rate": 0.0}
    assert "already" in kefu("rollback", by="ops")[1]
    assert kefu("promote", by="ops")[0] == 0 and kefu("resume")[0] == 0
    assert [(d["previous"], d["by"]) for d in audited(sessions, "model_rolled_back")] == [("active", "ops")]
    assert audited(sessions, "model_resumed")[0]["by"].startswith("cli")

    seed_answers(sessions)
    code, out, _ = kefu("compare", days=7)
    assert code == 0 and out.splitlines()[2].split()[:3] == ["old", "4", "0.0%"]
    assert json.loads(kefu("compare", as_json=True)[1])["models"][1]["fallback_rate"] == 0.5
    assert kefu("compare", days=0)[0] == 2

    none = Settings(data_dir=clean_env / "var")
    printed = io.StringIO()
    assert model_command.run(none, "status", out=printed) == 0 and "canary:  none" in printed.getvalue()
    assert model_command.run(none, "promote", out=io.StringIO(), err=io.StringIO()) == 1


def test_the_kefu_model_command_line(clean_env: Path, db: Engine, sessions: sessionmaker[Session],
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from workers import cli

    monkeypatch.setenv("KEFU_DATA_DIR", str(clean_env / "var"))
    monkeypatch.setenv("KEFU_CANARY_BACKEND", str(canary_file(clean_env)))
    assert cli.main(["model", "rollback", "--by", "ops", "--reason", "CSAT fell"]) == 0
    assert "active -> rolled_back (by ops)" in capsys.readouterr().out
    assert [(d["by"], d["reason"]) for d in audited(sessions, "model_rolled_back")] == [("ops", "CSAT fell")]
    assert cli.main(["model", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "rolled_back"
    assert cli.main(["model", "compare", "--days", "3"]) == 0 and "(3 days)" in capsys.readouterr().out
    cli.check_canary(Settings(canary_backend=str(clean_env / "gone.gguf")), ["io"])  # not an LLM worker: not its job
    with pytest.raises(ConfigError, match="KEFU_CANARY_BACKEND"):
        cli.check_canary(Settings(canary_backend=str(clean_env / "gone.gguf")), ["llm"])


def test_kefu_status_shows_the_canary(clean_env: Path, kv: KV, sessions: sessionmaker[Session]) -> None:
    from workers import status_command

    url = REDIS_UNIT_URL if isinstance(kv, RedisKV) else None
    settings = settings_for(clean_env, canary_share=0.2, redis_url=url)
    found = status_command.Status()
    status_command.check_canary(settings, found)
    assert found.checks["canary"] == "canary-model active (20% of conversations)"
    assert "ok    canary      canary-model active" in status_command.render(found)
    gray(settings, kv, sessions).change(ROLLED_BACK, by="ops", reason="slow")
    status_command.check_canary(settings, found)
    assert found.checks["canary"].startswith("canary-model rolled_back by ops at ") and "slow (0% of" in found.checks[
        "canary"]
    assert "WARN  canary      canary-model rolled_back" in status_command.render(found)
    assert found.missing == ["database", "migrations", "broker", "llm_worker"]  # not required: not in the list
    nothing = status_command.Status()
    status_command.check_canary(Settings(data_dir=clean_env / "var"), nothing)
    assert "canary" not in nothing.checks


@pytest.mark.parametrize("primary_loaded", [True, False])
def test_closing_a_local_canary_leaves_the_model_loaded_gauge_to_the_primary(tiny_gguf: Path, tmp_path: Path,
                                                                             primary_loaded: bool) -> None:
    """A local engine's close() reports the process's model unloaded; the "no model loaded" alert
    (compose/monitoring/alerts.yml) must not fire because a rolled-back canary was freed."""
    from workers.llm.backends import Backend, build_engine

    settings = Settings(data_dir=tmp_path, n_ctx=256, engine="simple")
    lazy = gray_release.LazyEngine("tiny-canary", lambda: build_engine(settings, Backend(model_path=tiny_gguf)),
                                   lambda: primary_loaded)
    lazy.load()
    assert lazy.loaded and metrics.MODEL_LOADED._value.get() == 1
    lazy.close()
    assert not lazy.loaded
    assert metrics.MODEL_LOADED._value.get() == (1 if primary_loaded else 0)
