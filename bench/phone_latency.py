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
import time

from bench.phone_common import (
    QUESTIONS,
    RATE,
    SECRET,
    breakdown,
    machine,
    phone_stack,
    trim_silence,
    wait_greeting,
)
from bench.stats import pct
from channels.speech.espeak import EspeakSynthesizer
from channels.telephony.fake_pbx import PhoneLine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=50)
    parser.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    parser.add_argument("--silence-ms", type=int, default=600)
    parser.add_argument("--max-tokens", type=int, default=16, help="answer length (the caller hears it all)")
    args = parser.parse_args()
    tts = EspeakSynthesizer()
    prompts = [trim_silence(tts.synthesize(QUESTIONS[i % len(QUESTIONS)], RATE)) for i in range(args.utterances)]
    latencies: list[float] = []
    asked: list[tuple[str, float]] = []  # wall-clock end of each answered question, to place the audit events
    missed = 0
    offset = time.time() - time.monotonic()
    with phone_stack(model=args.model, silence_ms=args.silence_ms, max_tokens=args.max_tokens) as stack:
        call = PhoneLine.dial(stack.gateway.ws_url, SECRET, call_id="bench-1", sample_rate=RATE)
        call.open_line()
        if not wait_greeting(call):
            raise SystemExit("no greeting within 60 s")
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
            asked.append(("bench-1", ended + offset))
            call.wait_quiet(800)
        call.hang_up()
        stages = breakdown(stack.settings, asked)
    result = {
        "model": args.model, "utterances": args.utterances, "answered": len(latencies), "missed": missed,
        "silence_ms": args.silence_ms, "p50_ms": round(pct(latencies, 50)), "p95_ms": round(pct(latencies, 95)),
        "min_ms": round(min(latencies) * 1000) if latencies else None,
        "machine": machine(),
        "stages_p50_ms": stages,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
