"""Phone concurrency: many callers asking at the same moment, against one gateway (issue 14).

The stack is ``bench.phone_latency``'s (:func:`bench.phone_common.phone_stack`: a real ``kefu gateway`` and
``kefu worker`` process, embedded backends). Speech is local (pocketsphinx ASR, espeak-ng TTS) or, with
``--speech nls``, Aliyun NLS's fakes (``channels/speech/nls_fake.py``: the token service and the real-time
gateway, an appkey with the 8 kHz telephone model) in a process of their own, like a cloud service, the
gateway pointed at them through ``KEFU_SPEECH_PROVIDER=nls`` and the ``KEFU_NLS_*`` settings.

Each caller is a :class:`~channels.telephony.fake_pbx.PhoneLine` on its own WebSocket, with its own caller
number and call id: 20 ms frames in real time, silence unless it speaks. All lines dial, wait out the
greeting, then all say their question at the same moment; each measures the end of its speech (the last
voiced frame sent: espeak-ng's trailing silence is trimmed) → the first answer frame received. The next
round starts when every line has been quiet for ``--answer-quiet-ms`` (the answers are over). First one
caller alone (the baseline, same stack, after one unmeasured warm-up question), then ``--callers`` at once;
the result says how much slower (``p50_vs_one_caller``) and splits the delays into stages from the audit log
(``stages_p50_ms``: endpointing + recognition, the queue, the model, the dispatch).

A call is dropped when its WebSocket closes before the caller hangs up (Kefu's close, a protocol error, or
the client's keepalive ping timing out: websockets closes with 1011) or when no answer comes within 60 s;
each drop is listed with its reason, and every line's close is counted by code. Meanwhile a probe asks the
gateway's cheapest endpoint (``GET /healthz``) every 50 ms with httpx: a gateway whose event loop is
starved answers it late or not at all.

``KEFU_*`` variables in this environment (e.g. ``KEFU_PHONE_SPEECH_PROCESSES``, ``KEFU_N_SLOTS``, the backends'
``KEFU_DATABASE_URL`` / ``KEFU_BROKER_URL``) are passed to the
gateway and worker and reported; the benchmark's own settings (``--silence-ms``…) win over them.

Prints one JSON line. Usage:
python -m bench.phone_concurrency [--callers 20] [--rounds 3] [--model tiny|demo] [--speech local|nls]
                                  [--silence-ms 600] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench.phone_common import (
    QUESTIONS,
    RATE,
    SECRET,
    breakdown,
    git_commit,
    machine,
    phone_stack,
    trim_silence,
    wait_greeting,
)
from bench.stats import pct
from channels.telephony.events import Transfer
from channels.telephony.fake_pbx import Heard, PhoneLine

ANSWER_TIMEOUT_S = 60.0  # a caller who hears nothing for this long after asking has given up: a dropped call
KEEPALIVE_TIMEOUT = (1011, "keepalive ping timeout")  # the close frame websockets sends when its pings go unanswered
NLS_HEARS = "我的订单到哪里了？"  # what the NLS fake recognizes in any question


# ---- the NLS cloud -----------------------------------------------------------------------------------

NLS_KEY_ID, NLS_KEY_SECRET, NLS_APPKEY = "bench-key-id", "bench-key-secret", "bench-appkey"
NLS_MODEL_RATE = 8000  # the appkey's model: the 8 kHz telephone one, so a call's audio goes out as it came in


def serve_nls(conn: Connection, recognized: str) -> None:
    """In the NLS process: the token service and the real-time gateway, until the parent closes ``conn``."""
    from channels.speech.nls_fake import FakeNlsMeta, FakeNlsRealtime

    meta = FakeNlsMeta(NLS_KEY_ID, NLS_KEY_SECRET)
    with meta, FakeNlsRealtime(meta, NLS_APPKEY, recognized, model_rate=NLS_MODEL_RATE) as realtime:
        conn.send({"nls_meta_endpoint": meta.endpoint, "nls_ws_url": realtime.url})
        try:
            conn.recv()
        except EOFError:  # the parent is gone
            pass


@contextmanager
def nls_cloud(recognized: str, timeout: float = 30) -> Iterator[dict[str, Any]]:
    """Aliyun NLS's fakes in a process of their own, like a cloud service (they do not share the benchmark's
    interpreter); yields the settings that point Kefu at them."""
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=serve_nls, args=(theirs, recognized),
                                                           name="nls-cloud", daemon=True)
    process.start()
    try:
        if not ours.poll(timeout):
            raise SystemExit("the NLS fakes did not start")
        yield {"speech_provider": "nls", "nls_access_key_id": NLS_KEY_ID, "nls_access_key_secret": NLS_KEY_SECRET,
               "nls_appkey": NLS_APPKEY, "nls_meta_protocol": "http", **ours.recv()}
    finally:
        ours.close()
        process.join(10)
        if process.is_alive():
            process.kill()


@contextmanager
def speech_settings(speech: str) -> Iterator[dict[str, Any]]:
    """The settings ``--speech`` needs: none for local speech; for nls, the fakes' (started here, stopped on exit)."""
    if speech == "local":
        yield {}
        return
    with nls_cloud(NLS_HEARS) as values:
        yield values


