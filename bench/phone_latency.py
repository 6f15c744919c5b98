"""Phone latency: from the end of the caller's speech to the first audio frame of Kefu's answer.

A real ``kefu gateway`` and ``kefu worker`` process (embedded backends), local speech providers
(pocketsphinx ASR, espeak-ng TTS), and the PBX fake (``channels/telephony/fake_pbx.py``) kept
open like a PBX: 20 ms frames in real time, silence unless the caller speaks. The caller
asks ``--utterances`` English questions (espeak-ng audio), one at a time, each after Kefu finished
talking. Measured per utterance: last voiced frame sent (espeak-ng's trailing silence is trimmed)
→ first answer frame received. It includes
the endpointer's ``--silence-ms`` (the end of speech is only known after that much silence), speech
recognition, the queue, the model's first sentence and its synthesis.

Usage: python -m bench.phone_latency [--utterances 50] [--model tiny|demo] [--silence-ms 600] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import pct
from channels.speech.espeak import EspeakSynthesizer
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
QUESTIONS = ["where is my order", "how do I return these shoes", "when do you open tomorrow",
             "can I change my address", "is the blue one in stock", "how much is shipping"]


def trim_silence(pcm: bytes) -> bytes:
    """The clip without espeak-ng's trailing silence: the clock starts when the voice stops."""
    size = frame_bytes(RATE)
    frames = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    while frames and level_dbfs(frames[-1]) < -50:
        frames.pop()
    return b"".join(frames)


def breakdown(settings: Settings, ends: list[float]) -> dict[str, int]:
    """p50 of each stage, from the audit log: speech end → received (endpointing + ASR), → generation
    started (queue), → generation finished (model), → dispatched (reply stored and published)."""
    from sqlalchemy import select

    from models.infra.db import make_engine, make_session_factory
    from models.tables import AuditEvent, InboundRecord

    engine = make_engine(settings)
    stages: dict[str, list[float]] = {"asr": [], "queue": [], "model": [], "dispatch": []}
    try:
        with make_session_factory(engine)() as session:
            rows = session.scalars(select(InboundRecord).where(InboundRecord.kind == "voice")
                                   .order_by(InboundRecord.id)).all()
            for ended in ends:  # the first utterance recognized after this question's end
                row = next((r for r in rows if r.received_at.timestamp() >= ended), None)
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
    return {name: round(pct(values, 50)) for name, values in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=50)
    parser.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    parser.add_argument("--silence-ms", type=int, default=600)
    parser.add_argument("--max-tokens", type=int, default=16, help="answer length (the caller hears it all)")
    args = parser.parse_args()
    tts = EspeakSynthesizer()
    with tempfile.TemporaryDirectory(prefix="kefu-phone-") as tmp:
        data_dir = Path(tmp)
        values: dict[str, Any] = {
            "data_dir": str(data_dir), "secret_key": "bench", "max_tokens": args.max_tokens, "phone_idle_s": 600,
            "phone_silence_ms": args.silence_ms, "voice_gateways": [{"name": "pbx", "secret": SECRET}],
            "hotlines": [{"number": "4008001234", "greeting": "您好。"}],
        }
        if args.model == "tiny":
            values["model_path"] = str(write_qwen3_gguf(data_dir / "tiny-qwen3.gguf"))
        settings = Settings(**values)
        upgrade(settings)
        env = kefu_env(values)
        worker = WorkerProcess(env, data_dir / "worker.log")
        gateway = GatewayProcess(env, data_dir / "gateway.log").start()
        if not worker.wait(timeout=300):
            raise SystemExit(f"worker did not start:\n{(data_dir / 'worker.log').read_text()[-2000:]}")
        latencies: list[float] = []
        ends: list[float] = []  # wall-clock end of each answered question, to place the audit events
        missed = 0
        offset = time.time() - time.monotonic()
        try:
            call = PhoneLine.dial(gateway.ws_url, SECRET, call_id="bench-1", sample_rate=RATE)
            call.open_line()
            prompts = [trim_silence(tts.synthesize(QUESTIONS[i % len(QUESTIONS)], RATE))
                       for i in range(args.utterances)]
            call.wait_quiet(800)
            for pcm in prompts:
                call.say(pcm)
                call.speech_ended.wait(60)
                ended = call.ended_at
                deadline = time.monotonic() + 60
                first = None
                while first is None and time.monotonic() < deadline:
                    first = call.first_audio_after(ended)
                    time.sleep(0.005)
                if first is None:
                    missed += 1
                    continue
                latencies.append(first - ended)
                ends.append(ended + offset)
                call.wait_quiet(800)
            call.hang_up()
        finally:
            gateway.stop()
            worker.stop()
        stages = breakdown(settings, ends)
        result = {
            "model": args.model, "utterances": args.utterances, "answered": len(latencies), "missed": missed,
            "silence_ms": args.silence_ms, "p50_ms": round(pct(latencies, 50)), "p95_ms": round(pct(latencies, 95)),
            "min_ms": round(min(latencies) * 1000) if latencies else None,
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
            "stages_p50_ms": stages,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
