"""Accounts over HTTP, on SQLite and PostgreSQL: register, sign in, refresh rotation and reuse,
logout, cookies with CSRF, lockout and rate limits (in-process and in Redis), password change
and reset through the outbox, admin, and hostile Authorization headers."""

from __future__ import annotations

import asyncio
import base64
import email
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from auth.tokens import AccessTokens
from backends.catalog import Catalog
from conf import Settings
from tests.conftest import serving, settings_for
from tests.redis_fixtures import keys_under

pytestmark = pytest.mark.anyio

SECRET = "a" * 40
PASSWORD = "correct horse battery"
API = "/api/v1"


@asynccontextmanager
async def gateway(
    catalog: Catalog, root: Path, redis: tuple[str, str] | None = None, **auth: object
) -> AsyncIterator[httpx.AsyncClient]:
    raw = msgspec.to_builtins(settings_for(root))
    raw["auth"].update({"jwt_secret": SECRET, "password_cost": 4, "lockout_failures": 3, **auth})
    raw["mail"]["outbox"] = str(root / "outbox")
    if redis is not None:
        raw["cache"].update({"redis_url": redis[0], "redis_prefix": redis[1]})
    settings = msgspec.convert(raw, Settings)
    async with serving(settings, catalog, base_url="https://test") as (http, _):
        yield http


@pytest.fixture
async def http(catalog: Catalog, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(catalog, tmp_path) as client:
        yield client


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"authorization": f"Bearer {session['access_token']}"}


