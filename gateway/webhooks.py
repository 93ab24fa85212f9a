"""Webhooks: queue an event for a user's endpoints, and send what is due, signed, with retries.

``Webhooks.emit`` needs only the catalog (the worker process has no HTTP app): it writes one
delivery row per subscribed endpoint and wakes this process's sender. ``Webhooks.run`` is the
sender loop, run by every gateway process and every ``clipsync worker``; rows are claimed with
a lease in the catalog (``backends.catalog.webhooks``), so each attempt is made by one of them.

Requests follow the Standard Webhooks specification (https://www.standardwebhooks.com/):
``webhook-id`` (the event's id, the same on every attempt and for a repeated event),
``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">``, keyed by the base64 part of the
``whsec_…`` secret). A 2xx answer delivers; anything else, a timeout or no connection is tried
again after an exponential, jittered backoff, until ``webhooks.max_attempts``. Redirects are
not followed. Endpoints on loopback, private, link-local and other non-public addresses are
refused unless ``webhooks.allow_private``: checked on every address the name resolves to when
connecting, and the connection goes to one of the addresses checked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import hmac
import ipaddress
import logging
import os
import random
import re
import secrets
import socket
import time
from collections.abc import Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

import httpcore
import httpx
import msgspec
from sqlalchemy.exc import SQLAlchemyError

from backends.catalog import Catalog
from backends.catalog import webhooks as store
from backends.catalog.records import Video, new_id
from backends.errors import ClipSyncError, InvalidRequest, NotFound
from conf.settings import WebhookSettings

log = logging.getLogger("clipsync.webhooks")

EventName = Literal["video.playable", "video.ready", "video.failed"]
EVENTS: Final[tuple[EventName, ...]] = get_args(EventName)
PING: Final = "ping"  # sent by POST /api/v1/webhooks/{id}/test, whatever the endpoint's events
USER_AGENT: Final = "ClipSync-Webhooks/1"
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the spec's prefix, not a secret
MAX_URL: Final = 2048
LEASE_MARGIN = 60.0  # seconds a claimed attempt is held beyond webhooks.timeout
PRUNE_EVERY = 3600.0  # seconds between sweeps of old finished deliveries (each process)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


# Signing -------------------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of ``body``: ``v1,`` + base64 HMAC-SHA256."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()


def verify(
    secret: str,
    message_id: str,
    timestamp: str,
    body: bytes,
    signatures: str,
    now: float,
    tolerance: float = 300.0,
) -> bool:
    """What a receiver checks: a recent timestamp, and one of the space-separated signatures
    equal (in constant time) to ours."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, message_id, int(timestamp), body)
    return any(hmac.compare_digest(expected, given) for given in signatures.split())


def event_id(owner_id: str, key: str | None) -> str:
    """The ``webhook-id`` of an event: random, or derived from ``key`` so that announcing the
    same thing twice (a job delivered twice) is one event, queued once per endpoint."""
    if key is None:
        return "msg_" + new_id()
    digest = hashlib.sha256(f"{owner_id}\n{key}".encode()).digest()[:18]
    return "msg_" + base64.urlsafe_b64encode(digest).decode()


# Retries -------------------------------------------------------------------------------------


