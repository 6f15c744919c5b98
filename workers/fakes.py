"""``kefu fake …``: run a platform's fake in the foreground, so an operator can try a channel locally.

- ``kefu fake wechat``: the WeChat / WeCom / kf API server (``channels/wechat_fake.py``) with the
  sample accounts; prints the ``KEFU_*`` settings that point Kefu at it and every message Kefu sends
  through it. With ``--push URL`` (an official account's callback, e.g.
  ``http://127.0.0.1:8000/v1/wechat/shop``) each line typed on stdin is pushed to Kefu as a
  customer's message, signed and encrypted as the platform does (``channels/wechat_fake_platform.py``).
- ``kefu fake nls``: Aliyun NLS's token service, REST and real-time gateways (``channels/speech/nls_fake.py``);
  prints the settings and every request.
- ``kefu fake pbx``: dials Kefu's voice gateway like a PBX (``channels/telephony/fake_pbx.py``),
  waits out the greeting, says something, prints what Kefu asked the PBX to do and hangs up.
- ``kefu fake webhook``: an integrator's receiver of replies (``channels/webhook_fake.py``) that
  verifies each one's signature; prints the ``KEFU_WEBHOOKS`` entry that points Kefu at it and every
  reply it accepted. With ``--push URL`` (Kefu's gateway, e.g. ``http://127.0.0.1:8000``) each line
  typed on stdin is posted to ``URL/v1/webhook/<name>`` as a signed customer's message.

The servers run until Ctrl-C (or SIGTERM) and exit 0. The PBX call exits 0 when Kefu answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from channels.speech.audio import read_wav, resample
from channels.speech.nls_fake import FakeNlsGateway, FakeNlsMeta, FakeNlsRealtime
from channels.telephony.events import AudioOut
from channels.telephony.fake_pbx import Heard, PhoneLine
from channels.webhook_fake import NAME, SECRET, FakeWebhookReceiver, post_message, sample_endpoint
from channels.wechat_fake import FakeWeChat, sample_account, sample_kf_account, sample_wecom_app
from channels.wechat_fake_platform import callback, read_passive_reply, text_xml

CUSTOMER = "o-fake-customer"  # the openid of the customer --push plays


def say(line: str) -> None:
    print(line, flush=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _until_interrupted() -> Iterator[None]:
    """Ctrl-C or SIGTERM ends the block quietly (a graceful stop instead of a traceback or a kill)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _forever() -> None:
    while True:
        time.sleep(3600)


def _typed(lines: Iterator[str]) -> Iterator[str]:
    """The lines an operator typed, stripped, blank ones skipped."""
    return (text for text in (line.strip() for line in lines) if text)


def _settings_lines(values: dict[str, Any]) -> list[str]:
    """``export KEFU_…=…`` lines, quoted for a POSIX shell (lists as JSON, as Kefu reads them)."""
    return [f"  export {name}={shlex.quote(json.dumps(value) if isinstance(value, list) else str(value))}"
            for name, value in values.items()]


# ---- WeChat -----------------------------------------------------------------------------------------

def _print_sent(message: dict[str, Any]) -> None:
    to = message.get("touser") or message.get("open_kfid")
    say(f"heard {message['endpoint']} to {to}: {message.get('content') or '(' + str(message.get('msgtype')) + ')'}")