# ---- the HTTP probe ----------------------------------------------------------------------------------

class HttpProbe:
    """``GET url`` every ``every`` seconds on its own thread (one request at a time: a stall shows as one long
    request); each request's time is kept, failures (an error, a status other than 200) counted by kind."""

    def __init__(self, url: str, every: float = 0.05, timeout: float = 60) -> None:
        self.url, self.every, self.timeout = url, every, timeout
        self.latencies: list[float] = []
        self.failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-probe", daemon=True)

    def __enter__(self) -> HttpProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as http:
            next_at = time.monotonic()
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = http.get(self.url)
                    if answer.status_code != 200:
                        self.failures[f"HTTP {answer.status_code}"] += 1
                except httpx.HTTPError as exc:
                    self.failures[type(exc).__name__] += 1
                self.latencies.append(time.monotonic() - started)
                next_at = max(next_at + self.every, time.monotonic())
                self._stop.wait(next_at - time.monotonic())

    def figures(self) -> dict[str, Any]:
        values = list(self.latencies)
        return {"http_probes": len(values), "http_failures": dict(self.failures),
                **{f"http_p{p}_ms": round(pct(values, p), 1) if values else None for p in (50, 95, 99)},
                "http_max_ms": round(max(values) * 1000, 1) if values else None}


# ---- one caller --------------------------------------------------------------------------------------

@dataclass
class Caller:
    """One caller: its line, its questions (precomputed audio), what it measured and, if dropped, why."""

    call_id: str
    number: str
    prompts: Sequence[bytes]
    line: PhoneLine | None = None
    latencies: list[float] = field(default_factory=list)
    asked: list[tuple[str, float]] = field(default_factory=list)  # (call id, wall-clock end) of answered ones
    dropped: str | None = None
    hung_up: bool = False
    last_audio: float = 0.0  # time.monotonic() of the latest audio frame from Kefu (PhoneLine.last_audio_at
    # scans every frame heard: for 20 lines, 10 times a second, that would take a CPU from the gateway)
    _audio: threading.Event = field(default_factory=threading.Event)  # set by the reader on each audio frame

    def dial(self, ws_url: str) -> None:
        try:
            self.line = PhoneLine.dial(ws_url, SECRET, caller=self.number, call_id=self.call_id, sample_rate=RATE,
                                       on_heard=self._heard)
        except Exception as exc:  # refused, timed out, reset: whatever stops a call from starting
            self.dropped = f"dial failed: {type(exc).__name__}"
            return
        self.line.open_line()

    def _heard(self, heard: Heard) -> None:
        if heard.audio:
            self.last_audio = heard.at
            self._audio.set()

    def quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last_audio >= seconds

    @property
    def active(self) -> bool:
        return self.dropped is None and self.line is not None

    def check_line(self) -> bool:
        """False (and the reason recorded) when the line closed before the caller hung up."""
        assert self.line is not None
        if self.dropped is None and self.line.closed.is_set():
            self.dropped = why_closed(self.line)
        return self.dropped is None

    def greeted(self, deadline: float) -> None:
        """Until the greeting is over; a drop if it is not by ``deadline`` (``time.monotonic()``)."""
        assert self.line is not None
        if not wait_greeting(self.line, timeout=max(0.0, deadline - time.monotonic())) and self.check_line():
            self.give_up("no greeting in time")

    def await_answer(self, clip_s: float) -> None:
        """After :meth:`PhoneLine.say`: the end of the speech, then the first answer frame (or a drop)."""
        line = self.line
        assert line is not None
        if not line.speech_ended.wait(clip_s + 10):
            if self.check_line():
                self.give_up("the question could not be said")
            return
        ended = line.ended_at
        deadline = ended + ANSWER_TIMEOUT_S
        while True:
            self._audio.clear()  # before looking: a frame that arrives meanwhile wakes the wait below
            first = line.first_audio_after(ended)
            if first is not None:
                self.latencies.append(first - ended)
                self.asked.append((self.call_id, ended + time.time() - time.monotonic()))
                return
            if not self.check_line():
                return
            if time.monotonic() >= deadline:
                self.give_up(f"no answer within {ANSWER_TIMEOUT_S:.0f} s")
                return
            self._audio.wait(min(0.5, max(0.0, deadline - time.monotonic())))

    def give_up(self, reason: str) -> None:
        self.dropped = reason
        self.hang_up()

    def hang_up(self) -> None:
        if self.line is not None and not self.hung_up:
            self.check_line()  # closed before we hang up: a drop
            self.hung_up = True
            self.line.hang_up()

    def close_label(self) -> str | None:
        """How the line ended, for the count by close code; None if it is not closed yet."""
        line = self.line
        if line is None or not line.closed.is_set() or line.close_code is None:
            return None
        label = f"{line.close_code} {line.close_reason}".strip()
        if line.sent_close is not None and line.sent_close != (line.close_code, line.close_reason):  # not an echo
            label += f" (we sent {line.sent_close[0]} {line.sent_close[1]}".strip() + ")"
        return label


