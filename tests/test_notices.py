"""Owner notices on SQLite and PostgreSQL: webhooks for every event, and one email (through a
real SMTP server, aiosmtpd on 127.0.0.1) for a ready or failed video to an owner who opted in
with PATCH /api/v1/auth/me, never twice, never to a disabled account, never a broken header."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import update

from auth.notify import SmtpNotifier, SmtpTarget
from backends.catalog import Catalog, NewVideo, VideoChanges, schema
from backends.catalog import webhooks as store
from backends.catalog.records import User, Video
from conf import Settings
from conf.settings import WebhookSettings
from gateway.notices import OwnerNotices, one_line
from gateway.webhooks import Webhooks
from tests.conftest import serving, settings_for
from tests.serving import free_port
from tests.test_notify import Collector, body, parse, serve

pytestmark = pytest.mark.anyio

SENDER = "ClipSync <no-reply@clipsync.test>"
BASE = "https://video.example.com"
API = "/api/v1"
SECRET = "n" * 40
PASSWORD = "correct horse battery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Collector]]:
    yield from serve(Collector())


class Setup(msgspec.Struct):
    catalog: Catalog
    notices: OwnerNotices
    collector: Collector


@pytest.fixture
async def setup(catalog: Catalog, smtp_server: tuple[int, Collector]) -> AsyncIterator[Setup]:
    port, collector = smtp_server
    hooks = Webhooks(catalog, WebhookSettings(allow_private=True))
    notifier = SmtpNotifier(SmtpTarget(host="127.0.0.1", port=port), SENDER, timeout=5)
    yield Setup(catalog, OwnerNotices(catalog, hooks, notifier, BASE + "/"), collector)
    await hooks.close()


async def owner(
    catalog: Catalog, address: str = "ann@example.org", opted_in: bool = True
) -> tuple[User, store.Webhook]:
    """A user (opted in or not) with a webhook endpoint subscribed to every event."""
    user = await catalog.create_user(address)
    if opted_in:
        changed = await catalog.set_notify_ready(user.id, True)
        assert changed is not None
        assert changed.notify_ready
        user = changed
    events = ["video.playable", "video.ready", "video.failed"]
    hook = await store.create(catalog, user.id, "https://hooks.example.com/in", events, "s", 10)
    return user, hook


async def video_in(
    catalog: Catalog, user: User, status: str, title: str = "Holiday", reason: str | None = None
) -> Video:
    video = await catalog.create_video(user.id, NewVideo(title=title))
    changed = await catalog.update_video(
        video.id,
        msgspec.convert({"status": status, "failure_reason": reason}, VideoChanges),
    )
    assert changed is not None
    return changed


def mails(collector: Collector) -> list[tuple[list[str], EmailMessage]]:
    out = []
    for envelope, _ in collector.received:
        assert isinstance(envelope.content, bytes)
        out.append((list(envelope.rcpt_tos), parse(envelope.content)))
    return out


async def hooked(catalog: Catalog, hook: store.Webhook) -> list[str]:
    """The events queued for the endpoint, oldest first."""
    log, _ = await store.log(catalog, hook.id, 100)
    return [d.event for d in reversed(log)]


# --- Emails -----------------------------------------------------------------------------------


async def test_ready_is_mailed_once_and_hooked(setup: Setup) -> None:
    user, hook = await owner(setup.catalog)
    video = await video_in(setup.catalog, user, "ready")
    # A job run twice, and two processes at once: one email, one webhook delivery.
    await setup.notices.announce(video, "video.ready")
    await asyncio.gather(*(setup.notices.announce(video, "video.ready") for _ in range(3)))
    [(to, message)] = mails(setup.collector)
    assert to == ["ann@example.org"]
    assert message["To"] == "ann@example.org"
    assert message["Subject"] == "Your video “Holiday” is ready"
    text = body(message)
    assert "Status: ready" in text
    assert f"{BASE}/v/{video.id}/master.m3u8" in text
    assert f"POST {BASE}/api/v1/videos/{video.id}/playback" in text  # private by default
    assert await hooked(setup.catalog, hook) == ["video.ready"]


async def test_failed_is_mailed_with_the_reason(setup: Setup) -> None:
    user, hook = await owner(setup.catalog)
    reason = "no decodable video stream"
    video = await video_in(setup.catalog, user, "failed", reason=reason)
    await setup.notices.announce(video, "video.failed")
    await setup.notices.announce(video, "video.failed")
    [(_, message)] = mails(setup.collector)
    assert message["Subject"] == "Your video “Holiday” could not be processed"
    text = body(message)
    assert "Status: failed" in text
    assert f"Reason: {reason}" in text
    assert f"{BASE}/api/v1/videos/{video.id}" in text
    assert await hooked(setup.catalog, hook) == ["video.failed"]


async def test_playable_is_hooked_not_mailed(setup: Setup) -> None:
    user, hook = await owner(setup.catalog)
    video = await video_in(setup.catalog, user, "playable")
    await setup.notices.announce(video, "video.playable")
    assert setup.collector.received == []
    assert await hooked(setup.catalog, hook) == ["video.playable"]


@pytest.mark.parametrize("who", ["not opted in", "disabled"])
async def test_no_mail_unless_opted_in_and_active(setup: Setup, who: str) -> None:
    user, hook = await owner(setup.catalog, opted_in=who != "not opted in")
    if who == "disabled":
        async with setup.catalog.engine.begin() as conn:
            u = schema.users
            await conn.execute(update(u).where(u.c.id == user.id).values(disabled=True))
    ready = await video_in(setup.catalog, user, "ready")
    failed = await video_in(setup.catalog, user, "failed", reason="bad")
    await setup.notices.announce(ready, "video.ready")
    await setup.notices.announce(failed, "video.failed")
    assert setup.collector.received == []
    assert await hooked(setup.catalog, hook) == ["video.ready", "video.failed"]


async def test_a_title_with_line_breaks_stays_one_subject_line(setup: Setup) -> None:
    user, _ = await owner(setup.catalog)
    title = "Cats\r\nBcc: eve@evil.example\r\n\r\nfake body\u2028X-Injected: 1"
    video = await video_in(setup.catalog, user, "ready", title=title)
    await setup.notices.announce(video, "video.ready")
    [(to, message)] = mails(setup.collector)
    assert to == ["ann@example.org"]  # no Bcc smuggled in
    assert message["Bcc"] is None
    assert message["X-Injected"] is None
    subject = message["Subject"]
    assert subject == "Your video “Cats Bcc: eve@evil.example fake body X-Injected: 1” is ready"
    assert not any(c in subject for c in "\r\n\u2028")


@pytest.mark.parametrize(
    ("raw", "limit", "shown"),
    [
        ("Holiday", 100, "Holiday"),
        ("a\r\nb\tc\x00d\x85e\u2029f", 100, "a b c d e f"),
        ("  \r\n ", 100, "(untitled)"),
        ("x" * 150, 100, "x" * 99 + "…"),
    ],
)
def test_one_line(raw: str, limit: int, shown: str) -> None:
    assert one_line(raw, limit) == shown


async def test_a_failed_send_is_logged_and_tried_again(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    user, hook = await owner(setup.catalog)
    video = await video_in(setup.catalog, user, "ready")
    nowhere = SmtpNotifier(SmtpTarget(host="127.0.0.1", port=free_port()), SENDER, timeout=2)
    broken = OwnerNotices(setup.catalog, setup.notices.hooks, nowhere, BASE)
    with caplog.at_level(logging.ERROR, "clipsync.notices"):
        await broken.announce(video, "video.ready")  # does not raise
    assert "email about video.ready of video" in caplog.text
    assert "cannot connect" in caplog.text
    assert setup.collector.received == []
    # Not recorded as sent: the next announcement mails it.
    await setup.notices.announce(video, "video.ready")
    assert len(mails(setup.collector)) == 1
    assert await hooked(setup.catalog, hook) == ["video.ready"]


async def test_a_deleted_video_is_not_mailed(setup: Setup) -> None:
    user, _ = await owner(setup.catalog)
    video = await video_in(setup.catalog, user, "ready")
    await setup.catalog.delete_video(video.id)
    await setup.notices.announce(video, "video.ready")  # does not raise
    assert setup.collector.received == []


# --- Over HTTP ----------------------------------------------------------------------------------


@asynccontextmanager
async def gateway(
    catalog: Catalog, root: Path, smtp_port: int
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    raw = msgspec.to_builtins(settings_for(root))
    raw["auth"].update({"jwt_secret": SECRET, "password_cost": 4, "public_url": BASE + "/"})
    raw["mail"].update({"smtp_url": f"smtp://127.0.0.1:{smtp_port}", "sender": SENDER})
    async with serving(msgspec.convert(raw, Settings), catalog, base_url="https://test") as got:
        yield got


async def test_opt_in_over_http(
    catalog: Catalog, tmp_path: Path, smtp_server: tuple[int, Collector]
) -> None:
    port, collector = smtp_server
    async with gateway(catalog, tmp_path, port) as (http, app):
        address = {"email": "ada@example.com", "password": PASSWORD}
        assert (await http.post(f"{API}/auth/register", json=address)).status_code == 201
        r = await http.post(f"{API}/auth/login", json=address)
        token = {"authorization": f"Bearer {r.json()['access_token']}"}
        me = await http.get(f"{API}/auth/me", headers=token)
        assert me.json()["notify_ready"] is False

        r = await http.patch(f"{API}/auth/me", json={"notify_ready": True}, headers=token)
        assert r.status_code == 200, r.text
        assert r.json()["notify_ready"] is True
        assert r.json()["email"] == "ada@example.com"
        assert (await http.get(f"{API}/auth/me", headers=token)).json()["notify_ready"] is True
        r = await http.patch(f"{API}/auth/me", json={}, headers=token)  # nothing to change
        assert r.status_code == 200
        assert r.json()["notify_ready"] is True

        bads: list[object] = [{"notify_ready": "yes"}, {"notify_ready": None}, {"x": 1}, []]
        for bad in bads:
            r = await http.patch(f"{API}/auth/me", json=bad, headers=token)
            assert r.status_code == 400, (bad, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        r = await http.patch(f"{API}/auth/me", content=b"{", headers=token)
        assert r.status_code == 400
        r = await http.patch(f"{API}/auth/me", json={"notify_ready": False})
        assert r.status_code == 401

        # The gateway's pipeline announces through OwnerNotices, on the accounts' notifier.
        user_id = me.json()["id"]
        video = await catalog.create_video(user_id, NewVideo(title="Launch", privacy="public"))
        ready = await catalog.update_video(video.id, VideoChanges(status="ready"))
        assert ready is not None
        await app.state.pipeline.announcer.announce(ready, "video.ready")
        [(to, message)] = mails(collector)
        assert to == ["ada@example.com"]
        assert message["Subject"] == "Your video “Launch” is ready"
        assert f"{BASE}/v/{video.id}/master.m3u8" in body(message)
        assert "signed URL" not in body(message)  # public

        # Opted out, over a cookie session: the CSRF header is needed as for any write.
        r = await http.post(f"{API}/auth/login", json={**address, "cookie": True})
        csrf = r.json()["csrf_token"]
        r = await http.patch(f"{API}/auth/me", json={"notify_ready": False})
        assert r.status_code == 403
        r = await http.patch(
            f"{API}/auth/me", json={"notify_ready": False}, headers={"x-csrf-token": csrf}
        )
        assert r.status_code == 200
        assert r.json()["notify_ready"] is False
        other = await catalog.create_video(user_id, NewVideo(title="Sequel"))
        failed = await catalog.update_video(
            other.id, VideoChanges(status="failed", failure_reason="bad")
        )
        assert failed is not None
        await app.state.pipeline.announcer.announce(failed, "video.failed")
        assert len(collector.received) == 1

        # The same notifier sends the reset links.
        r = await http.post(f"{API}/auth/reset-request", json={"email": "ada@example.com"})
        assert r.status_code == 202
    # The app's shutdown waited for the reset email.
    assert [m["Subject"] for _, m in mails(collector)][1] == "Reset your ClipSync password"
