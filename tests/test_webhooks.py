"""Webhooks on SQLite and PostgreSQL, delivered to a real local HTTP receiver (aiohttp): the API
with ownership and validation, signatures a receiver can verify, retries with backoff, the
delivery log, refused private addresses and redirects, and one delivery per event with two
senders. The pure rules (signature, backoff, addresses, URLs) are table-tested."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import web
from sqlalchemy import func, select

from auth.tokens import AccessTokens
from backends.catalog import Catalog, NewVideo, schema
from backends.catalog import webhooks as store
from backends.errors import InvalidRequest
from conf import Settings
from conf.settings import WebhookSettings
from gateway.webhooks import (
    Webhooks,
    backoff,
    check_url,
    event_id,
    new_secret,
    public,
    sign,
    verify,
)
from tests.conftest import serving, settings_for
from tests.serving import free_port

pytestmark = pytest.mark.anyio

SECRET = "w" * 40
TOKENS = AccessTokens({"k1": SECRET.encode()}, "k1", 900)
FAST = WebhookSettings(
    allow_private=True,
    timeout=2.0,
    max_attempts=3,
    backoff_base=0.01,
    backoff_max=0.02,
    poll_interval=0.05,
)


def fast(**changes: Any) -> WebhookSettings:
    return msgspec.structs.replace(FAST, **changes)


# Pure rules ----------------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(
    ("message_id", "timestamp", "body", "header", "now", "ok"),
    [
        ("msg_1", "1000", b"{}", "SIGNED", 1000, True),
        ("msg_1", "1000", b"{}", "v1,bm9wZQ== SIGNED", 1200, True),  # one of several
        ("msg_1", "1000", b"{ }", "SIGNED", 1000, False),  # the body changed
        ("msg_2", "1000", b"{}", "SIGNED", 1000, False),  # another message's signature
        ("msg_1", "1000", b"{}", "SIGNED", 1301, False),  # too old: a replay
        ("msg_1", "1000", b"{}", "SIGNED", 699, False),  # from the future
        ("msg_1", "x", b"{}", "SIGNED", 1000, False),
        ("msg_1", "1000", b"{}", "", 1000, False),
    ],
)
def test_verify(
    message_id: str, timestamp: str, body: bytes, header: str, now: float, ok: bool
) -> None:
    secret = new_secret()
    signed = sign(secret, "msg_1", 1000, b"{}")
    assert verify(secret, message_id, timestamp, body, header.replace("SIGNED", signed), now) is ok
    assert not verify(new_secret(), "msg_1", "1000", b"{}", signed, 1000)  # another secret


def test_secrets_are_32_random_bytes_in_the_standard_form() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != new_secret()


@pytest.mark.parametrize(
    ("attempt", "rand", "seconds"),
    [
        (1, 0.0, 10.0),
        (2, 0.0, 20.0),
        (3, 0.0, 40.0),
        (3, 0.999999, 20.00002),  # jitter takes up to a half off
        (9, 0.0, 2560.0),
        (10, 0.0, 3600.0),  # capped
        (200, 0.5, 2700.0),  # no overflow
    ],
)
def test_backoff_doubles_up_to_the_cap_less_jitter(
    attempt: int, rand: float, seconds: float
) -> None:
    assert backoff(attempt, 10.0, 3600.0, rand) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast
        ("255.255.255.255", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:93.184.216.34", True),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
    ],
)
def test_public_addresses(address: str, allowed: bool) -> None:
    assert public(ipaddress.ip_address(address)) is allowed


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://hooks.example.com/clipsync", "https://hooks.example.com/clipsync"),
        ("HTTPS://Hooks.Example.com:8443/a?b=c", "https://hooks.example.com:8443/a?b=c"),
        ("http://93.184.216.34/x", "http://93.184.216.34/x"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
    ],
)
def test_urls_accepted(url: str, stored: str) -> None:
    assert check_url(url, allow_private=False) == stored


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/", "https://"),
        ("example.com/hook", "https://"),
        ("javascript:alert(1)", "https://"),
        ("https://user:pass@example.com/", "credentials"),
        ("https://token@example.com/", "credentials"),
        ("https://example.com/#x", "fragment"),
        ("https://example.com:99999/", "port"),
        ("https:///path", "host"),
        ("https://example.com/a b", "spaces"),
        ("https://example.com/\x00", "control"),
        ("https://example.com/" + "a" * 2048, "2048"),
        ("http://127.0.0.1/", "private"),
        ("http://2130706433/", "private"),  # 127.0.0.1 as one number
        ("http://0x7f.1/", "private"),
        ("http://[::1]:8080/", "private"),
        ("http://localhost/", "private"),
        ("http://api.localhost./", "private"),
        ("http://169.254.169.254/latest/meta-data", "private"),
        ("http://10.0.0.7/", "private"),
    ],
)
def test_urls_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        check_url(url, allow_private=False)


def test_private_urls_pass_when_allowed() -> None:
    assert check_url("http://127.0.0.1:9000/h", allow_private=True) == "http://127.0.0.1:9000/h"
    assert check_url("http://localhost/h", allow_private=True) == "http://localhost/h"


def test_event_ids_repeat_only_for_the_same_key_and_owner() -> None:
    assert event_id("u1", "video.ready:v1") == event_id("u1", "video.ready:v1")
    assert event_id("u1", "video.ready:v1") != event_id("u2", "video.ready:v1")
    assert event_id("u1", None) != event_id("u1", None)
    assert len(event_id("u1", "k")) <= 32


# A real receiver -----------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    base: str = ""
    received: list[Received] = field(default_factory=list)
    answers: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses, then 200
    delay: float = 0.0

    def url(self, path: str = "/hook") -> str:
        return self.base + path

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.received.append(Received(request.path, headers, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path == "/redirect":
            return web.Response(status=302, headers={"location": "/elsewhere"})
        script = self.answers.get(request.path)
        return web.Response(status=script.pop(0) if script else 200, text="thanks")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield got
    await runner.cleanup()


@pytest.fixture
async def senders(catalog: Catalog) -> AsyncIterator[list[Webhooks]]:
    """Webhooks objects to build in a test; all closed at the end."""
    made: list[Webhooks] = []
    yield made
    for hooks in made:
        await hooks.close()


def sender(made: list[Webhooks], catalog: Catalog, settings: WebhookSettings = FAST) -> Webhooks:
    hooks = Webhooks(catalog, settings)
    made.append(hooks)
    return hooks


async def new_hook(catalog: Catalog, url: str, events: list[str] | None = None) -> store.Webhook:
    user = await catalog.create_user(f"{time.monotonic_ns()}@example.com")
    events = events or ["video.playable", "video.ready", "video.failed"]
    return await store.create(catalog, user.id, url, events, new_secret(), 10)


async def drain(hooks: Webhooks, catalog: Catalog, hook_id: str) -> list[store.Delivery]:
    """Attempt deliveries until none of the endpoint's is pending; its log."""
    deadline = time.monotonic() + 10
    while True:
        log, _ = await store.log(catalog, hook_id, 100)
        if all(d.status != "pending" for d in log):
            return log
        assert time.monotonic() < deadline, log
        if not await hooks.deliver_due():
            await asyncio.sleep(0.005)


