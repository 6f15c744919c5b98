"""What the phone benchmarks share: the stack they call, the questions they ask, and how they read the result.

:func:`phone_stack` starts a real ``kefu gateway`` and ``kefu worker`` process (embedded backends, a fresh
data directory) with one hotline and the PBX fake's gateway secret; :func:`trim_silence` cuts espeak-ng's
trailing silence so the clock starts when the voice stops; :func:`wait_greeting` waits out the hotline's
greeting; :func:`breakdown` splits each question's delay into stages from the audit log; :func:`machine` and
:func:`git_commit` say where and on what a figure was measured. Used by ``bench.phone_latency`` (one
caller) and ``bench.phone_concurrency`` (many at once).

Raises ``SystemExit`` from :func:`phone_stack` when the worker does not start.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import pct
from channels.telephony.events import frame_bytes
from channels.telephony.fake_pbx import PhoneLine
from channels.telephony.vad import level_dbfs
from models.infra.migrate import upgrade
from models.settings import Settings
from tests.stack import GatewayProcess, kefu_env
from tests.synthetic_gguf import write_qwen3_gguf
from workers.demo.processes import WorkerProcess

SECRET = "bench-pbx"
RATE = 8000
HOTLINE = "4008001234"
GREETING = "Hello."  # English, as the questions are: pocketsphinx, the local recognizer, knows no other
QUESTIONS = ["where is my order", "how do I return these shoes", "when do you open tomorrow",
             "can I change my address", "is the blue one in stock", "how much is shipping"]


def trim_silence(pcm: bytes) -> bytes:
    """The clip without espeak-ng's trailing silence: the clock starts when the voice stops."""
    size = frame_bytes(RATE)
    frames = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    while frames and level_dbfs(frames[-1]) < -50:
        frames.pop()
    return b"".join(frames)


def wait_greeting(line: PhoneLine, quiet_ms: int = 800, timeout: float = 60) -> bool:
    """Until the hotline's greeting started and then Kefu sent no audio for ``quiet_ms``; False if it did not
    within ``timeout`` or the line closed. (:meth:`PhoneLine.wait_quiet` alone returns at once before any audio.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not line.closed.is_set():
        if line.last_audio_at() and line.quiet_for(quiet_ms / 1000):
            return True
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class PhoneStack:
    settings: Settings
    gateway: GatewayProcess
    data_dir: Path


@contextmanager
def phone_stack(*, model: str, silence_ms: int, max_tokens: int, extra: Mapping[str, Any] | None = None,
                passed_env: Mapping[str, str] | None = None, keep_logs: Path | None = None) -> Iterator[PhoneStack]:
    """A gateway and a worker on a fresh embedded data directory, stopped (and the directory removed) on exit.

    ``model``: "tiny" (a synthetic Qwen3 GGUF: the pipeline's cost without a real model's) or "demo" (the
    configured model). ``extra``: more settings (e.g. the speech provider's). ``passed_env``: ``KEFU_*``
    variables given to both processes as they are (from the caller's own environment, e.g.
    ``KEFU_PHONE_SPEECH_PROCESSES``); where one names a setting the benchmark sets, the benchmark's wins.
    ``keep_logs``: a folder to copy the gateway's and the worker's logs into when they stop.
    """
    with tempfile.TemporaryDirectory(prefix="kefu-phone-") as tmp:
        data_dir = Path(tmp)
        values: dict[str, Any] = {
            "data_dir": str(data_dir), "secret_key": "bench", "max_tokens": max_tokens, "phone_idle_s": 600,
            "phone_silence_ms": silence_ms, "voice_gateways": [{"name": "pbx", "secret": SECRET}],
            "hotlines": [{"number": HOTLINE, "greeting": GREETING}], **(extra or {}),
        }
        if model == "tiny":
            values["model_path"] = str(write_qwen3_gguf(data_dir / "tiny-qwen3.gguf"))
        settings = Settings(**values)
        upgrade(settings)
        env = {**(passed_env or {}), **kefu_env(values)}
        worker = WorkerProcess(env, data_dir / "worker.log")
        gateway = GatewayProcess(env, data_dir / "gateway.log")
        try:
            gateway.start()
            if not worker.wait(timeout=300):
                raise SystemExit(f"worker did not start:\n{(data_dir / 'worker.log').read_text()[-2000:]}")
            yield PhoneStack(settings, gateway, data_dir)
        finally:
            gateway.stop()
            worker.stop()
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for name in ("gateway.log", "worker.log"):
                    if (data_dir / name).exists():
                        shutil.copy(data_dir / name, keep_logs / name)


def breakdown(settings: Settings, asked: Sequence[tuple[str, float]]) -> dict[str, int]:
    """p50 of each stage, from the audit log: speech end → received (endpointing + ASR), → generation
    started (queue), → generation finished (model), → dispatched (reply stored and published).

    ``asked``: (call id, wall-clock ``time.time()`` when the question ended) for each answered question; its
    inbound row is the call's first voice message received after that moment.
    """
    from sqlalchemy import select

    from models.infra.db import make_engine, make_session_factory
    from models.tables import AuditEvent, InboundRecord

    engine = make_engine(settings)
    stages: dict[str, list[float]] = {"asr": [], "queue": [], "model": [], "dispatch": []}
    try:
        with make_session_factory(engine)() as session:
            rows = session.scalars(select(InboundRecord).where(InboundRecord.kind == "voice")
                                   .order_by(InboundRecord.id)).all()
            for call_id, ended in asked:
                row = next((r for r in rows if r.external_id.startswith(f"{call_id}:")
                            and r.received_at.timestamp() >= ended), None)
                if row is None:
                    continue
                at = {e.kind: e.at.timestamp() for e in session.scalars(
                    select(AuditEvent).where(AuditEvent.inbound_id == row.id))}
                if not {"received", "generation_started", "generation_finished", "dispatched"} <= at.keys():
                    continue
                stages["asr"].append(at["received"] - ended)
                stages["queue"].append(at["generation_started"] - at["received"])
                stages["model"].append(at["generation_finished"] - at["generation_started"])
                stages["dispatch"].append(at["dispatched"] - at["generation_finished"])
    finally:
        engine.dispose()
    return {name: round(pct(values, 50)) for name, values in stages.items() if values}


def machine() -> str:
    """The machine in a few words: architecture, CPU model (``lscpu``) and CPU count."""
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except OSError:  # no lscpu (macOS, a slim image)
        pass
    return f"{platform.system()} {platform.machine()}, {model or platform.processor() or 'unknown CPU'}, " \
           f"{os.cpu_count()} CPUs"


def git_commit() -> str:
    """The checkout's commit, with "+dirty" when files differ from it (the figures may not be that commit's)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
