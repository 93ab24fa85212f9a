"""Accounts on SQLite and PostgreSQL: registration rules, sign-in that tells nothing about who is
registered, lockout, password change and reset (through a real outbox), disabling."""

from __future__ import annotations

import asyncio
import email
import re
import statistics
import time
from pathlib import Path

import pytest

from auth.accounts import AccountPolicy, Accounts, LockedOut
from auth.notify import OutboxNotifier
from auth.sessions import Sessions
from auth.tokens import AccessTokens
from backends.catalog import Catalog
from backends.errors import Conflict, Forbidden, InvalidRequest, Unauthorized

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"
POLICY = AccountPolicy(password_cost=4, lockout_failures=3, lockout_seconds=60)


def _accounts(catalog: Catalog, outbox: Path, policy: AccountPolicy = POLICY) -> Accounts:
    sessions = Sessions(catalog, AccessTokens({"k1": b"k" * 32}, "k1", 900))
    return Accounts(catalog, sessions, OutboxNotifier(outbox, "ClipSync <no-reply@test>"), policy)


@pytest.fixture
def accounts(catalog: Catalog, tmp_path: Path) -> Accounts:
    return _accounts(catalog, tmp_path / "outbox")


def _mails(outbox: Path) -> list[email.message.Message]:
    if not outbox.exists():
        return []
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(outbox.glob("*.eml"))]


async def test_register_normalises_and_refuses_duplicates(accounts: Accounts) -> None:
    user = await accounts.register("  Ada@EXAMPLE.com ", PASSWORD)
    assert user.email == "ada@example.com"
    with pytest.raises(Conflict, match="exists"):
        await accounts.register("ada@example.com", PASSWORD)
    for weak in ("short", "password123", "bob@example.com"):
        with pytest.raises(InvalidRequest):
            await accounts.register("bob@example.com", weak)
    with pytest.raises(InvalidRequest):
        await accounts.register("not an email", PASSWORD)


async def test_unknown_email_and_wrong_password_look_alike(accounts: Accounts) -> None:
    await accounts.register("ada@example.com", PASSWORD)
    assert (await accounts.login("ADA@example.com", PASSWORD)).access_token
    answers = []
    for email_, password in (("ada@example.com", "wrong password!"), ("eve@example.com", PASSWORD)):
        with pytest.raises(Unauthorized) as caught:
            await accounts.login(email_, password)
        answers.append(str(caught.value))
    assert answers[0] == answers[1] == "wrong email or password"


async def test_unknown_emails_cost_a_bcrypt_check_too(catalog: Catalog, tmp_path: Path) -> None:
    # Cost 10: a bcrypt check takes tens of ms, so a skipped one would stand out.
    accounts = _accounts(catalog, tmp_path, AccountPolicy(password_cost=10, lockout_failures=99))
    await accounts.register("ada@example.com", PASSWORD)

    async def timed(address: str) -> float:
        start = time.perf_counter()
        with pytest.raises(Unauthorized):
            await accounts.login(address, "wrong password!")
        return time.perf_counter() - start

    known = statistics.median([await timed("ada@example.com") for _ in range(3)])
    unknown = statistics.median([await timed("eve@example.com") for _ in range(3)])
    invalid = statistics.median([await timed("not an email") for _ in range(3)])
    assert 0.5 < unknown / known < 2.0, (known, unknown)
    assert 0.5 < invalid / known < 2.0, (known, invalid)


@pytest.mark.parametrize("registered", [True, False])
async def test_lockout_after_failures(accounts: Accounts, registered: bool) -> None:
    if registered:
        await accounts.register("ada@example.com", PASSWORD)
    for _ in range(POLICY.lockout_failures):
        with pytest.raises(Unauthorized):
            await accounts.login("ada@example.com", "wrong password!")
    # Locked: even the right password is refused, the same way for a registered address or not.
    with pytest.raises(LockedOut) as caught:
        await accounts.login("ada@example.com", PASSWORD)
    assert 0 < caught.value.retry_after <= POLICY.lockout_seconds + 1
    # Another address is not affected.
    with pytest.raises(Unauthorized):
        await accounts.login("bob@example.com", PASSWORD)