def _push(url: str, lines: Iterator[str]) -> None:
    """Each line, as the sample official account's customer would send it (safe mode)."""
    with httpx.Client(timeout=10) as http:
        for text in _typed(lines):
            cb = callback(text_xml(CUSTOMER, text, time.time_ns() // 1000), mode="aes")
            try:
                answer = http.post(url, params=cb.params, content=cb.body)
            except httpx.HTTPError as exc:
                say(f"push failed: {type(exc).__name__}: {exc}")
                continue
            if answer.status_code != 200:
                say(f"Kefu answered HTTP {answer.status_code}: {answer.text[:200]}")
            elif answer.text in ("", "success"):
                say("Kefu accepted it; its answer comes through the API")
            else:
                try:
                    say(f"Kefu answered at once: {read_passive_reply(answer.text, cb)}")
                except KeyError:  # no Content: a transfer_customer_service reply
                    say("Kefu handed the customer to the account's own staff")


def run_wechat(args: argparse.Namespace) -> int:
    fake = FakeWeChat(host=args.host, port=args.port, on_sent=_print_sent).add_sample_accounts()
    with _until_interrupted(), fake:
        say(f"fake WeChat / WeCom API listening on {fake.base_url} (Ctrl-C to stop); point Kefu at it with")
        for line in _settings_lines({
            "KEFU_WECHAT_API_BASE": fake.base_url, "KEFU_WECOM_API_BASE": fake.base_url,
            "KEFU_WECHAT_ACCOUNTS": [sample_account()], "KEFU_WECOM_APPS": [sample_wecom_app()],
            "KEFU_WECOM_KF_ACCOUNTS": [sample_kf_account()],
        }):
            say(line)
        if args.push:
            say(f"type a customer's message to push it to {args.push}")
            _push(args.push, iter(sys.stdin.readline, ""))
        _forever()
    return 0


# ---- NLS --------------------------------------------------------------------------------------------

def run_nls(args: argparse.Namespace) -> int:
    logging.getLogger("websockets.server").setLevel(logging.WARNING)  # its start/stop chatter, amid the settings
    def port(offset: int) -> int:
        return args.port + offset if args.port else 0

    meta = FakeNlsMeta(args.access_key_id, args.access_key_secret, host=args.host, port=port(0), on_heard=say)
    rest = FakeNlsGateway(meta, args.appkey, args.recognized, host=args.host, port=port(1), on_heard=say,
                          model_rate=args.model_rate)
    realtime = FakeNlsRealtime(meta, args.appkey, args.recognized, host=args.host, port=port(2), on_heard=say,
                               model_rate=args.model_rate)
    with _until_interrupted(), meta, rest, realtime:
        say(f"fake Aliyun NLS: token service on {meta.endpoint}, REST gateway on {rest.url}, real-time gateway on "
            f"{realtime.url} (Ctrl-C to stop); it hears {args.recognized!r} and speaks a tone. Point Kefu at it with")
        for line in _settings_lines({
            "KEFU_SPEECH_PROVIDER": "nls", "KEFU_NLS_ACCESS_KEY_ID": args.access_key_id,
            "KEFU_NLS_ACCESS_KEY_SECRET": args.access_key_secret, "KEFU_NLS_APPKEY": args.appkey,
            "KEFU_NLS_META_ENDPOINT": meta.endpoint, "KEFU_NLS_META_PROTOCOL": "http",
            "KEFU_NLS_WS_URL": realtime.url, "KEFU_NLS_GATEWAY": rest.url,  # the REST gateway: KEFU_NLS_MODE=rest
        }):
            say(line)
        _forever()
    return 0


# ---- PBX --------------------------------------------------------------------------------------------

def _print_action(heard: Heard) -> None:
    if not isinstance(heard.action, AudioOut):
        say(f"heard {heard.action}")


def _speech(args: argparse.Namespace) -> bytes:
    if args.say_file:
        pcm, rate = read_wav(Path(args.say_file).read_bytes())
        return resample(pcm, rate, args.sample_rate)
    from channels.speech.espeak import EspeakSynthesizer

    return EspeakSynthesizer().synthesize(args.text, args.sample_rate)


def run_pbx(args: argparse.Namespace) -> int:
    speech = _speech(args)
    base = args.url.removesuffix("/").removesuffix("/v1/voice/ws")
    say(f"dialing {base}/v1/voice/ws as {args.caller} → {args.callee}")
    line = PhoneLine.dial(base, args.secret, caller=args.caller, callee=args.callee, sample_rate=args.sample_rate,
                          call_id=args.call_id or f"fake-pbx-{uuid.uuid4().hex[:12]}", on_heard=_print_action)
    line.open_line()
    try:
        asked_at = line.ask(speech, time.monotonic() + args.timeout)
    except KeyboardInterrupt:
        asked_at = None
    finally:
        line.hang_up()
    greeting_ms = line.audio_ms() - (line.audio_ms(since=asked_at) if asked_at is not None else 0)
    answer_ms = line.audio_ms(since=asked_at) if asked_at is not None else 0
    say(f"heard {greeting_ms} ms of greeting, said {len(speech) * 1000 // (2 * args.sample_rate)} ms, "
        f"heard {answer_ms} ms of answer; hung up")
    if line.error is not None:
        say(f"Kefu broke the protocol: {line.error}")
    if args.record:
        Path(args.record).write_bytes(line.recording())
        say(f"both sides written to {args.record}")
    return 0 if answer_ms > 0 else 1


# ---- webhook ----------------------------------------------------------------------------------------

def _print_reply(reply: dict[str, Any]) -> None:
    say(f"reply {reply.get('reply_id')} to {reply.get('in_reply_to')} ({reply.get('source')}): {reply.get('text')}")


def _push_messages(url: str, name: str, secret: str, user_id: str, lines: Iterator[str]) -> None:
    """Each line, as the customer ``user_id`` of the endpoint ``name`` would send it (a new message_id each)."""
    for text in _typed(lines):
        try:
            answer = post_message(url, name, secret, f"fake-{uuid.uuid4().hex}", user_id, text)
        except httpx.HTTPError as exc:
            say(f"push failed: {type(exc).__name__}: {exc}")
            continue
        say(f"Kefu answered HTTP {answer.status_code}: {answer.text[:200]}")


def run_webhook(args: argparse.Namespace) -> int:
    name, secret = args.name or NAME, args.secret or SECRET
    receiver = FakeWebhookReceiver(secret, host=args.host, port=args.port, on_reply=_print_reply)
    with _until_interrupted(), receiver:
        say(f"fake webhook receiver on {receiver.url} (Ctrl-C to stop); point Kefu at it with")
        for line in _settings_lines({"KEFU_WEBHOOKS": [sample_endpoint(receiver.url, name, secret)]}):
            say(line)
        if args.push:
            say(f"type a customer's message to push it to {args.push.rstrip('/')}/v1/webhook/{name}")
            _push_messages(args.push, name, secret, args.user_id, iter(sys.stdin.readline, ""))
        _forever()
    return 0
