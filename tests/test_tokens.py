"""Access tokens: what verifies and what never does (a table of forgeries)."""

from __future__ import annotations

import time

import jwt
import pytest

from auth.tokens import AccessTokens, from_settings
from backends.errors import Unauthorized

KEY = b"k" * 32
TOKENS = AccessTokens({"k1": KEY, "old": b"o" * 32}, "k1", 900)
NOW = time.time()


def test_a_token_names_its_user_and_role() -> None:
    who = TOKENS.verify(TOKENS.issue("u1", "admin"))
    assert (who.user_id, who.role, who.admin) == ("u1", "admin", True)
    assert len(who.token_id) == 32


def test_keys_rotate_by_kid() -> None:
    old = AccessTokens({"old": b"o" * 32}, "old", 900).issue("u1", "user")
    assert TOKENS.verify(old).user_id == "u1"  # still accepted while its key is configured
    assert jwt.get_unverified_header(TOKENS.issue("u1", "user"))["kid"] == "k1"


def _claims(**extra: object) -> dict[str, object]:
    base = {"sub": "u1", "roles": ["admin"], "iat": int(NOW), "exp": int(NOW) + 86_400}
    return {**base, "jti": "j", "iss": "clipsync", **extra}


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (jwt.encode(_claims(), None, algorithm="none"), "invalid"),
        (jwt.encode(_claims(), KEY * 2, algorithm="HS512", headers={"kid": "k1"}), "invalid"),
        (jwt.encode(_claims(), b"x" * 32, algorithm="HS256", headers={"kid": "k1"}), "invalid"),
        (jwt.encode(_claims(), KEY, algorithm="HS256", headers={"kid": "nope"}), "invalid"),
        (jwt.encode(_claims(), KEY, algorithm="HS256"), "invalid"),  # no kid
        (
            jwt.encode(_claims(exp=int(NOW) - 1), KEY, algorithm="HS256", headers={"kid": "k1"}),
            "expired",
        ),
        (
            jwt.encode(_claims(iss="other"), KEY, algorithm="HS256", headers={"kid": "k1"}),
            "invalid",
        ),
        (
            jwt.encode(
                {"sub": "u1", "exp": int(NOW) + 86_400},
                KEY,
                algorithm="HS256",
                headers={"kid": "k1"},
            ),
            "invalid",
        ),
        (jwt.encode(_claims(sub=5), KEY, algorithm="HS256", headers={"kid": "k1"}), "invalid"),
        ("a.b.c", "invalid"),
        ("", "invalid"),
        ("x" * 5000, "invalid"),
    ],
)
def test_forged_or_stale_tokens_are_refused(token: str, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        TOKENS.verify(token)


def test_tampered_payload_is_refused() -> None:
    header, _payload, signature = TOKENS.issue("u1", "user").split(".")
    forged = jwt.utils.base64url_encode(b'{"sub":"u1","roles":["admin"]}').decode()
    with pytest.raises(Unauthorized):
        TOKENS.verify(f"{header}.{forged}.{signature}")


def test_settings() -> None:
    assert from_settings("", "k1", 900) is None
    with pytest.raises(ValueError, match="at least 32 bytes"):
        from_settings("short", "k1", 900)
    tokens = from_settings("s" * 32, "k9", 60)
    assert tokens is not None
    assert tokens.current == "k9"
