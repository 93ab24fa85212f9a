"""Access tokens: what verifies and what never does (a table of forgeries)."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth.tokens import AccessTokens, from_settings
from backends.errors import Unauthorized
from conf.settings import AuthSettings

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


def _auth(**fields: object) -> AuthSettings:
    return msgspec.convert(fields, AuthSettings)


def _p256(path: Path, private: bool = True) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    if private:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    else:
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    path.write_bytes(pem)
    return path


def test_settings(tmp_path: Path) -> None:
    assert from_settings(_auth()) is None
    with pytest.raises(ValueError, match="at least 32 bytes"):
        from_settings(_auth(jwt_secret="short"))
    tokens = from_settings(_auth(jwt_secret="s" * 32, jwt_kid="k9", access_ttl=60))
    assert tokens is not None
    assert tokens.current == "k9"
    with pytest.raises(ValueError, match=r"needs auth\.jwt_private_key_file"):
        from_settings(_auth(jwt_algorithm="ES256"))
    with pytest.raises(ValueError, match="cannot read the key file"):
        from_settings(_auth(jwt_algorithm="ES256", jwt_private_key_file=str(tmp_path / "no")))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM key"):
        from_settings(_auth(jwt_algorithm="ES256", jwt_private_key_file=str(tmp_path / "junk.pem")))


def test_es256_signs_and_rotates(tmp_path: Path) -> None:
    old_private = _p256(tmp_path / "old.key")
    old = from_settings(
        _auth(jwt_algorithm="ES256", jwt_private_key_file=str(old_private), jwt_kid="e1")
    )
    assert old is not None
    old_token = old.issue("u1", "admin")
    assert jwt.get_unverified_header(old_token)["alg"] == "ES256"
    # Rotation: a new key signs; the old one's public half still verifies its tokens.
    public = tmp_path / "old.pem"
    public.write_bytes(
        old.keys["e1"].verifying.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    new = from_settings(
        _auth(
            jwt_algorithm="ES256",
            jwt_private_key_file=str(_p256(tmp_path / "new.key")),
            jwt_kid="e2",
            jwt_verify_keys={"e1": str(public)},
        )
    )
    assert new is not None
    assert new.verify(old_token).admin
    assert new.verify(new.issue("u2", "user")).user_id == "u2"
    with pytest.raises(ValueError, match="no signing key"):
        AccessTokens({"e1": new.keys["e1"]}, "e1", 60)  # a public key cannot sign


def test_hs_es_confusion_is_refused(tmp_path: Path) -> None:
    """The classic attack: an HS256 token whose HMAC secret is the server's public ES256 key."""
    tokens = from_settings(
        _auth(jwt_algorithm="ES256", jwt_private_key_file=str(_p256(tmp_path / "k.key")))
    )
    assert tokens is not None
    public_pem = tokens.keys["k1"].verifying.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT","kid":"k1"}').decode()
    now = int(time.time())
    body = jwt.utils.base64url_encode(
        msgspec.json.encode(
            {"sub": "u1", "roles": ["admin"], "iat": now, "exp": now + 60, "jti": "j",
             "iss": "clipsync"}
        )
    ).decode()  # fmt: skip
    mac = hmac.digest(public_pem, f"{header}.{body}".encode(), hashlib.sha256)
    forged = f"{header}.{body}.{jwt.utils.base64url_encode(mac).decode()}"
    with pytest.raises(Unauthorized, match="invalid access token"):
        tokens.verify(forged)