# Delivery ------------------------------------------------------------------------------------


async def test_an_event_arrives_signed(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    hook = await new_hook(catalog, receiver.url())
    others = await new_hook(catalog, receiver.url("/failures"), ["video.failed"])
    hooks = sender(senders, catalog)
    data = {"id": "v1", "title": "Holiday", "status": "ready"}
    await hooks.emit(hook.user_id, "video.ready", data)
    await hooks.emit(others.user_id, "video.ready", data)  # not subscribed: nothing queued
    [delivery] = await drain(hooks, catalog, hook.id)
    assert await store.log(catalog, others.id, 10) == ([], None)

    [got] = receiver.received
    assert got.path == "/hook"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "ClipSync-Webhooks/1"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 10
    assert got.headers["webhook-id"] == delivery.event_id
    # What a receiver does, with nothing of ours: HMAC-SHA256 of "id.timestamp.body".
    key = base64.b64decode(hook.secret.removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert got.headers["webhook-signature"] == f"v1,{expected}"
    body = msgspec.json.decode(got.body)
    assert body["id"] == delivery.event_id
    assert body["type"] == "video.ready"
    assert body["data"] == data
    assert body["created"].endswith("Z")

    assert delivery.status == "delivered"
    assert (delivery.attempts, delivery.last_status, delivery.last_error) == (1, 200, None)
    assert delivery.delivered_at is not None
    assert delivery.next_attempt_at is None


async def test_one_event_announced_twice_is_delivered_once(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    hook = await new_hook(catalog, receiver.url())
    hooks = sender(senders, catalog)
    for _ in range(2):  # a job delivered twice announces twice
        await hooks.emit(hook.user_id, "video.ready", {"id": "v1"}, key="video.ready:v1")
    await hooks.emit(hook.user_id, "video.ready", {"id": "v2"}, key="video.ready:v2")
    log = await drain(hooks, catalog, hook.id)
    assert len(log) == 2
    assert len(receiver.received) == 2


async def test_retried_with_backoff_until_delivered(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    """The sender loop itself: woken by emit, then back for each retry it scheduled."""
    receiver.answers["/hook"] = [500, 503]
    hook = await new_hook(catalog, receiver.url())
    hooks = sender(senders, catalog, fast(max_attempts=5, poll_interval=30.0))
    stop = asyncio.Event()
    loop = asyncio.create_task(hooks.run(stop))
    await asyncio.sleep(0.05)  # the loop is waiting: a long poll interval, nothing due
    await hooks.emit(hook.user_id, "video.playable", {"id": "v1"})
    deadline = time.monotonic() + 5
    while (await store.log(catalog, hook.id, 1))[0][0].status == "pending":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(loop, 2)

    [delivery] = (await store.log(catalog, hook.id, 10))[0]
    assert delivery.status == "delivered"
    assert (delivery.attempts, delivery.last_status) == (3, 200)
    assert [r.path for r in receiver.received] == ["/hook"] * 3
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1  # one message
    assert len({r.body for r in receiver.received}) == 1


async def test_an_endpoint_that_is_down_fails_after_the_last_attempt(
    catalog: Catalog, senders: list[Webhooks]
) -> None:
    hook = await new_hook(catalog, f"http://127.0.0.1:{free_port()}/hook")
    hooks = sender(senders, catalog, fast(max_attempts=3))
    await hooks.emit(hook.user_id, "video.failed", {"id": "v1"})
    [delivery] = await drain(hooks, catalog, hook.id)
    assert delivery.status == "failed"
    assert delivery.attempts == 3
    assert delivery.last_status is None
    assert delivery.last_error is not None
    assert "ConnectError" in delivery.last_error
    assert delivery.next_attempt_at is None


async def test_a_slow_endpoint_times_out(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    receiver.delay = 0.3
    hook = await new_hook(catalog, receiver.url())
    hooks = sender(senders, catalog, fast(max_attempts=1, timeout=0.1))
    await hooks.emit(hook.user_id, "video.ready", {"id": "v1"})
    [delivery] = await drain(hooks, catalog, hook.id)
    assert (delivery.status, delivery.last_error) == ("failed", "no answer within 0.1 s")


async def test_private_addresses_are_refused_unless_allowed(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    port = receiver.base.rsplit(":", 1)[1]
    for url in (receiver.url(), f"http://localhost:{port}/hook"):
        hook = await new_hook(catalog, url)  # stored earlier, or a name that moved
        strict = sender(senders, catalog, fast(allow_private=False, max_attempts=1))
        await strict.emit(hook.user_id, "video.ready", {"id": "v1"})
        [delivery] = await drain(strict, catalog, hook.id)
        assert delivery.status == "failed"
        assert delivery.last_error is not None
        assert delivery.last_error.startswith("refused:")
        assert "not a public address" in delivery.last_error
    assert receiver.received == []

    hook = await new_hook(catalog, f"http://localhost:{port}/hook")  # resolved, then connected
    allowed = sender(senders, catalog, fast(allow_private=True))
    await allowed.emit(hook.user_id, "video.ready", {"id": "v1"})
    [delivery] = await drain(allowed, catalog, hook.id)
    assert delivery.status == "delivered"
    assert receiver.received[0].headers["host"] == f"localhost:{port}"


async def test_redirects_are_not_followed(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    hook = await new_hook(catalog, receiver.url("/redirect"))
    hooks = sender(senders, catalog, fast(max_attempts=2))
    await hooks.emit(hook.user_id, "video.ready", {"id": "v1"})
    [delivery] = await drain(hooks, catalog, hook.id)
    assert (delivery.status, delivery.attempts, delivery.last_status) == ("failed", 2, 302)
    assert delivery.last_error is not None
    assert "not followed" in delivery.last_error
    assert [r.path for r in receiver.received] == ["/redirect", "/redirect"]


async def test_two_senders_deliver_each_event_once(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    receiver.delay = 0.01  # attempts overlap
    hooks_a = sender(senders, catalog, fast(concurrency=4))
    hooks_b = sender(senders, catalog, fast(concurrency=4))
    endpoints = [await new_hook(catalog, receiver.url(f"/hook{n}")) for n in range(3)]
    for n in range(10):
        for hook in endpoints:
            await hooks_a.emit(hook.user_id, "video.ready", {"n": n})

    async def work(hooks: Webhooks) -> int:
        done = 0
        while await store.due(catalog, 1):
            done += await hooks.deliver_due()
        return done

    counts = await asyncio.gather(work(hooks_a), work(hooks_b))
    assert sum(counts) == 30
    assert all(counts)  # both took part
    ids = [(r.path, r.headers["webhook-id"]) for r in receiver.received]
    assert len(ids) == len(set(ids)) == 30
    for hook in endpoints:
        log, _ = await store.log(catalog, hook.id, 100)
        assert [(d.status, d.attempts) for d in log] == [("delivered", 1)] * 10


async def test_a_lost_attempt_is_made_again_after_its_lease(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    hook = await new_hook(catalog, receiver.url())
    hooks = sender(senders, catalog)
    await hooks.emit(hook.user_id, "video.ready", {"id": "v1"})
    [delivery_id] = await store.due(catalog, 10)
    assert await store.claim(catalog, delivery_id, "a-sender-that-dies", lease=0.2) is not None
    assert await hooks.deliver_due() == 0  # held
    await asyncio.sleep(0.25)
    [delivery] = await drain(hooks, catalog, hook.id)
    assert (delivery.status, delivery.attempts) == ("delivered", 2)
    assert not await store.settle(catalog, delivery_id, "a-sender-that-dies", "failed", None, "x")


async def test_deleting_an_endpoint_drops_its_pending_deliveries(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    hook = await new_hook(catalog, receiver.url())
    hooks = sender(senders, catalog)
    await hooks.emit(hook.user_id, "video.ready", {"id": "v1"})
    assert await store.remove(catalog, hook.id)
    d = schema.webhook_deliveries
    async with catalog.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(d))).scalar_one() == 0
    assert await hooks.deliver_due() == 0
    await hooks.emit(hook.user_id, "video.ready", {"id": "v2"})  # no endpoint left: nothing
    assert receiver.received == []


async def test_a_video_is_announced_once_per_event(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    hook = await new_hook(catalog, receiver.url())
    video = await catalog.create_video(hook.user_id, NewVideo(title="Holiday", privacy="private"))
    hooks = sender(senders, catalog)
    for _ in range(2):  # the pipeline's job ran twice
        await hooks.announce(video, "video.ready")
    await hooks.announce(video, "video.failed")
    await hooks.announce(video, "video.deleted")  # not an event: logged, never raised
    log = await drain(hooks, catalog, hook.id)
    assert sorted(d.event for d in log) == ["video.failed", "video.ready"]
    data = msgspec.json.decode(receiver.received[0].body)["data"]
    assert (data["id"], data["title"], data["owner_id"]) == (video.id, "Holiday", hook.user_id)
    assert data["playback_url"] == f"/v/{video.id}/master.m3u8"
    with pytest.raises(ValueError, match="unknown webhook event"):
        await hooks.emit(hook.user_id, "video.deleted", {})


async def test_closing_lets_an_attempt_under_way_finish(
    catalog: Catalog, receiver: Receiver
) -> None:
    receiver.delay = 0.2
    hook = await new_hook(catalog, receiver.url())
    hooks = Webhooks(catalog, FAST)
    await hooks.emit(hook.user_id, "video.ready", {"id": "v1"})
    sending = asyncio.create_task(hooks.deliver_due())
    await asyncio.sleep(0.1)
    sending.cancel()  # the loop goes first at shutdown...
    await hooks.close(grace=2.0)  # ...the attempt it started still ends and is recorded
    [delivery] = (await store.log(catalog, hook.id, 10))[0]
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert await hooks.deliver_due() == 0  # closed


async def test_old_finished_deliveries_are_forgotten(
    catalog: Catalog, receiver: Receiver, senders: list[Webhooks]
) -> None:
    hook = await new_hook(catalog, receiver.url())
    hooks = sender(senders, catalog)
    await hooks.emit(hook.user_id, "video.ready", {"id": "v1"})
    await drain(hooks, catalog, hook.id)
    await hooks.emit(hook.user_id, "video.failed", {"id": "v2"})  # still pending
    assert await store.prune(catalog, older_than=3600) == 0
    assert await store.prune(catalog, older_than=0) == 1
    log, _ = await store.log(catalog, hook.id, 10)
    assert [(d.event, d.status) for d in log] == [("video.failed", "pending")]


# The API -------------------------------------------------------------------------------------


@dataclass
class Api:
    http: httpx.AsyncClient
    catalog: Catalog
    hooks: Webhooks

    async def user(self, email: str, role: str = "user") -> dict[str, str]:
        user = await self.catalog.create_user(email, role=role)  # type: ignore[arg-type]
        return {"authorization": f"Bearer {TOKENS.issue(user.id, user.role)}"}

    async def create(self, who: dict[str, str], **body: Any) -> httpx.Response:
        return await self.http.post("/api/v1/webhooks", json=body, headers=who)


def api_settings(root: Path, **webhooks: Any) -> Settings:
    raw = msgspec.to_builtins(settings_for(root))
    raw["auth"]["jwt_secret"] = SECRET
    raw["webhooks"].update(webhooks)
    return msgspec.convert(raw, Settings)


@pytest.fixture
async def api(catalog: Catalog, tmp_path: Path) -> AsyncIterator[Api]:
    settings = api_settings(tmp_path, allow_private=True, max_per_user=3, backoff_base=0.01)
    async with serving(settings, catalog) as (http, app):
        yield Api(http, catalog, app.state.webhooks)


def problem(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert words in r.json()["detail"]


async def test_webhooks_belong_to_their_owner(api: Api, receiver: Receiver) -> None:
    ann = await api.user("ann@example.com")
    bob = await api.user("bob@example.com")
    admin = await api.user("root@example.com", "admin")

    r = await api.create(ann, url=receiver.url())
    assert r.status_code == 201, r.text
    created = r.json()
    hook_id = created["id"]
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["video.playable", "video.ready", "video.failed"]
    assert r.headers["location"] == f"/api/v1/webhooks/{hook_id}"
    r = await api.create(ann, url=receiver.url("/b"), events=["video.failed", "video.failed"])
    assert r.json()["events"] == ["video.failed"]

    listed = (await api.http.get("/api/v1/webhooks", headers=ann)).json()["items"]
    assert {h["id"] for h in listed} == {hook_id, r.json()["id"]}
    assert all("secret" not in h for h in listed)
    one = await api.http.get(f"/api/v1/webhooks/{hook_id}", headers=ann)
    assert one.status_code == 200
    assert "secret" not in one.json()
    assert (await api.http.get("/api/v1/webhooks", headers=bob)).json()["items"] == []

    base = f"/api/v1/webhooks/{hook_id}"
    for method, path in [
        ("GET", base),
        ("DELETE", base),
        ("GET", f"{base}/deliveries"),
        ("POST", f"{base}/test"),
    ]:
        problem(await api.http.request(method, path, headers=bob), 404, "no such webhook")
    r = await api.http.get("/api/v1/webhooks", params={"user_id": created["user_id"]}, headers=bob)
    problem(r, 403, "admin")
    problem(await api.http.get("/api/v1/webhooks"), 401, "sign in")

    r = await api.http.get(
        "/api/v1/webhooks", params={"user_id": created["user_id"]}, headers=admin
    )
    assert len(r.json()["items"]) == 2
    assert (await api.http.get(base, headers=admin)).status_code == 200
    assert (await api.http.delete(base, headers=admin)).status_code == 204
    problem(await api.http.get(base, headers=ann), 404, "no such webhook")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"url": "ftp://example.com/"}, "https://"),
        ({"url": "https://me:secret@example.com/"}, "credentials"),
        ({"url": "https://example.com/", "events": ["video.deleted"]}, "events"),
        ({"url": "https://example.com/", "events": []}, "events"),
        ({"url": "https://example.com/", "colour": "red"}, "colour"),
        ({"url": "https://example.com/" + "x" * 2100}, "url"),
        ({"events": ["video.ready"]}, "url"),
    ],
)
async def test_bad_webhooks_are_refused(api: Api, body: dict[str, Any], words: str) -> None:
    ann = await api.user("ann@example.com")
    problem(await api.create(ann, **body), 400, words)
    assert (await api.http.get("/api/v1/webhooks", headers=ann)).json()["items"] == []


async def test_a_user_has_a_limited_number_of_webhooks(api: Api) -> None:
    ann = await api.user("ann@example.com")
    for n in range(3):
        assert (await api.create(ann, url=f"https://example.com/{n}")).status_code == 201
    problem(await api.create(ann, url="https://example.com/4"), 400, "at most 3 webhooks")


async def test_private_addresses_are_refused_by_default(catalog: Catalog, tmp_path: Path) -> None:
    async with serving(api_settings(tmp_path), catalog) as (http, app):
        api = Api(http, catalog, app.state.webhooks)
        ann = await api.user("ann@example.com")
        problem(await api.create(ann, url="http://127.0.0.1:8080/"), 400, "private address")
        problem(await api.create(ann, url="http://localhost/"), 400, "private address")
        assert (await api.create(ann, url="https://example.com/")).status_code == 201


async def test_ping_and_the_delivery_log(api: Api, receiver: Receiver) -> None:
    ann = await api.user("ann@example.com")
    receiver.answers["/hook"] = [500]
    hook_id = (await api.create(ann, url=receiver.url(), events=["video.ready"])).json()["id"]
    base = f"/api/v1/webhooks/{hook_id}"
    pings = []
    for _ in range(3):
        r = await api.http.post(f"{base}/test", headers=ann)
        assert r.status_code == 202, r.text
        assert (r.json()["event"], r.json()["status"], r.json()["attempts"]) == (
            "ping",
            "pending",
            0,
        )
        pings.append(r.json()["id"])
    await drain(api.hooks, api.catalog, hook_id)
    assert {msgspec.json.decode(r.body)["type"] for r in receiver.received} == {"ping"}

    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await api.http.get(f"{base}/deliveries", params=params, headers=ann)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [d["id"] for d in seen] == pings[::-1]  # newest first
    assert all(d["status"] == "delivered" for d in seen)
    assert sorted(d["attempts"] for d in seen) == [1, 1, 2]  # one got a 500 first
    assert all(d["last_status"] == 200 and d["delivered_at"] for d in seen)

    r = await api.http.get(f"{base}/deliveries", params={"status": "failed"}, headers=ann)
    assert r.json() == {"items": [], "next_cursor": None}
    problem(
        await api.http.get(f"{base}/deliveries", params={"status": "lost"}, headers=ann),
        400,
        "status",
    )
    problem(
        await api.http.get(f"{base}/deliveries", params={"cursor": "nope"}, headers=ann),
        400,
        "cursor",
    )


async def test_the_document_lists_the_webhook_endpoints(api: Api) -> None:
    doc = (await api.http.get("/api/v1/openapi.json")).json()
    assert {"post", "get"} <= set(doc["paths"]["/api/v1/webhooks"])
    assert {"get", "delete"} <= set(doc["paths"]["/api/v1/webhooks/{webhook_id}"])
    assert "get" in doc["paths"]["/api/v1/webhooks/{webhook_id}/deliveries"]
    assert "post" in doc["paths"]["/api/v1/webhooks/{webhook_id}/test"]
    assert "secret" in doc["components"]["schemas"]["WebhookCreated"]["properties"]
    assert "secret" not in doc["components"]["schemas"]["WebhookOut"]["properties"]
