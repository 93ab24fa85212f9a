"""Accounts: register, sign in with lockout, change and reset passwords, disable.

Sign-in answers the same way, after the same bcrypt work, for an unknown email, a wrong password
and a disabled account, so the answer tells nothing about who is registered. Failed sign-ins are
counted per email digest in the catalog (shared by every worker and replica, registered or not);
after ``lockout_failures`` within the lockout window the address is locked for that window and
every attempt gets 429 with Retry-After, right password or not.

A reset request always succeeds from the outside; the email (a one-time link, stored only as a
digest) is sent in the background, so the answer's timing does not depend on the account either.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime, timedelta

import msgspec
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from auth import passwords
from auth.notify import Mail, Notifier
from auth.sessions import Issued, Sessions, digest
from backends.catalog import Catalog, schema
from backends.catalog.records import User
from backends.catalog.store import aware
from backends.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TooManyRequests,
    Unauthorized,
)

log = logging.getLogger("clipsync.auth")

_WRONG = "wrong email or password"
MAX_RESET_TOKEN_CHARS = 128


class LockedOut(TooManyRequests):
    """Too many failed sign-ins for one address: 429 with Retry-After."""


class AccountPolicy(msgspec.Struct, frozen=True, kw_only=True):
    password_cost: int = passwords.DEFAULT_COST
    lockout_failures: int = 5
    lockout_seconds: float = 15 * 60
    reset_ttl: float = 3600
    reset_url: str = "http://127.0.0.1:8080/reset-password"  # the link gets ?token=…


def _now() -> datetime:
    return datetime.now(UTC)


class Accounts:
    def __init__(
        self, catalog: Catalog, sessions: Sessions, notifier: Notifier, policy: AccountPolicy
    ) -> None:
        self.catalog = catalog
        self.sessions = sessions
        self.notifier = notifier
        self.policy = policy
        self._mailing: set[asyncio.Task[None]] = set()

    async def register(self, email: str, password: str) -> User:
        address = passwords.normalize_email(email)
        passwords.check_policy(password, address)
        hashed = await passwords.hash_password(password, self.policy.password_cost)
        try:
            return await self.catalog.create_user(address, password_hash=hashed)
        except Conflict:
            raise Conflict("an account with this email exists") from None

    async def login(self, email: str, password: str) -> Issued:
        try:
            address = passwords.normalize_email(email)
        except InvalidRequest:
            await passwords.burn_check(password, self.policy.password_cost)
            raise Unauthorized(_WRONG) from None
        key = digest(address)
        await self._refuse_if_locked(key)
        u = schema.users
        async with self.catalog.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(u.c.id, u.c.password_hash, u.c.disabled).where(u.c.email == address)
                )
            ).first()
        if row is None or row.password_hash is None:
            await passwords.burn_check(password, self.policy.password_cost)
            ok = False
        else:
            ok = await passwords.check_password(password, row.password_hash)
        if not ok or row is None or row.disabled:
            await self._failed(key)
            raise Unauthorized(_WRONG)
        await self._forget_failures(key)
        if passwords.needs_rehash(row.password_hash, self.policy.password_cost):
            await self._set_password(row.id, password, end_sessions=False)
        return await self.sessions.start(row.id)

    async def change_password(self, user_id: str, current: str, new: str) -> Issued:
        """Every session ends (this one too); the answer carries a fresh one."""
        u = schema.users
        async with self.catalog.reader.connect() as conn:
            row = (
                await conn.execute(select(u.c.email, u.c.password_hash).where(u.c.id == user_id))
            ).first()
        if row is None:
            raise Unauthorized("session ended: sign in again")
        if row.password_hash is None or not await passwords.check_password(
            current, row.password_hash
        ):
            raise Forbidden("the current password is wrong")
        passwords.check_policy(new, row.email)
        await self._set_password(user_id, new, end_sessions=True)
        return await self.sessions.start(user_id)

    async def request_reset(self, email: str) -> None:
        """Sends a one-time reset link if an active account has ``email``; never says."""
        try:
            address = passwords.normalize_email(email)
        except InvalidRequest:
            return
        task = asyncio.create_task(self._send_reset(address))
        self._mailing.add(task)
        task.add_done_callback(self._mailing.discard)

    async def reset(self, token: str, new: str) -> None:
        if not token or len(token) > MAX_RESET_TOKEN_CHARS:
            raise InvalidRequest("invalid or expired reset link")
        r, u = schema.password_resets, schema.users
        now = _now()
        async with self.catalog.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(r.c.user_id, r.c.expires_at, r.c.used_at, u.c.email)
                    .join(u, u.c.id == r.c.user_id)
                    .where(r.c.digest == digest(token))
                )
            ).first()
        if row is None or row.used_at is not None or aware(row.expires_at) <= now:
            raise InvalidRequest("invalid or expired reset link")
        passwords.check_policy(new, row.email)
        hashed = await passwords.hash_password(new, self.policy.password_cost)
        async with self.catalog.engine.begin() as conn:
            spent = await conn.execute(
                update(r)
                .where(and_(r.c.digest == digest(token), r.c.used_at.is_(None)))
                .values(used_at=now)
            )
            if spent.rowcount != 1:
                raise InvalidRequest("invalid or expired reset link")
            await conn.execute(update(u).where(u.c.id == row.user_id).values(password_hash=hashed))
            await self.sessions.end_all(row.user_id, conn)
        await self._forget_failures(digest(row.email))

    async def set_disabled(self, user_id: str, disabled: bool) -> None:
        u = schema.users
        async with self.catalog.engine.begin() as conn:
            changed = await conn.execute(
                update(u).where(u.c.id == user_id).values(disabled=disabled, updated_at=_now())
            )
            if changed.rowcount != 1:
                raise NotFound("no such user")
            if disabled:
                await self.sessions.end_all(user_id, conn)

    async def settle(self) -> None:
        """Waits for reset emails still being sent (tests, shutdown)."""
        if self._mailing:
            await asyncio.gather(*self._mailing, return_exceptions=True)

    # Internals ------------------------------------------------------------------------------

    async def _send_reset(self, address: str) -> None:
        u, r = schema.users, schema.password_resets
        try:
            async with self.catalog.reader.connect() as conn:
                user_id = (
                    await conn.execute(
                        select(u.c.id).where(and_(u.c.email == address, u.c.disabled.is_(False)))
                    )
                ).scalar()
            if user_id is None:
                return
            token = secrets.token_urlsafe(32)
            now = _now()
            async with self.catalog.engine.begin() as conn:
                await conn.execute(
                    insert(r).values(
                        digest=digest(token),
                        user_id=user_id,
                        created_at=now,
                        expires_at=now + timedelta(seconds=self.policy.reset_ttl),
                    )
                )
            minutes = max(1, round(self.policy.reset_ttl / 60))
            await self.notifier.send(
                Mail(
                    to=address,
                    subject="Reset your ClipSync password",
                    text=(
                        "Someone asked to reset the password of your ClipSync account.\n\n"
                        f"To choose a new password, open this link within {minutes} minutes:\n"
                        f"{self.policy.reset_url}?token={token}\n\n"
                        "If it was not you, ignore this email: your password stays as it is.\n"
                    ),
                )
            )
        except Exception as exc:  # the requester was already answered; the log must say it
            log.error("password reset email not sent: %s", exc)

    async def _set_password(self, user_id: str, password: str, end_sessions: bool) -> None:
        hashed = await passwords.hash_password(password, self.policy.password_cost)
        u = schema.users
        async with self.catalog.engine.begin() as conn:
            await conn.execute(
                update(u).where(u.c.id == user_id).values(password_hash=hashed, updated_at=_now())
            )
            if end_sessions:
                await self.sessions.end_all(user_id, conn)

    async def _refuse_if_locked(self, key: str) -> None:
        f = schema.login_failures
        async with self.catalog.reader.connect() as conn:
            locked = (
                await conn.execute(select(f.c.locked_until).where(f.c.email_digest == key))
            ).scalar()
        if locked is None:
            return
        wait = (aware(locked) - _now()).total_seconds()
        if wait > 0:
            raise LockedOut(
                "too many failed sign-ins for this email: try again later", int(wait) + 1
            )

    async def _failed(self, key: str) -> None:
        for _ in range(3):  # a concurrent first failure may insert the row under us
            try:
                await self._count_failure(key)
                return
            except IntegrityError:
                continue

    async def _count_failure(self, key: str) -> None:
        f = schema.login_failures
        now = _now()
        window = timedelta(seconds=self.policy.lockout_seconds)
        async with self.catalog.engine.begin() as conn:
            row = (await conn.execute(select(f.c.first_at).where(f.c.email_digest == key))).first()
            if row is None:
                await conn.execute(
                    insert(f).values(email_digest=key, failures=1, first_at=now, locked_until=None)
                )
                count = 1
            elif aware(row.first_at) + window <= now:  # an old series: start a new one
                await conn.execute(
                    update(f)
                    .where(f.c.email_digest == key)
                    .values(failures=1, first_at=now, locked_until=None)
                )
                count = 1
            else:  # counted in the database, so concurrent failures all count
                count = (
                    await conn.execute(
                        update(f)
                        .where(f.c.email_digest == key)
                        .values(failures=f.c.failures + 1)
                        .returning(f.c.failures)
                    )
                ).scalar_one()
            if count >= self.policy.lockout_failures:
                await conn.execute(
                    update(f).where(f.c.email_digest == key).values(locked_until=now + window)
                )

    async def _forget_failures(self, key: str) -> None:
        f = schema.login_failures
        async with self.catalog.engine.begin() as conn:
            await conn.execute(delete(f).where(f.c.email_digest == key))