def timed_out(line: PhoneLine) -> bool:
    """The line's keepalive pings went unanswered, so websockets closed it."""
    return line.sent_close == KEEPALIVE_TIMEOUT


def why_closed(line: PhoneLine) -> str:
    if line.error is not None:
        return f"protocol error: {line.error}"
    if timed_out(line):
        return "keepalive ping timeout"
    transferred = "transferred, " if any(isinstance(a, Transfer) for a in line.actions()) else ""
    return f"{transferred}closed by Kefu: {line.close_code} {line.close_reason}".strip()


# ---- one phase: N callers, R rounds ------------------------------------------------------------------

def phase(ws_url: str, http_url: str, callers: list[Caller], rounds: int, answer_quiet_ms: int) -> dict[str, Any]:
    """Dial every caller, wait out the greetings, then ``rounds`` times: all ask at once, each waits for its
    answer, all wait until the answers are over. Returns the phase's figures."""
    with HttpProbe(f"{http_url}/healthz") as probe:
        for caller in callers:
            caller.dial(ws_url)
        deadline = time.monotonic() + ANSWER_TIMEOUT_S  # for every greeting: they play at the same time
        for caller in callers:
            if caller.active:
                caller.greeted(deadline)
        for r in range(rounds):
            asking = [c for c in callers if c.active and c.check_line()]
            if not asking:
                break
            for caller in asking:  # the same moment: queuing a clip on a live line takes microseconds
                assert caller.line is not None
                caller.line.say(caller.prompts[r])
            for caller in asking:  # in turn: each line timed its frames on its own reader thread
                caller.await_answer(len(caller.prompts[r]) / (2 * RATE))
            answers_over(callers, answer_quiet_ms)
        for caller in callers:
            caller.hang_up()
        for caller in callers:
            if caller.line is not None:
                caller.line.closed.wait(10)
    latencies = [s for c in callers for s in c.latencies]
    drops = Counter(c.dropped for c in callers if c.dropped is not None)
    closes = Counter(label for c in callers if (label := c.close_label()) is not None)
    return {
        "callers": len(callers), "questions": len(callers) * rounds, "answered": len(latencies),
        "dropped": sum(drops.values()), "drops": dict(drops),
        "p50_ms": round(pct(latencies, 50)) if latencies else None,
        "p95_ms": round(pct(latencies, 95)) if latencies else None,
        "max_ms": round(max(latencies) * 1000) if latencies else None,
        # each round's p50 (when every caller was answered every round): the first round also builds the
        # recognizers' decoders, later ones reuse them
        "rounds_p50_ms": [round(pct([c.latencies[r] for c in callers], 50)) for r in range(rounds)]
        if all(len(c.latencies) == rounds for c in callers) else None,
        **probe.figures(),
        "closes": dict(closes),
        "keepalive_timeouts": sum(1 for c in callers if c.line is not None and timed_out(c.line)),
    }


