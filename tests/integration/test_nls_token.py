"""Aliyun NLS tokens through aliyun-python-sdk-core against a loopback nls-meta server (real signatures)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.speech.base import SpeechError
from channels.speech.nls_fake import FakeNlsMeta
from channels.speech.nls_token import NlsTokens
from models.infra.kv import make_kv
from models.infra.locks import make_locks
from models.settings import Settings

KEY_ID, SECRET = "LTAI-test-key", "test-secret-value"


@pytest.fixture
def meta() -> Iterator[FakeNlsMeta]:
    with FakeNlsMeta(KEY_ID, SECRET) as fake:
        yield fake


def tokens(tmp_path: Path, meta: FakeNlsMeta, secret: str = SECRET) -> NlsTokens:
    settings = Settings(data_dir=tmp_path)
    return NlsTokens(make_kv(settings), make_locks(settings), access_key_id=KEY_ID, access_key_secret=secret,
                     region="cn-shanghai", endpoint=meta.endpoint, protocol="http")


def test_one_token_is_shared_by_concurrent_processes(tmp_path: Path, meta: FakeNlsMeta) -> None:
    clients = [tokens(tmp_path, meta) for _ in range(8)]  # separate clients, one store: like 8 processes
    got: list[str] = []
    barrier = threading.Barrier(8)

    def work(client: NlsTokens) -> None:
        barrier.wait()
        got.append(client.get())

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["nls-token-0001"] * 8 and meta.issued == ["nls-token-0001"]


def test_a_rejected_token_is_refreshed_once(tmp_path: Path, meta: FakeNlsMeta) -> None:
    client = tokens(tmp_path, meta)
    first = client.get()
    assert client.refresh(stale=first) == "nls-token-0002"
    assert client.refresh(stale=first) == "nls-token-0002"  # a second caller with the same stale token
    assert meta.issued == ["nls-token-0001", "nls-token-0002"]


def test_a_token_is_refreshed_before_it_expires(tmp_path: Path) -> None:
    import time

    with FakeNlsMeta(KEY_ID, SECRET, token_ttl=601) as short:  # 1 s left before the 600 s refresh margin
        settings = Settings(data_dir=tmp_path)
        client = NlsTokens(make_kv(settings), make_locks(settings), access_key_id=KEY_ID, access_key_secret=SECRET,
                           region="cn-shanghai", endpoint=short.endpoint, protocol="http", min_ttl_s=0.2)
        assert client.get() == "nls-token-0001"
        assert client.get() == "nls-token-0001"  # cached
        time.sleep(1.5)  # now inside the margin: a call in progress must not be handed a dying token
        assert client.get() == "nls-token-0002"
        assert short.issued == ["nls-token-0001", "nls-token-0002"]


def test_wrong_credentials_give_a_clear_error(tmp_path: Path, meta: FakeNlsMeta) -> None:
    with pytest.raises(SpeechError, match="SignatureDoesNotMatch"):
        tokens(tmp_path, meta, secret="wrong").get()
    meta.fail_next(503, "ServiceUnavailable")
    with pytest.raises(SpeechError, match="ServiceUnavailable"):
        tokens(tmp_path, meta).get()
