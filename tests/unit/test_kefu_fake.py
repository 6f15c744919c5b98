"""``kefu fake wechat`` / ``nls`` / ``webhook`` as an operator runs them: a child process, printed settings, real
sockets."""

from __future__ import annotations

import json
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from channels import webhook
from channels.fake_http import Answer, FakeHTTPServer, Request
from channels.speech.nls_rest import NlsRestRecognizer
from channels.speech.nls_token import NlsTokens
from channels.wechat_fake import APPID, SECRET
from models.infra.kv import make_kv
from models.infra.locks import make_locks
from models.settings import Settings
from tests.conftest import as_env
from workers.demo.processes import free_port, terminate


class Fake:
    """``kefu fake …`` in a child process; :meth:`line` reads what it prints, with a timeout."""

    def __init__(self, *argv: str, typing: bool = False) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "fake", *argv], env=as_env({}),
                                     stdin=subprocess.PIPE if typing else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, timeout: float = 20) -> str:
        return self.lines.get(timeout=timeout)

    def exports(self, count: int) -> dict[str, str]:
        """The next ``count`` lines, ``export KEFU_…=…`` each, parsed as a shell would."""
        values = {}
        for _ in range(count):
            words = shlex.split(self.line())
            assert words[0] == "export", words
            name, value = words[1].split("=", 1)
            values[name] = value
        return values

    def say(self, line: str) -> None:
        """Types ``line`` on the fake's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def interrupt(self, signum: int = signal.SIGINT) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=10)


@pytest.fixture
def fakes() -> Iterator[list[Fake]]:
    started: list[Fake] = []
    yield started
    for fake in started:
        terminate(fake.proc, 5)
        for pipe in (fake.proc.stdin, fake.proc.stdout):
            if pipe is not None:
                pipe.close()


def test_kefu_fake_wechat_serves_the_sample_accounts_and_prints_what_kefu_sends(fakes: list[Fake]) -> None:
    port = free_port()
    fake = Fake("wechat", "--port", str(port))
    fakes.append(fake)
    assert f"listening on http://127.0.0.1:{port}" in fake.line()
    settings = fake.exports(5)
    assert settings["KEFU_WECHAT_API_BASE"] == f"http://127.0.0.1:{port}"
    assert '"appid": "wxkefutest0001"' in settings["KEFU_WECHAT_ACCOUNTS"]
    with httpx.Client(base_url=f"{settings['KEFU_WECHAT_API_BASE']}/cgi-bin/", timeout=5) as http:
        token = http.get("token", params={"grant_type": "client_credential", "appid": APPID, "secret": SECRET}).json()
        assert token["expires_in"] == 7200
        body = {"touser": "o-customer", "msgtype": "text", "text": {"content": "您好，订单已发货"}}
        sent = http.post("message/custom/send", params={"access_token": token["access_token"]}, json=body).json()
        assert sent["errcode"] == 0
    assert fake.line() == "heard custom_send to o-customer: 您好，订单已发货"
    assert fake.interrupt() == 0


def test_kefu_fake_nls_gives_tokens_and_hears_its_text(fakes: list[Fake], tmp_path: Path) -> None:
    port = free_port()  # and the two after it, most likely free as well
    fake = Fake("nls", "--port", str(port), "--recognized", "几点营业")
    fakes.append(fake)
    assert f"token service on 127.0.0.1:{port}" in fake.line()
    nls = fake.exports(8)
    assert nls["KEFU_SPEECH_PROVIDER"] == "nls"
    settings = Settings(data_dir=tmp_path)
    tokens = NlsTokens(make_kv(settings), make_locks(settings), access_key_id=nls["KEFU_NLS_ACCESS_KEY_ID"],
                       access_key_secret=nls["KEFU_NLS_ACCESS_KEY_SECRET"], region="cn-shanghai",
                       endpoint=nls["KEFU_NLS_META_ENDPOINT"], protocol=nls["KEFU_NLS_META_PROTOCOL"])
    asr = NlsRestRecognizer(tokens, gateway=nls["KEFU_NLS_GATEWAY"], appkey=nls["KEFU_NLS_APPKEY"])
    assert asr.transcribe(bytes(16000), 8000) == "几点营业"
    assert fake.line() == "nls-meta CreateToken: nls-token-0001"
    assert fake.line().startswith("nls-gateway /stream/v1/asr: 16000 bytes in, HTTP 200")
    assert fake.interrupt() == 0


REPLY = {"reply_id": 7, "in_reply_to": "m-1", "user_id": "u-42", "text": "您好，订单已发货", "source": "model"}


def test_kefu_fake_webhook_prints_the_replies_it_verified_and_refuses_forged_ones(fakes: list[Fake]) -> None:
    port = free_port()
    fake = Fake("webhook", "--port", str(port))
    fakes.append(fake)
    assert f"fake webhook receiver on http://127.0.0.1:{port}/kefu/replies" in fake.line()
    [entry] = json.loads(fake.exports(1)["KEFU_WEBHOOKS"])
    assert entry["name"] == "demo" and entry["callback_url"] == f"http://127.0.0.1:{port}/kefu/replies"
    endpoint = webhook.WebhookEndpoint(**entry)
    webhook.post_reply(endpoint, REPLY, 7)  # signed by Kefu's own channel code, as a worker sends it
    assert fake.line() == "reply 7 to m-1 (model): 您好，订单已发货"
    body = json.dumps({**REPLY, "text": "forged"}).encode()
    now = int(time.time())
    forged = {"Content-Type": "application/json", "Idempotency-Key": "kefu-reply-8", "X-Kefu-Timestamp": str(now),
              "X-Kefu-Signature": webhook.signature("not-the-endpoint-secret", now, body)}
    with httpx.Client(timeout=5) as http:
        refused = http.post(entry["callback_url"], content=body, headers=forged)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_signature"
    assert fake.interrupt(signal.SIGTERM) == 0
    assert fake.lines.empty()  # the forged reply was not printed


def test_kefu_fake_webhook_pushes_each_typed_line_as_a_signed_message(fakes: list[Fake]) -> None:
    posted: queue.SimpleQueue[Request] = queue.SimpleQueue()

    def gateway(request: Request) -> Answer:  # stands in for Kefu: keeps the request, accepts it
        posted.put(request)
        return Answer.json(202, {"message_id": 1, "duplicate": False})

    kefu = FakeHTTPServer(gateway, name="kefu-gateway")
    kefu.start()
    try:
        fake = Fake("webhook", "--push", kefu.base_url, "--name", "crm", "--secret", "crm-secret-0123456789",
                    "--user-id", "u-7", typing=True)
        fakes.append(fake)
        assert "fake webhook receiver on http://127.0.0.1:" in fake.line()
        [entry] = json.loads(fake.exports(1)["KEFU_WEBHOOKS"])
        assert (entry["name"], entry["secret"]) == ("crm", "crm-secret-0123456789")
        assert fake.line() == f"type a customer's message to push it to {kefu.base_url}/v1/webhook/crm"
        fake.say("   ")  # a blank line is not sent
        fake.say("请问几点营业？")
        assert fake.line() == 'Kefu answered HTTP 202: {"message_id": 1, "duplicate": false}'
        request = posted.get(timeout=5)
        assert posted.empty() and (request.method, request.path) == ("POST", "/v1/webhook/crm")
        timestamp = webhook.require_fresh(request.headers.get("x-kefu-timestamp"), time.time(), 300)
        webhook.require_signature("crm-secret-0123456789", timestamp, request.body, request.headers.get("x-kefu-signature"))
        message = json.loads(request.body)
        assert (message["user_id"], message["text"]) == ("u-7", "请问几点营业？")
        assert message["message_id"].startswith("fake-")
        assert fake.interrupt() == 0
    finally:
        kefu.stop()