def answers_over(callers: list[Caller], quiet_ms: int, timeout: float = 90) -> None:
    """Until every open line has heard no audio for ``quiet_ms`` (Kefu finished answering), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.quiet_for(quiet_ms / 1000) or c.line.closed.is_set() for c in callers
               if c.active and c.line is not None):
            return
        time.sleep(0.1)


# ---- the run -----------------------------------------------------------------------------------------

def passed_env() -> dict[str, str]:
    """The ``KEFU_*`` variables of this environment (e.g. ``KEFU_PHONE_SPEECH_PROCESSES``, ``KEFU_N_SLOTS``, or
    ``KEFU_DATABASE_URL`` and ``KEFU_BROKER_URL`` for PostgreSQL and Redis as in production instead of the
    embedded backends), given to the gateway and the worker."""
    return {name: value for name, value in os.environ.items() if name.startswith("KEFU_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", type=int, default=20, help="callers speaking at the same moment")
    parser.add_argument("--rounds", type=int, default=3, help="questions each caller asks, all at once each round")
    parser.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    parser.add_argument("--speech", choices=["local", "nls"], default="local",
                        help="local: pocketsphinx + espeak-ng in the gateway; nls: the NLS fakes in a process of "
                             "their own")
    parser.add_argument("--silence-ms", type=int, default=600)
    parser.add_argument("--max-tokens", type=int, default=16, help="answer length (the caller hears it all)")
    parser.add_argument("--answer-quiet-ms", type=int, default=2000,
                        help="an answer is over after this much quiet; then the next round starts")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the gateway's and the worker's logs here")
    args = parser.parse_args()
    if args.callers < 1 or args.rounds < 1:
        parser.error("--callers and --rounds must be at least 1")

    from channels.speech.espeak import EspeakSynthesizer

    tts = EspeakSynthesizer()  # all audio before the calls start: the bench must not compete with the gateway
    clips = [trim_silence(tts.synthesize(question, RATE)) for question in QUESTIONS]
    env = passed_env()
    with speech_settings(args.speech) as extra:
        with phone_stack(model=args.model, silence_ms=args.silence_ms, max_tokens=args.max_tokens, extra=extra,
                         passed_env=env, keep_logs=args.logs) as stack:
            ws_url, http_url = stack.gateway.ws_url, stack.gateway.http_url
            # not measured: the first question after start-up pays for the worker's first task (seconds)
            phase(ws_url, http_url, [Caller("warm-up", "+8613700000000", clips[:1])], 1, args.answer_quiet_ms)
            base = [Caller("base-1", "+8613900000000", [clips[r % len(clips)] for r in range(args.rounds)])]
            baseline = phase(ws_url, http_url, base, args.rounds, args.answer_quiet_ms)
            crowd = [Caller(f"crowd-{i:02d}", f"+86138{i:08d}",
                            [clips[(i + r) % len(clips)] for r in range(args.rounds)])
                     for i in range(1, args.callers + 1)]
            loaded = phase(ws_url, http_url, crowd, args.rounds, args.answer_quiet_ms)
            baseline["stages_p50_ms"] = breakdown(stack.settings, [a for c in base for a in c.asked])
            loaded["stages_p50_ms"] = breakdown(stack.settings, [a for c in crowd for a in c.asked])
    ratio = (loaded["p50_ms"] / baseline["p50_ms"]) if loaded["p50_ms"] and baseline["p50_ms"] else None
    result = {
        "bench": "phone_concurrency", "rounds": args.rounds, **loaded,
        "p50_vs_one_caller": round(ratio, 2) if ratio is not None else None,
        "baseline": baseline,
        "machine": machine(), "commit": git_commit(),
        "settings": {"model": args.model, "speech": args.speech, "silence_ms": args.silence_ms,
                     "max_tokens": args.max_tokens, "answer_quiet_ms": args.answer_quiet_ms, "env": env},
    }
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
