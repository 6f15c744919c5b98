"""A loopback Aliyun NLS meta server for tests: the POP RPC ``CreateToken`` action, signature checked.

Real protocol: requests are signed with HMAC-SHA1 over the canonicalized query (``POST&%2F&…``,
key = AccessKeySecret + "&"); a wrong key id or signature gets the real error shapes (HTTP 404
``InvalidAccessKeyId.NotFound``, HTTP 400 ``SignatureDoesNotMatch``). Tokens live ``token_ttl``
seconds; :meth:`FakeNlsMeta.fail_next` injects errors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


def pop_signature(method: str, params: dict[str, str], secret: str) -> str:
    canonical = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params.items()))
    to_sign = f"{method}&{_encode('/')}&{_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class FakeNlsMeta:
    def __init__(self, access_key_id: str, access_key_secret: str, token_ttl: float = 24 * 3600) -> None:
        self.key_id, self.secret, self.token_ttl = access_key_id, access_key_secret, token_ttl
        self.issued: list[str] = []
        self._failures: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
                params.update(dict(parse_qsl(body, keep_blank_values=True)))
                status, answer = fake._answer(params)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeNlsMeta:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, status: int, code: str) -> None:
        with self._lock:
            self._failures.append((status, code))

    def _answer(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request_id = f"req-{len(self.issued) + 1}"
        with self._lock:
            if self._failures:
                status, code = self._failures.pop(0)
                return status, {"Code": code, "Message": "injected", "RequestId": request_id}
        if params.get("Action") != "CreateToken" or params.get("Version") != "2019-02-28":
            return 400, {"Code": "InvalidAction.NotFound", "Message": "unknown action", "RequestId": request_id}
        if params.get("AccessKeyId") != self.key_id:
            return 404, {"Code": "InvalidAccessKeyId.NotFound", "Message": "Specified access key is not found.",
                         "RequestId": request_id}
        signature = params.pop("Signature", "")
        if not hmac.compare_digest(signature, pop_signature("POST", params, self.secret)):
            canonical = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params.items()))
            to_sign = f"POST&{_encode('/')}&{_encode(canonical)}"
            message = f"Specified signature does not match our calculation. server string to sign is:{to_sign}"
            return 400, {"Code": "SignatureDoesNotMatch", "RequestId": request_id, "Message": message}
        token = f"nls-token-{len(self.issued) + 1:04d}"
        with self._lock:
            self.issued.append(token)
        return 200, {"Token": {"Id": token, "ExpireTime": int(time.time() + self.token_ttl), "UserId": "1"},
                     "RequestId": request_id, "NlsRequestId": request_id}