def backoff(attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (from 1): ``base`` doubled each
    time up to ``cap``, less up to a half of it by ``rand`` (in [0, 1)) so that endpoints that
    failed together are not retried in lockstep."""
    full = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return full * (1.0 - rand / 2.0)


# Addresses -----------------------------------------------------------------------------------


def public(address: IPAddress) -> bool:
    """Whether webhooks may connect to ``address`` by default: a globally routed unicast
    address, looking through IPv4-mapped and NAT64 forms at the IPv4 address inside."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.is_global and not address.is_multicast


_LEGACY_IPV4 = re.compile(r"[0-9a-fA-Fx.]+")  # 2130706433, 0x7f.1, 127.1: inet_aton forms


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names without DNS (any form a resolver would take), else None."""
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def check_url(raw: str, allow_private: bool) -> str:
    """The endpoint URL as it will be called, or InvalidRequest saying what is wrong with it.
    Names are not resolved here: delivery checks the addresses each time it connects."""
    if len(raw) > MAX_URL:
        raise InvalidRequest(f"url may be at most {MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in raw):
        raise InvalidRequest("url may not contain spaces or control characters")
    try:
        url = httpx.URL(raw)
        port = url.port
    except (httpx.InvalidURL, ValueError):
        raise InvalidRequest("url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not raw.lower().startswith(url.scheme + "://"):
        raise InvalidRequest("url must start with https:// or http://")
    if not url.host:
        raise InvalidRequest("url needs a host")
    if url.userinfo:
        raise InvalidRequest("url may not carry credentials (user:password@): verify signatures")
    if url.fragment:
        raise InvalidRequest("url may not have a #fragment")
    if port is not None and not 1 <= port <= 65_535:
        raise InvalidRequest("url has a port out of range")
    host = url.host.lower().rstrip(".")
    address = literal_address(host)
    local = host == "localhost" or host.endswith(".localhost")
    if not allow_private and (local or (address is not None and not public(address))):
        raise InvalidRequest("url points at a loopback or private address (webhooks.allow_private)")
    return str(url)


class AddressRefused(Exception):
    """The endpoint's name resolves to an address webhooks may not reach."""


async def resolve(host: str, port: int) -> list[tuple[str, IPAddress]]:
    """Each address ``host`` resolves to, in the resolver's order: as connected to, and as
    checked (without an IPv6 zone)."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    seen: dict[str, IPAddress] = {}
    for _family, _type, _proto, _name, sockaddr in found:
        text = str(sockaddr[0])
        seen.setdefault(text, ipaddress.ip_address(text.split("%")[0]))
    return list(seen.items())


class GuardedNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's connections, made only to addresses webhooks may reach. The name is resolved
    here and the connection goes to an address just checked, so a second lookup cannot answer
    differently (DNS rebinding); TLS still verifies the certificate against the name."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        if not self.allow_private:
            for _, address in addresses:
                if not public(address):
                    raise AddressRefused(
                        f"refused: {host} resolves to {address}, not a public address "
                        "(webhooks.allow_private)"
                    )
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for text, _ in addresses:  # the next address when one does not answer
            try:
                return await self.inner.connect_tcp(
                    text, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("refused: unix sockets are not webhook endpoints")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over ``GuardedNetwork``, with no proxy from the environment."""

    def __init__(self, network: GuardedNetwork, connections: int) -> None:
        super().__init__(trust_env=False)
        # httpx takes no network backend: its pool is replaced by one with ours (same options).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=30.0,
            network_backend=network,
        )


# Payloads ------------------------------------------------------------------------------------


class Event(msgspec.Struct, kw_only=True):
    """The body of every delivery."""

    id: str  # also the webhook-id header
    type: str
    created: datetime
    data: dict[str, Any]


def video_data(video: Video) -> dict[str, Any]:
    """What ``video.*`` events say about the video (the owner's own view of it)."""
    return {
        "id": video.id,
        "owner_id": video.owner_id,
        "title": video.title,
        "privacy": video.privacy,
        "status": video.status,
        "failure_reason": video.failure_reason,
        "duration": video.duration_ms / 1000 if video.duration_ms is not None else None,
        "width": video.width,
        "height": video.height,
        "renditions": [
            {"name": r.name, "bandwidth": r.bandwidth, "width": r.width, "height": r.height}
            for r in video.renditions
        ],
        "playback_url": f"/v/{video.id}/master.m3u8",
        "updated_at": video.updated_at,
    }


def _sender_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


