"""Access tokens: short-lived JWTs (HS256, one key per ``kid``) naming a user and their role.

The algorithm is pinned: a token's header may pick the key (``kid``) but never the algorithm,
so ``alg: none`` and algorithm confusion are refused by construction. Accounts (issuing tokens
at login, refresh, revocation) build on this module.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

import jwt
import msgspec

from backends.errors import Unauthorized

Role = Literal["user", "admin"]
ALGORITHM = "HS256"
MAX_TOKEN_BYTES = 4096


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
    def __init__(self, keys: dict[str, bytes], current: str, ttl: float, issuer: str = "clipsync"):
        if current not in keys:
            raise ValueError(f"no key for the current kid {current!r}")
        self.keys = keys
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
        return jwt.encode(
            claims, self.keys[self.current], algorithm=ALGORITHM, headers={"kid": self.current}
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
                key,
                algorithms=[ALGORITHM],
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


MIN_SECRET_BYTES = 32


def from_settings(jwt_secret: str, kid: str, ttl: float) -> AccessTokens | None:
    """The access tokens the settings describe; None when accounts are not configured.
    Raises ValueError for a secret too short to resist guessing."""
    if not jwt_secret:
        return None
    secret = jwt_secret.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"auth.jwt_secret must be at least {MIN_SECRET_BYTES} bytes")
    return AccessTokens({kid: secret}, kid, ttl)
