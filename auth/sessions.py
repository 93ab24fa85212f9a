"""Sign-in sessions: refresh tokens rotated on every use, grouped in families, and revocation.

A login starts a family. Each refresh spends its token and hands out the next one of the same
family; a spent token presented again means two parties hold the family (a stolen token, or a
client that kept an old one), so the whole family is revoked and both must sign in again.
Only SHA-256 digests of refresh tokens are stored.

Access tokens stay stateless JWTs, checked against the database once per request for what a
signature cannot say: the user is disabled, the token was logged out (its ``jti`` is denied
until it expires), or the user's ``session_epoch`` moved on (password change: every session
ends).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import msgspec
from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from auth.tokens import AccessTokens, Principal
from backends.catalog import Catalog, schema
from backends.catalog.records import Role, new_id
from backends.catalog.store import aware
from backends.errors import Unauthorized

REFRESH_TTL = 30 * 86_400
MAX_REFRESH_CHARS = 128  # ours are 43; anything longer is not worth hashing
_REUSED = "refresh token already used: every session of that sign-in has been ended"


class Issued(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token is valid
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class Sessions:
    def __init__(self, catalog: Catalog, tokens: AccessTokens, refresh_ttl: float = REFRESH_TTL):
        self.catalog = catalog
        self.tokens = tokens
        self.refresh_ttl = refresh_ttl

    async def start(self, user_id: str) -> Issued:
        """A new family for ``user_id`` (after a successful login)."""
        async with self.catalog.engine.begin() as conn:
            role, epoch = await self._standing(conn, user_id)
            return await self._issue(conn, user_id, role, epoch, family=new_id())

    async def rotate(self, refresh_token: str) -> Issued:
        """The next tokens of the family ``refresh_token`` belongs to; Unauthorized if it is
        unknown, expired, revoked or already spent (which also revokes its family)."""
        if not refresh_token or len(refresh_token) > MAX_REFRESH_CHARS:
            raise Unauthorized("invalid refresh token")
        t = schema.refresh_tokens
        now = _now()
        async with self.catalog.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(t.c.user_id, t.c.family, t.c.expires_at, t.c.used_at, t.c.revoked).where(
                        t.c.digest == digest(refresh_token)
                    )
                )
            ).first()
            if row is None or row.revoked or aware(row.expires_at) <= now:
                raise Unauthorized("invalid refresh token")
            # Spend it only if nobody has: of two concurrent refreshes, one wins.
            spent = await conn.execute(
                update(t)
                .where(and_(t.c.digest == digest(refresh_token), t.c.used_at.is_(None)))
                .values(used_at=now)
            )
            if spent.rowcount == 1:
                role, epoch = await self._standing(conn, row.user_id)
                return await self._issue(conn, row.user_id, role, epoch, family=row.family)
        await self.revoke_family(row.family)
        raise Unauthorized(_REUSED)

    async def revoke_family(self, family: str) -> None:
        t = schema.refresh_tokens
        async with self.catalog.engine.begin() as conn:
            await conn.execute(update(t).where(t.c.family == family).values(revoked=True))

    async def end(self, principal: Principal, refresh_token: str | None = None) -> None:
        """Logout: the access token is refused until it expires; the refresh token's family,
        when given, is revoked."""
        expires = datetime.fromtimestamp(principal.expires, UTC)
        try:
            async with self.catalog.engine.begin() as conn:
                await conn.execute(
                    insert(schema.revoked_tokens).values(jti=principal.token_id, expires_at=expires)
                )
        except IntegrityError:
            pass  # logged out twice: already denied
        if refresh_token and len(refresh_token) <= MAX_REFRESH_CHARS:
            t = schema.refresh_tokens
            async with self.catalog.engine.begin() as conn:
                family = (
                    await conn.execute(
                        select(t.c.family).where(
                            and_(
                                t.c.digest == digest(refresh_token),
                                t.c.user_id == principal.user_id,
                            )
                        )
                    )
                ).scalar()
            if family is not None:
                await self.revoke_family(family)

    async def end_all(self, user_id: str, conn: AsyncConnection | None = None) -> None:
        """Every session of ``user_id`` ends: access tokens by epoch, refresh tokens revoked.
        Inside ``conn``'s transaction when given (a password change commits both or neither)."""
        if conn is None:
            async with self.catalog.engine.begin() as own:
                await self.end_all(user_id, own)
            return
        u, t = schema.users, schema.refresh_tokens
        await conn.execute(
            update(u).where(u.c.id == user_id).values(session_epoch=u.c.session_epoch + 1)
        )
        await conn.execute(update(t).where(t.c.user_id == user_id).values(revoked=True))

    async def check(self, principal: Principal) -> Principal:
        """``principal`` as the database sees it now (its role may have changed); Unauthorized
        if its token was logged out, its sessions ended, or its user disabled or removed."""
        u, r = schema.users, schema.revoked_tokens
        denied = select(r.c.jti).where(r.c.jti == principal.token_id).exists()
        query = select(u.c.role, u.c.disabled, u.c.session_epoch, denied.label("denied")).where(
            u.c.id == principal.user_id
        )
        async with self.catalog.reader.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or row.disabled or row.denied or row.session_epoch != principal.epoch:
            raise Unauthorized("session ended: sign in again")
        role: Role = row.role
        return (
            principal if role == principal.role else msgspec.structs.replace(principal, role=role)
        )

    async def _standing(self, conn: AsyncConnection, user_id: str) -> tuple[Role, int]:
        u = schema.users
        row = (
            await conn.execute(
                select(u.c.role, u.c.disabled, u.c.session_epoch).where(u.c.id == user_id)
            )
        ).first()
        if row is None or row.disabled:
            raise Unauthorized("account disabled")
        return row.role, row.session_epoch

    async def _issue(
        self, conn: AsyncConnection, user_id: str, role: Role, epoch: int, family: str
    ) -> Issued:
        refresh = secrets.token_urlsafe(32)
        now = _now()
        await conn.execute(
            insert(schema.refresh_tokens).values(
                digest=digest(refresh),
                user_id=user_id,
                family=family,
                created_at=now,
                expires_at=now + timedelta(seconds=self.refresh_ttl),
            )
        )
        return Issued(
            access_token=self.tokens.issue(user_id, role, epoch=epoch),
            refresh_token=refresh,
            expires_in=int(self.tokens.ttl),
        )