class Webhooks:
    def __init__(self, catalog: Catalog, settings: WebhookSettings) -> None:
        self.catalog = catalog
        self.settings = settings
        self.sender = _sender_name()  # names this process on the rows it holds
        self.lease = settings.timeout + LEASE_MARGIN
        self._wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._closing = False
        self._retries: list[float] = []  # heap: loop times of the retries this process set
        self._pruned_at: float | None = None

    # Queueing --------------------------------------------------------------------------------

    async def emit(
        self, owner_id: str, event: str, data: dict[str, Any], key: str | None = None
    ) -> None:
        """Queue ``event`` for each endpoint of ``owner_id`` subscribed to it, and send it
        soon. ``key`` names what happened (e.g. ``"video.ready:{video id}"``): an event
        emitted again with the same key is not queued again."""
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        targets = [h.id for h in await store.owned(self.catalog, owner_id) if event in h.events]
        if targets:
            await self._queue(targets, event, event_id(owner_id, key), data)

    async def announce(self, video: Video, event: str) -> None:
        """``emit`` for a video's status change, once per video and event. Never raises:
        the pipeline that calls it must not fail because a notice could not be queued."""
        try:
            await self.emit(video.owner_id, event, video_data(video), f"{event}:{video.id}")
        except Exception:
            log.exception("webhook %s of video %s could not be queued", event, video.id)

    async def ping(self, hook: store.Webhook) -> store.Delivery:
        """Queue a ``ping`` to one endpoint (its owner testing it)."""
        queued = await self._queue(
            [hook.id], PING, event_id(hook.user_id, None), {"webhook_id": hook.id}
        )
        delivery = await store.get_delivery(self.catalog, queued[0]) if queued else None
        if delivery is None:
            raise NotFound("no such webhook")
        return delivery

    async def _queue(
        self, targets: list[str], event: str, message_id: str, data: dict[str, Any]
    ) -> list[str]:
        body = Event(id=message_id, type=event, created=datetime.now(UTC), data=data)
        payload = msgspec.json.encode(body).decode()
        queued = await store.enqueue(self.catalog, targets, event, message_id, payload)
        self._wake.set()
        return queued

    # Sending ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Send due deliveries until ``stop`` is set or the task is cancelled: those this
        process queued at once, the others' within ``webhooks.poll_interval``."""
        stop = stop or asyncio.Event()
        while not stop.is_set() and not self._closing:
            self._wake.clear()
            now = asyncio.get_running_loop().time()
            while self._retries and self._retries[0] <= now:  # due: this round sends them
                heapq.heappop(self._retries)
            try:
                sent = await self.deliver_due()
                await self._prune()
            except (SQLAlchemyError, OSError, ClipSyncError) as exc:
                log.warning("webhook deliveries: the catalog cannot answer (%s)", exc)
                sent = 0
            if not sent:
                await self._pause(stop)

    async def deliver_due(self) -> int:
        """Claim due deliveries (up to ``webhooks.concurrency``), make one attempt at each, at
        once, and record how each went; the number attempted."""
        if self._closing:
            return 0
        room = self.settings.concurrency
        held = []
        for delivery_id in await store.due(self.catalog, room * 2):  # others may win some
            claimed = await store.claim(self.catalog, delivery_id, self.sender, self.lease)
            if claimed is not None:
                held.append(claimed)
                if len(held) == room:
                    break
        if held:
            # Waited for, not gathered: cancelling this caller leaves the attempts to close().
            await asyncio.wait([self._spawn(self._attempt(h)) for h in held])
        return len(held)

    async def close(self, grace: float = 5.0) -> None:
        """Stop sending: attempts under way get ``grace`` seconds, then are cancelled (their
        deliveries are attempted again once their lease ends)."""
        self._closing = True
        self._wake.set()
        if self._sending:
            _, late = await asyncio.wait(set(self._sending), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _spawn(self, attempt: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(attempt)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return task

    async def _attempt(self, held: store.Claimed) -> None:
        delivery = held.delivery
        settings = self.settings
        try:
            if delivery.attempts > settings.max_attempts:
                await self._settle(delivery, "failed", None, "its last attempt was never recorded")
                return
            status, error = await self._post(held)
            if status is not None and 200 <= status < 300:
                await self._settle(delivery, "delivered", status, None)
            elif delivery.attempts >= settings.max_attempts:
                await self._settle(delivery, "failed", status, error)
            else:
                delay = backoff(
                    delivery.attempts, settings.backoff_base, settings.backoff_max, random.random()
                )
                retry_at = datetime.now(UTC) + timedelta(seconds=delay)
                await self._settle(delivery, "pending", status, error, retry_at)
                heapq.heappush(self._retries, asyncio.get_running_loop().time() + delay)
        except (SQLAlchemyError, OSError, ClipSyncError) as exc:
            # Unrecorded: the delivery is attempted again when its lease ends.
            log.warning("webhook delivery %s: could not record the attempt: %s", delivery.id, exc)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)

    async def _settle(
        self,
        delivery: store.Delivery,
        status: store.DeliveryStatus,
        http_status: int | None,
        error: str | None,
        retry_at: datetime | None = None,
    ) -> None:
        await store.settle(
            self.catalog, delivery.id, self.sender, status, http_status, error, retry_at
        )

    async def _post(self, held: store.Claimed) -> tuple[int | None, str | None]:
        """One POST of the delivery: the HTTP status, or None, and what went wrong."""
        body = held.payload.encode()
        message_id = held.delivery.event_id
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(held.secret, message_id, timestamp, body),
        }
        timeout = self.settings.timeout
        try:
            async with asyncio.timeout(timeout):  # DNS and a slow trickle of bytes included
                # Streamed and closed unread: an endpoint's answer body is not our concern.
                async with self._http().stream(
                    "POST", held.url, content=body, headers=headers
                ) as response:
                    status, location = response.status_code, response.headers.get("location")
        except AddressRefused as exc:
            return None, str(exc)
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return None, f"{type(exc).__name__}: {exc}".removesuffix(": ")
        if 300 <= status < 400:
            return status, f"redirect to {location} not followed: configure the final URL"
        if not 200 <= status < 300:
            return status, f"HTTP {status}"
        return status, None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            network = GuardedNetwork(self.settings.allow_private)
            self._client = httpx.AsyncClient(
                transport=GuardedTransport(network, self.settings.concurrency),
                timeout=httpx.Timeout(self.settings.timeout),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def _pause(self, stop: asyncio.Event) -> None:
        """Until woken (a delivery queued here), stopped, a retry of ours is due, or the poll
        interval has passed."""
        delay = self.settings.poll_interval
        if self._retries:
            delay = min(delay, max(0.0, self._retries[0] - asyncio.get_running_loop().time()))
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _prune(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        await store.prune(self.catalog, self.settings.keep_days * 86_400)
