"""models.moderation: the operator's keyword file, the HTTP model check, and the dialogue rule."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from models import moderation, privacy
from models.dialogue import RULES, Action, HandOff, Message, asks_for_person, decide, faq, moderated
from models.moderation import Direction, Finding, HttpModelCheck, KeywordList, Verdict
from models.settings import Settings
from models.states import ReplySource

WORDS = """# the operator's list
赌博 refuse
傻瓜 mask
投诉升级 hand_off
Casino
"""


@pytest.fixture
def words(tmp_path: Path) -> Path:
    path = tmp_path / "moderation.txt"
    path.write_text(WORDS, encoding="utf-8")
    return path


def test_keyword_file_is_parsed_with_line_numbers_as_rule_ids() -> None:
    rules = moderation.parse_keywords(WORDS + "坏 unknown-action\n\n笨蛋\tmask\n")
    assert [(r.word, r.verdict.value, r.rule) for r in rules] == [
        ("赌博", "refuse", "keyword:2"), ("傻瓜", "mask", "keyword:3"), ("投诉升级", "hand_off", "keyword:4"),
        ("casino", "refuse", "keyword:5"), ("坏 unknown-action", "refuse", "keyword:6"), ("笨蛋", "mask", "keyword:8")]


def test_strongest_finding_wins_and_mask_words_are_starred(words: Path) -> None:
    outcome = KeywordList(words).check("你这个傻瓜，我要投诉升级")
    assert outcome.finding == Finding(Verdict.HAND_OFF, "keyword:4")
    assert outcome.text == "你这个**，我要投诉升级" and outcome.masked_rules == ("keyword:3",)
    assert KeywordList(words).check("CASINO 和傻瓜").finding == Finding(Verdict.REFUSE, "keyword:5")
    assert KeywordList(words).check("你好").finding is None


def test_keyword_file_is_read_again_when_it_changes(words: Path) -> None:
    keywords = KeywordList(words)
    assert keywords.check("赌博").finding is not None
    words.write_text("退款 refuse\n", encoding="utf-8")
    stat = words.stat()
    os.utime(words, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later edit, whatever the clock
    assert keywords.check("赌博").finding is None
    assert keywords.check("我要退款").finding == Finding(Verdict.REFUSE, "keyword:1")
    words.unlink()  # a file that disappears keeps the last good list
    assert keywords.check("我要退款").finding == Finding(Verdict.REFUSE, "keyword:1")


# ---- the dialogue rule -----------------------------------------------------------------------------

def settings_with(words: Path, **extra: Any) -> Settings:
    return Settings(moderation_file=words, **extra)


def test_moderation_is_a_dialogue_rule_before_hand_off_and_faq() -> None:
    assert RULES.index(moderated) < RULES.index(asks_for_person) < RULES.index(faq)


def test_refused_politely(words: Path) -> None:
    settings = settings_with(words)
    decision = decide(settings, Message("哪里可以赌博？"), HandOff.PERSON)
    assert decision.action is Action.ANSWER and decision.text == settings.moderation_refuse_reply
    assert decision.why == "moderated:refuse:keyword:2" and decision.source is ReplySource.RULE


def test_handed_off_where_a_person_can_take_over_else_refused(words: Path) -> None:
    settings = settings_with(words)
    to_person = decide(settings, Message("我要投诉升级"), HandOff.PERSON)
    assert to_person.action is Action.HAND_OFF and to_person.why == "moderated:hand_off:keyword:4"
    nobody = decide(settings, Message("我要投诉升级"), HandOff.NOBODY)
    assert nobody.action is Action.ANSWER and nobody.why == "moderated:refuse:keyword:4"


def test_masked_words_still_go_to_the_model_stored_starred(words: Path) -> None:
    settings = settings_with(words, pii_mask_stored="none")
    assert decide(settings, Message("你是傻瓜吗"), HandOff.PERSON).action is Action.GENERATE
    assert privacy.stored_text(settings, "你是傻瓜吗") == ("你是**吗", ("keyword:3",))


def test_no_moderation_configured_means_no_rule(clean_env: object) -> None:
    assert moderation.moderator(Settings()) is None
    assert decide(Settings(), Message("赌博"), HandOff.PERSON).action is Action.GENERATE


# ---- the HTTP model check --------------------------------------------------------------------------

class _Endpoint(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, Any]] = {}
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(body)
        answer = json.dumps(self.answers.get(body["text"], {"action": "allow"})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    _Endpoint.answers = {"违规内容": {"action": "refuse", "rule": "politics"},
                         "要找经理": {"action": "hand_off", "rule": "escalate"},
                         "星号": {"action": "mask"}, "乱答": {"action": "maybe"}}
    _Endpoint.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/moderate"
    finally:
        server.shutdown()
        server.server_close()


def test_http_check(endpoint: str) -> None:
    check = HttpModelCheck(endpoint, timeout_s=5, fail_closed=False)
    assert check.check("违规内容", Direction.OUTBOUND) == Finding(Verdict.REFUSE, "model:politics")
    assert check.check("要找经理", Direction.INBOUND) == Finding(Verdict.HAND_OFF, "model:escalate")
    assert check.check("你好", Direction.INBOUND) is None
    assert _Endpoint.seen[0] == {"text": "违规内容", "direction": "out"}
    closed = HttpModelCheck(endpoint, timeout_s=5, fail_closed=True)
    for nonsense in ("星号", "乱答"):  # "mask" is not an endpoint's answer: it has no words to star
        assert check.check(nonsense, Direction.OUTBOUND) is None
        assert closed.check(nonsense, Direction.OUTBOUND) == Finding(Verdict.REFUSE, "model_unavailable")


def test_http_check_in_the_dialogue(endpoint: str) -> None:
    decision = decide(Settings(moderation_url=endpoint), Message("违规内容"), HandOff.PERSON)
    assert decision.action is Action.ANSWER and decision.why == "moderated:refuse:model:politics"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("fail_closed", [False, True])
def test_endpoint_silent_or_down_fails_open_or_closed(silent_port: int, fail_closed: bool) -> None:
    expected = Finding(Verdict.REFUSE, "model_unavailable") if fail_closed else None
    silent = HttpModelCheck(f"http://127.0.0.1:{silent_port}/", timeout_s=0.2, fail_closed=fail_closed)
    assert silent.check("你好", Direction.INBOUND) == expected
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = HttpModelCheck(f"http://127.0.0.1:{closed_port}/", timeout_s=0.2, fail_closed=fail_closed)
    assert down.check("你好", Direction.INBOUND) == expected


def test_a_moderation_url_without_a_scheme_is_refused_naming_the_variable(clean_env: object) -> None:
    from models.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"KEFU_MODERATION_URL: must be an http:// or https:// URL"):
        load_settings(moderation_url="moderation:8080")


def test_a_moderation_file_that_is_not_there_stops_the_start_naming_the_variable(clean_env: Path) -> None:
    from models.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"KEFU_MODERATION_FILE=.*moderation.txt is not a file"):
        load_settings(moderation_file=clean_env / "moderation.txt")
    (clean_env / "moderation.txt").write_text("", encoding="utf-8")
    assert load_settings(moderation_file=clean_env / "moderation.txt").moderation_file is not None
