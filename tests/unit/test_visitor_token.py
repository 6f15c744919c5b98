"""Tests for channels.visitor_token: signed, expiring web-chat visitor tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from channels.visitor_token import VISITOR_ID, InvalidToken, mint, new_visitor_id, verify

KEY = b"k" * 32
NOW = 1_700_000_000


def _sign(key: bytes, payload: str) -> str:
    """An independent re-implementation of the documented signature, to forge well-signed oddities."""
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_roundtrip_returns_the_visitor_id() -> None:
    token = mint(KEY, "v_abc-DEF_123", NOW + 60)
    assert verify(KEY, token, NOW) == "v_abc-DEF_123"


def test_token_format_matches_the_documented_wire_form() -> None:
    token = mint(KEY, "alice", NOW + 60)
    version, visitor, expires, signature = token.split(".")
    assert (version, visitor, expires) == ("v1", "alice", str(NOW + 60))
    assert signature == _sign(KEY, f"v1.alice.{NOW + 60}")
    assert "=" not in signature


def test_expiry_boundary() -> None:
    token = mint(KEY, "alice", NOW)
    assert verify(KEY, token, NOW) == "alice"  # valid through its expiry second
    with pytest.raises(InvalidToken, match="expired"):
        verify(KEY, token, NOW + 1)


def test_tampered_signature_is_rejected() -> None:
    token = mint(KEY, "alice", NOW + 60)
    head, _, sig = token.rpartition(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(InvalidToken, match="signature"):
        verify(KEY, f"{head}.{flipped}", NOW)
    with pytest.raises(InvalidToken, match="signature"):
        verify(KEY, f"{head}.", NOW)


def test_tampered_visitor_id_is_rejected() -> None:
    _, _, expires, sig = mint(KEY, "alice", NOW + 60).split(".")
    with pytest.raises(InvalidToken, match="signature"):
        verify(KEY, f"v1.mallory.{expires}.{sig}", NOW)


def test_extended_expiry_is_rejected() -> None:
    _, visitor, _, sig = mint(KEY, "alice", NOW - 10).split(".")
    with pytest.raises(InvalidToken, match="signature"):
        verify(KEY, f"v1.{visitor}.{NOW + 10_000}.{sig}", NOW)


def test_wrong_key_is_rejected() -> None:
    token = mint(KEY, "alice", NOW + 60)
    with pytest.raises(InvalidToken, match="signature"):
        verify(b"another-key", token, NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "v1.alice.123",
        "v1.alice.123.sig.extra",
        "v2.alice.123.sig",
        "v1..123.sig",
        "v1.al ice.123.sig",
        "v1.alice.-5.sig",
        "v1.alice.12a.sig",
        "v1.alice..sig",
        "v1." + "a" * 65 + ".123.sig",
    ],
)
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidToken, match="malformed"):
        verify(KEY, token, NOW)


def test_well_signed_but_malformed_fields_are_still_rejected() -> None:
    # Only a key holder can produce these; they must still fail as InvalidToken, never as another error.
    for visitor, expires in [("alice\n", str(NOW + 60)), ("alice", "\u00b2"), ("alice", "\u0661\u0662\u0663")]:
        payload = f"v1.{visitor}.{expires}"
        with pytest.raises(InvalidToken, match="malformed"):
            verify(KEY, f"{payload}.{_sign(KEY, payload)}", NOW)


@pytest.mark.parametrize("visitor_id", ["", "a" * 65, "has space", "dot.ted", "新", "alice\n", "a/b"])
def test_mint_rejects_invalid_visitor_ids(visitor_id: str) -> None:
    with pytest.raises(ValueError, match="visitor_id"):
        mint(KEY, visitor_id, NOW + 60)


def test_mint_accepts_the_longest_id() -> None:
    assert verify(KEY, mint(KEY, "a" * 64, NOW + 1), NOW) == "a" * 64


def test_new_visitor_ids_are_valid_and_unique() -> None:
    ids = {new_visitor_id() for _ in range(50)}
    assert len(ids) == 50
    for vid in ids:
        assert vid.startswith("v_") and VISITOR_ID.match(vid)
        assert verify(KEY, mint(KEY, vid, NOW + 1), NOW) == vid