async def test_lockout_ends_after_its_window(catalog: Catalog, tmp_path: Path) -> None:
    policy = AccountPolicy(password_cost=4, lockout_failures=2, lockout_seconds=1.0)
    accounts = _accounts(catalog, tmp_path, policy)
    await accounts.register("ada@example.com", PASSWORD)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await accounts.login("ada@example.com", "wrong password!")
    with pytest.raises(LockedOut):
        await accounts.login("ada@example.com", PASSWORD)
    await asyncio.sleep(1.1)
    assert await accounts.login("ada@example.com", PASSWORD)


async def test_concurrent_failures_all_count(accounts: Accounts) -> None:
    await accounts.register("ada@example.com", PASSWORD)
    results = await asyncio.gather(
        *(accounts.login("ada@example.com", "wrong password!") for _ in range(6)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Unauthorized | LockedOut) for r in results)
    with pytest.raises(LockedOut):
        await accounts.login("ada@example.com", PASSWORD)


async def test_change_password_ends_every_session(accounts: Accounts) -> None:
    user = await accounts.register("ada@example.com", PASSWORD)
    old = await accounts.login("ada@example.com", PASSWORD)
    principal = accounts.sessions.tokens.verify(old.access_token)
    with pytest.raises(Forbidden):
        await accounts.change_password(user.id, "not the password", "a new passphrase")
    fresh = await accounts.change_password(user.id, PASSWORD, "a new passphrase")
    with pytest.raises(Unauthorized):
        await accounts.sessions.check(principal)
    with pytest.raises(Unauthorized):
        await accounts.sessions.rotate(old.refresh_token)
    assert await accounts.sessions.check(accounts.sessions.tokens.verify(fresh.access_token))
    with pytest.raises(Unauthorized):
        await accounts.login("ada@example.com", PASSWORD)
    assert await accounts.login("ada@example.com", "a new passphrase")


async def test_password_reset_by_emailed_link(accounts: Accounts, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    await accounts.register("ada@example.com", PASSWORD)
    session = await accounts.login("ada@example.com", PASSWORD)
    await accounts.request_reset("nobody@example.com")
    await accounts.request_reset("not an email")
    await accounts.settle()
    assert _mails(outbox) == []
    await accounts.request_reset("Ada@Example.com")
    await accounts.settle()
    [mail] = _mails(outbox)
    assert mail["To"] == "ada@example.com"
    body = mail.get_payload(decode=True).decode()
    token = re.search(r"\?token=([A-Za-z0-9_-]+)", body).group(1)  # type: ignore[union-attr]
    with pytest.raises(InvalidRequest):
        await accounts.reset(token, "short")  # policy first; the link stays usable
    await accounts.reset(token, "a brand new passphrase")
    with pytest.raises(InvalidRequest, match="invalid or expired"):
        await accounts.reset(token, "another new passphrase")
    with pytest.raises(Unauthorized):
        await accounts.sessions.rotate(session.refresh_token)
    assert await accounts.login("ada@example.com", "a brand new passphrase")


@pytest.mark.parametrize("token", ["", "nope", "x" * 1000, "' OR 1=1 --"])
async def test_bad_reset_links(accounts: Accounts, token: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid or expired"):
        await accounts.reset(token, "a brand new passphrase")


async def test_expired_reset_links(catalog: Catalog, tmp_path: Path) -> None:
    accounts = _accounts(catalog, tmp_path, AccountPolicy(password_cost=4, reset_ttl=0))
    await accounts.register("ada@example.com", PASSWORD)
    await accounts.request_reset("ada@example.com")
    await accounts.settle()
    [mail] = _mails(tmp_path)
    token = re.search(r"\?token=([A-Za-z0-9_-]+)", mail.get_payload(decode=True).decode())
    with pytest.raises(InvalidRequest, match="invalid or expired"):
        await accounts.reset(token.group(1), "a brand new passphrase")  # type: ignore[union-attr]


async def test_disabled_accounts(accounts: Accounts) -> None:
    user = await accounts.register("ada@example.com", PASSWORD)
    session = await accounts.login("ada@example.com", PASSWORD)
    await accounts.set_disabled(user.id, True)
    with pytest.raises(Unauthorized, match="wrong email or password"):
        await accounts.login("ada@example.com", PASSWORD)
    with pytest.raises(Unauthorized):
        await accounts.sessions.check(accounts.sessions.tokens.verify(session.access_token))
    await accounts.request_reset("ada@example.com")
    await accounts.settle()
    with pytest.raises(Exception, match="no such user"):
        await accounts.set_disabled("nobody", True)
    await accounts.set_disabled(user.id, False)
    assert await accounts.login("ada@example.com", PASSWORD)
