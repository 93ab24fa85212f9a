"""Access tokens: short-lived JWTs naming a user and their role, signed HS256 (a shared secret)
or ES256 (a P-256 key pair: replicas that only verify need only the public key).

Each key has a ``kid`` and its own algorithm. A token's header may pick the key (``kid``) but
never the algorithm: the key's algorithm is the only one accepted, so ``alg: none`` and HS/ES
confusion (an HMAC made with the public key as its secret) are refused by construction. Old keys
stay as verify-only entries while their tokens live out (rotation).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from backends.errors import Unauthorized
from conf.settings import AuthSettings

Role = Literal["user", "admin"]
Algorithm = Literal["HS256", "ES256"]
MAX_TOKEN_BYTES = 4096
MIN_SECRET_BYTES = 32


class Key(msgspec.Struct, frozen=True):
    algorithm: Algorithm
    verifying: Any  # HS256: the secret (bytes); ES256: the public key
    signing: Any = None  # HS256: the secret; ES256: the private key; None: verify only


def hs256(secret: bytes) -> Key:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")
    return Key("HS256", secret, secret)


def es256(pem: bytes) -> Key:
    """A P-256 key from PEM: a private key signs and verifies, a public key only verifies."""
    try:
        if b"PRIVATE KEY" in pem:
            private = serialization.load_pem_private_key(pem, password=None)
            public = private.public_key()
        else:
            private, public = None, serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM key: {exc}") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise ValueError("an ES256 key must be an EC key on the P-256 curve")
    return Key("ES256", public, private)


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    role: Role
    token_id: str
    expires: int = 0  # unix seconds
    epoch: int = 0  # the user's session epoch when the token was issued

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class AccessTokens:
    def __init__(
        self,
        keys: Mapping[str, bytes | Key],
        current: str,
        ttl: float,
        issuer: str = "clipsync",
    ):
        self.keys = {kid: k if isinstance(k, Key) else hs256(k) for kid, k in keys.items()}
        if current not in self.keys or self.keys[current].signing is None:
            raise ValueError(f"no signing key for the current kid {current!r}")
        self.current = current
        self.ttl = ttl
        self.issuer = issuer

    def issue(self, user_id: str, role: Role, now: float | None = None, epoch: int = 0) -> str:
        issued = int(time.time() if now is None else now)
        claims = {
            "sub": user_id,
            "roles": [role],
            "iat": issued,
            "exp": issued + int(self.ttl),
            "jti": uuid.uuid4().hex,
            "iss": self.issuer,
            "sev": epoch,
        }
        key = self.keys[self.current]
        return jwt.encode(
            claims, key.signing, algorithm=key.algorithm, headers={"kid": self.current}
        )

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; Unauthorized (one message, no detail that helps
        a forger) for anything else."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("invalid access token")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthorized("invalid access token")
            claims = jwt.decode(
                token,
                key.verifying,
                algorithms=[key.algorithm],
                issuer=self.issuer,
                options={"require": ["sub", "exp", "iat", "jti", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("access token expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid access token") from None
        roles = claims.get("roles")
        role: Role = "admin" if isinstance(roles, list) and "admin" in roles else "user"
        sub, jti, exp, epoch = claims["sub"], claims["jti"], claims["exp"], claims.get("sev", 0)
        if not isinstance(sub, str) or not isinstance(jti, str) or type(epoch) is not int:
            raise Unauthorized("invalid access token")
        return Principal(user_id=sub, role=role, token_id=jti, expires=int(exp), epoch=epoch)


def from_settings(auth: AuthSettings) -> AccessTokens | None:
    """The access tokens the settings describe; None when accounts are not configured.
    ValueError for a key that is too short, unreadable or of the wrong kind."""
    if auth.jwt_algorithm == "ES256":
        if not auth.jwt_private_key_file:
            raise ValueError("auth.jwt_algorithm ES256 needs auth.jwt_private_key_file")
        current = _es256_file(auth.jwt_private_key_file)
    elif auth.jwt_secret:
        current = _named(hs256, auth.jwt_secret.encode(), "auth.jwt_secret")
    else:
        return None
    keys = {auth.jwt_kid: current}
    for kid, value in auth.jwt_verify_keys.items():
        # Rotation: earlier keys, verify only. A PEM file path for ES256, a secret for HS256.
        if value.endswith(".pem"):
            keys[kid] = _es256_file(value, verify_only=True)
        else:
            keys[kid] = _named(hs256, value.encode(), f"auth.jwt_verify_keys.{kid}")
    return AccessTokens(keys, auth.jwt_kid, auth.access_ttl)


def _named(make: Callable[[bytes], Key], value: bytes, setting: str) -> Key:
    try:
        return make(value)
    except ValueError as exc:
        raise ValueError(f"{setting} {exc}") from None


def _es256_file(path: str, verify_only: bool = False) -> Key:
    try:
        key = es256(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"key file {path}: {exc}") from None
    return Key(key.algorithm, key.verifying) if verify_only else key