async def signed_up(http: httpx.AsyncClient, address: str = "ada@example.com") -> dict[str, Any]:
    r = await http.post(f"{API}/auth/register", json={"email": address, "password": PASSWORD})
    assert r.status_code == 201, r.text
    r = await http.post(f"{API}/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 200, r.text
    session: dict[str, Any] = r.json()
    return session


async def test_register_login_refresh_logout(http: httpx.AsyncClient) -> None:
    session = await signed_up(http, "Ada@Example.com")
    me = await http.get(f"{API}/auth/me", headers=bearer(session))
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com"
    r = await http.post(f"{API}/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert r.status_code == 200
    rotated = r.json()
    # The spent token again: the whole family ends, the rotated one included.
    r = await http.post(f"{API}/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert r.status_code == 401
    assert "already used" in r.json()["detail"]
    r = await http.post(f"{API}/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert r.status_code == 401
    # Logout: the access token is refused from now on.
    again = await http.post(
        f"{API}/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    )
    fresh = again.json()
    assert (
        await http.post(f"{API}/auth/logout", json={}, headers=bearer(fresh))
    ).status_code == 204
    r = await http.get(f"{API}/auth/me", headers=bearer(fresh))
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_unknown_email_and_wrong_password_answer_alike(http: httpx.AsyncClient) -> None:
    await signed_up(http)
    wrong = await http.post(
        f"{API}/auth/login", json={"email": "ada@example.com", "password": "not it at all"}
    )
    unknown = await http.post(
        f"{API}/auth/login", json={"email": "eve@example.com", "password": "not it at all"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.content == unknown.content
    assert wrong.headers.get("www-authenticate") == unknown.headers.get("www-authenticate")


@pytest.mark.parametrize("address", ["ada@example.com", "nobody@example.com"])
async def test_lockout_is_429_with_retry_after(http: httpx.AsyncClient, address: str) -> None:
    await signed_up(http)
    for _ in range(3):
        r = await http.post(f"{API}/auth/login", json={"email": address, "password": "nope nope"})
        assert r.status_code == 401
    r = await http.post(f"{API}/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 429
    assert 0 < int(r.headers["retry-after"]) <= 15 * 60 + 1
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_rate_limit_per_ip(
    catalog: Catalog, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    redis = None
    if store == "redis":
        redis = (request.getfixturevalue("shared_redis"), request.getfixturevalue("redis_prefix"))
    async with gateway(catalog, tmp_path, redis, login_rate="4/minute") as http:
        codes = [
            (
                await http.post(
                    f"{API}/auth/login", json={"email": f"u{n}@example.com", "password": "x"}
                )
            ).status_code
            for n in range(6)
        ]
        assert codes == [401] * 4 + [429] * 2
        r = await http.post(f"{API}/auth/login", json={"email": "z@example.com", "password": "x"})
        assert 0 < int(r.headers["retry-after"]) <= 61
    if redis is not None:
        assert any(b"ratelimit" in key for key in keys_under(*redis))


async def test_cookie_sessions_need_the_csrf_header(http: httpx.AsyncClient) -> None:
    await signed_up(http)
    r = await http.post(
        f"{API}/auth/login",
        json={"email": "ada@example.com", "password": PASSWORD, "cookie": True},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["access_token"] is None
    assert body["refresh_token"] is None
    cookies = {c.split("=", 1)[0]: c.lower() for c in r.headers.get_list("set-cookie")}
    for name in ("clipsync_access", "clipsync_refresh"):
        assert "httponly" in cookies[name], cookies[name]
        assert "secure" in cookies[name], cookies[name]
    assert "samesite=strict" in cookies["clipsync_refresh"]
    assert "path=/api/v1/auth" in cookies["clipsync_refresh"]
    assert "httponly" not in cookies["clipsync_csrf"]
    assert (await http.get(f"{API}/auth/me")).status_code == 200  # reads need no CSRF header
    video = {"title": "from a browser"}
    assert (await http.post(f"{API}/videos", json=video)).status_code == 403
    r = await http.post(f"{API}/videos", json=video, headers={"x-csrf-token": "forged"})
    assert r.status_code == 403
    csrf = {"x-csrf-token": body["csrf_token"]}
    assert (await http.post(f"{API}/videos", json=video, headers=csrf)).status_code == 201
    # Refresh from the cookie (CSRF-checked too), then logout clears the cookies.
    assert (await http.post(f"{API}/auth/refresh", json={})).status_code == 403
    r = await http.post(f"{API}/auth/refresh", json={}, headers=csrf)
    assert r.status_code == 200
    csrf = {"x-csrf-token": r.json()["csrf_token"]}
    assert (await http.post(f"{API}/auth/logout", json={}, headers=csrf)).status_code == 204
    assert (await http.get(f"{API}/auth/me")).status_code == 401


async def test_password_change_ends_other_sessions(http: httpx.AsyncClient) -> None:
    first = await signed_up(http)
    r = await http.post(
        f"{API}/auth/password",
        json={"current_password": "wrong wrong", "new_password": "a new passphrase"},
        headers=bearer(first),
    )
    assert r.status_code == 403
    r = await http.post(
        f"{API}/auth/password",
        json={"current_password": PASSWORD, "new_password": "a new passphrase"},
        headers=bearer(first),
    )
    assert r.status_code == 200
    assert (await http.get(f"{API}/auth/me", headers=bearer(first))).status_code == 401
    assert (await http.get(f"{API}/auth/me", headers=bearer(r.json()))).status_code == 200


async def test_password_reset_through_the_outbox(http: httpx.AsyncClient, tmp_path: Path) -> None:
    await signed_up(http)
    for address in ("ada@example.com", "nobody@example.com"):
        r = await http.post(f"{API}/auth/reset-request", json={"email": address})
        assert r.status_code == 202
    # The email goes out in the background: wait for the one file.
    for _ in range(100):
        mails = list((tmp_path / "outbox").glob("*.eml"))
        if mails:
            break
        await asyncio.sleep(0.05)
    [mail] = [email.message_from_bytes(p.read_bytes()) for p in mails]
    assert mail["To"] == "ada@example.com"
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    token = re.search(r"reset-password\?token=([A-Za-z0-9_-]+)", text).group(1)  # type: ignore[union-attr]
    r = await http.post(f"{API}/auth/reset", json={"token": token, "new_password": "fresh pass 1"})
    assert r.status_code == 204
    r = await http.post(f"{API}/auth/reset", json={"token": token, "new_password": "fresh pass 2"})
    assert r.status_code == 400
    r = await http.post(
        f"{API}/auth/login", json={"email": "ada@example.com", "password": "fresh pass 1"}
    )
    assert r.status_code == 200


async def test_admins_list_and_disable_users(http: httpx.AsyncClient, catalog: Catalog) -> None:
    ada = await signed_up(http)
    root = await catalog.create_user("root@example.com", role="admin")
    token = AccessTokens({"k1": SECRET.encode()}, "k1", 60).issue(root.id, "admin")
    admin = {"authorization": f"Bearer {token}"}
    assert (await http.get(f"{API}/admin/users", headers=bearer(ada))).status_code == 403
    r = await http.get(f"{API}/admin/users?limit=1", headers=admin)
    assert r.status_code == 200
    page = r.json()
    assert len(page["items"]) == 1
    assert page["next_cursor"]
    r = await http.get(f"{API}/admin/users?limit=1&cursor={page['next_cursor']}", headers=admin)
    everyone = {u["email"] for u in page["items"] + r.json()["items"]}
    assert everyone == {"ada@example.com", "root@example.com"}
    me = (await http.get(f"{API}/auth/me", headers=bearer(ada))).json()
    r = await http.post(f"{API}/admin/users/{me['id']}/disable", headers=bearer(ada))
    assert r.status_code == 403
    assert (
        await http.post(f"{API}/admin/users/{me['id']}/disable", headers=admin)
    ).status_code == 204
    assert (await http.get(f"{API}/auth/me", headers=bearer(ada))).status_code == 401
    r = await http.post(
        f"{API}/auth/login", json={"email": "ada@example.com", "password": PASSWORD}
    )
    assert r.status_code == 401
    assert (await http.post(f"{API}/admin/users/nope/disable", headers=admin)).status_code == 404


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer " + "x" * 10_000,
        "Basic YWRhOnB3",
        "Bearer",
        "Bearer a.b.c",
        "Bearer " + _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"sub": "x"}) + ".",
        "bearer \u00e9\u00e9",
    ],
)
async def test_hostile_authorization_headers_are_401(http: httpx.AsyncClient, header: str) -> None:
    r = await http.get(f"{API}/auth/me", headers={"authorization": header.encode()})
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_admins_purge_with_their_own_token(http: httpx.AsyncClient, catalog: Catalog) -> None:
    ada = await signed_up(http)
    root = await catalog.create_user("root@example.com", role="admin")
    token = AccessTokens({"k1": SECRET.encode()}, "k1", 60).issue(root.id, "admin")
    purge = f"{API}/admin/purge"
    assert (await http.post(purge, json={"path": ""})).status_code == 401
    assert (await http.post(purge, json={"path": ""}, headers=bearer(ada))).status_code == 403
    r = await http.post(purge, json={"path": ""}, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.json()["path"] == ""


async def test_reset_requests_are_limited_per_address(catalog: Catalog, tmp_path: Path) -> None:
    async with gateway(catalog, tmp_path, reset_account_rate="2/hour") as http:
        codes = []
        for _ in range(3):
            r = await http.post(f"{API}/auth/reset-request", json={"email": "Ada@example.com"})
            codes.append(r.status_code)
        # Another address from the same client is still served (until the per-IP limit).
        other = await http.post(f"{API}/auth/reset-request", json={"email": "bob@example.com"})
    assert codes == [202, 202, 429]
    assert other.status_code == 202
