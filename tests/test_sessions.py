"""Sign-in sessions on SQLite and PostgreSQL: refresh rotation, reuse detection revoking the
family, logout, ending every session, disabled accounts."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import update

from auth.sessions import Sessions
from auth.tokens import AccessTokens
from backends.catalog import Catalog, schema
from backends.errors import Unauthorized

pytestmark = pytest.mark.anyio

KEY = b"k" * 32


@pytest.fixture
async def sessions(catalog: Catalog) -> Sessions:
    return Sessions(catalog, AccessTokens({"k1": KEY}, "k1", 900))


async def _user(catalog: Catalog, email: str = "ada@example.com") -> str:
    return (await catalog.create_user(email, password_hash="x")).id


async def test_login_then_refresh_rotates(sessions: Sessions, catalog: Catalog) -> None:
    user_id = await _user(catalog)
    first = await sessions.start(user_id)
    principal = sessions.tokens.verify(first.access_token)
    assert (await sessions.check(principal)).user_id == user_id
    second = await sessions.rotate(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    third = await sessions.rotate(second.refresh_token)
    assert await sessions.check(sessions.tokens.verify(third.access_token))


async def test_a_reused_refresh_token_revokes_its_family(
    sessions: Sessions, catalog: Catalog
) -> None:
    user_id = await _user(catalog)
    stolen = await sessions.start(user_id)
    other_login = await sessions.start(user_id)
    legit = await sessions.rotate(stolen.refresh_token)
    with pytest.raises(Unauthorized, match="already used"):
        await sessions.rotate(stolen.refresh_token)
    # The family is gone for both holders; another sign-in is untouched.
    with pytest.raises(Unauthorized, match="invalid refresh token"):
        await sessions.rotate(legit.refresh_token)
    assert await sessions.rotate(other_login.refresh_token)


async def test_concurrent_refreshes_of_one_token_let_one_win(
    sessions: Sessions, catalog: Catalog
) -> None:
    user_id = await _user(catalog)
    issued = await sessions.start(user_id)
    results = await asyncio.gather(
        *(sessions.rotate(issued.refresh_token) for _ in range(4)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, Unauthorized) for r in results if isinstance(r, BaseException))


async def test_logout_denies_the_access_token_and_its_refresh_family(
    sessions: Sessions, catalog: Catalog
) -> None:
    user_id = await _user(catalog)
    issued = await sessions.start(user_id)
    principal = sessions.tokens.verify(issued.access_token)
    await sessions.end(principal, issued.refresh_token)
    await sessions.end(principal, issued.refresh_token)  # twice: no error
    with pytest.raises(Unauthorized, match="session ended"):
        await sessions.check(principal)
    with pytest.raises(Unauthorized):
        await sessions.rotate(issued.refresh_token)


async def test_ending_every_session(sessions: Sessions, catalog: Catalog) -> None:
    user_id = await _user(catalog)
    a, b = await sessions.start(user_id), await sessions.start(user_id)
    await sessions.end_all(user_id)
    for issued in (a, b):
        with pytest.raises(Unauthorized, match="session ended"):
            await sessions.check(sessions.tokens.verify(issued.access_token))
        with pytest.raises(Unauthorized):
            await sessions.rotate(issued.refresh_token)
    fresh = await sessions.start(user_id)
    assert await sessions.check(sessions.tokens.verify(fresh.access_token))


async def test_a_disabled_account_loses_its_sessions(sessions: Sessions, catalog: Catalog) -> None:
    user_id = await _user(catalog)
    issued = await sessions.start(user_id)
    u = schema.users
    async with catalog.engine.begin() as conn:
        await conn.execute(update(u).where(u.c.id == user_id).values(disabled=True))
    with pytest.raises(Unauthorized):
        await sessions.check(sessions.tokens.verify(issued.access_token))
    with pytest.raises(Unauthorized, match="disabled"):
        await sessions.rotate(issued.refresh_token)
    with pytest.raises(Unauthorized, match="disabled"):
        await sessions.start(user_id)


async def test_role_changes_apply_to_live_tokens(sessions: Sessions, catalog: Catalog) -> None:
    user_id = await _user(catalog)
    principal = sessions.tokens.verify((await sessions.start(user_id)).access_token)
    u = schema.users
    async with catalog.engine.begin() as conn:
        await conn.execute(update(u).where(u.c.id == user_id).values(role="admin"))
    assert (await sessions.check(principal)).admin


async def test_expired_refresh_tokens_are_refused(catalog: Catalog) -> None:
    short = Sessions(catalog, AccessTokens({"k1": KEY}, "k1", 900), refresh_ttl=0)
    issued = await short.start(await _user(catalog))
    with pytest.raises(Unauthorized, match="invalid refresh token"):
        await short.rotate(issued.refresh_token)


@pytest.mark.parametrize("token", ["", "x", "é" * 40, "a" * 10_000, "' OR 1=1 --"])
async def test_garbage_refresh_tokens(sessions: Sessions, token: str) -> None:
    with pytest.raises(Unauthorized, match="invalid refresh token"):
        await sessions.rotate(token)
