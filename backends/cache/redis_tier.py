"""The shared tier: Redis through redis-py's asyncio client (standalone, TLS, Sentinel, Cluster).

Redis is an optimisation, never a dependency of a response: every call here has a short timeout,
failures are counted and logged at most once per interval, and a circuit breaker stops calls to a
Redis that is down or hung until a probe finds it back. A failed call answers ``UNAVAILABLE``
and the caller carries on from origin. redis-py's own retries are off: a retry would only make a
request wait longer for a cache.

Keys live under one prefix. Each value is also recorded in a set per purge tag, so a purge by
path finds every key of it without scanning the keyspace; purges are published to the other
replicas, which drop their in-process copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec
from prometheus_client import Histogram
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from backends.cache.breaker import CircuitBreaker
from backends.throttle import ThrottledLog

T = TypeVar("T")
log = logging.getLogger("clipsync.cache")


class _Unavailable:
    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = _Unavailable()

Mode = Literal["standalone", "sentinel", "cluster"]


class RedisURLError(ValueError):
    """A Redis URL this gateway cannot use; the message says what is wrong (never the password)."""


@dataclass(frozen=True)
class RedisTarget:
    mode: Mode
    url: str  # standalone/cluster: a URL redis-py parses; sentinel: unused
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_url(url: str) -> RedisTarget:
    """``redis://``, ``rediss://`` (TLS), ``unix://``: one server; ``redis+cluster://host:port``
    (or ``rediss+cluster://``): a cluster, any node as the seed;
    ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` (or
    ``rediss+sentinel://``): the master of ``service`` as the sentinels report it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        if scheme != "unix" and not parts.hostname:
            raise RedisURLError(f"Redis URL {display(url)} names no host")
        return RedisTarget("standalone", url, tls=scheme == "rediss")
    base, _, mode = scheme.partition("+")
    if base not in ("redis", "rediss") or mode not in ("cluster", "sentinel"):
        raise RedisURLError(
            f"unsupported Redis URL scheme {parts.scheme!r}: use redis://, rediss://, unix://, "
            "redis+cluster:// or redis+sentinel://"
        )
    if mode == "cluster":
        if not parts.hostname:
            raise RedisURLError(f"Redis cluster URL {display(url)} names no seed node")
        return RedisTarget("cluster", urlunsplit((base, *parts[1:])), tls=base == "rediss")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise RedisURLError(f"sentinel address {item!r} in {display(url)} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise RedisURLError(
            f"Redis sentinel URL {display(url)} must end in /service-name or /service-name/db"
        )
    return RedisTarget(
        "sentinel",
        "",
        tuple(sentinels),
        unquote(path[0]),
        int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None,
        unquote(password) or None,
        tls=base == "rediss",
    )


def display(url: str) -> str:
    """A Redis URL fit for logs and messages: any password replaced."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hosts}" if user else f"***@{hosts}", *parts[2:]))


# Segments of several MB come back in one reply. With asyncio's default stream limit (64 KB) the
# transport pauses and resumes reading (two epoll_ctl calls) every ~128 KB, and redis-py's 32 KB
# reads feed hiredis ~120 times per segment; a 1 MB limit and 1 MB reads cut that to a few
# rounds (bench/README.md, "Cache tiers": 15-20% less CPU per 3.9 MB GET).
READ_BUFFER = 1 << 20


class _WideReads:
    """A connection whose stream reader buffers up to ``READ_BUFFER`` before pausing."""

    def _connection_arguments(self) -> Any:
        return {**super()._connection_arguments(), "limit": READ_BUFFER}  # type: ignore[misc]


class WideConnection(_WideReads, Connection):
    pass


class WideSSLConnection(_WideReads, SSLConnection):
    pass


_WIDE: dict[type, type] = {Connection: WideConnection, SSLConnection: WideSSLConnection}


def connect(target: RedisTarget, timeout: float, max_connections: int) -> Any:
    """A redis-py asyncio client (``Redis`` or ``RedisCluster``): the ``Any`` stays here."""
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_read_size": READ_BUFFER,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }
    if target.mode == "cluster":
        return RedisCluster.from_url(target.url, max_connections=max_connections, **common)
    if target.mode == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        )
        return sentinel.master_for(
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.tls,
            max_connections=max_connections,
            **common,
        )
    pool = BlockingConnectionPool.from_url(
        target.url, max_connections=max_connections, timeout=timeout, **common
    )
    # The URL chose TCP, TLS or a Unix socket; TCP and TLS get the wide reader.
    pool.connection_class = _WIDE.get(pool.connection_class, pool.connection_class)
    return Redis.from_pool(pool)


def _classify(exc: BaseException) -> tuple[str, bool]:
    """(error class for metrics and logs, whether it means Redis is unreachable)."""
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "timeout", True
    if isinstance(exc, OutOfMemoryError):
        return "full", False  # reads still work: keep asking
    if isinstance(exc, ReadOnlyError | BusyLoadingError | MasterDownError):
        return "unavailable", True  # a replica after failover, a server loading its data
    if isinstance(exc, ResponseError):
        return "error", False
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection", True
    return "error", True


@dataclass
class RedisStats:
    hits: dict[str, int]
    misses: dict[str, int]
    read_bytes: dict[str, int]
    written_bytes: dict[str, int]
    errors: dict[tuple[str, str], int]
    skipped: int = 0  # calls not made because the breaker was open


class RedisTier:
    name = "redis"

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        timeout: float,
        max_value_bytes: int,
        tag_ttl: float,
        lock_ttl: float,
        breaker: CircuitBreaker,
        latency: Histogram | None = None,
        where: str = "redis",
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.max_value_bytes = max_value_bytes
        self.tag_ttl_ms = int(tag_ttl * 1000)
        self.lock_ttl = lock_ttl
        self.breaker = breaker
        self.latency = latency
        self.where = where
        self.instance = uuid.uuid4().hex  # who published a purge: a replica skips its own
        self.stats = RedisStats({}, {}, {}, {}, {})
        self._throttle = ThrottledLog(log, 10.0)
        self._was_open = False
        self._cluster_unready = isinstance(client, RedisCluster)

    # Plumbing -------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _tag(self, tag: str) -> str:
        return f"{self.prefix}tag:{tag}"

    def _lock_name(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    @property
    def channel(self) -> str:
        return f"{self.prefix}purge"

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T | _Unavailable:
        if not self.breaker.allow():
            self.stats.skipped += 1
            return UNAVAILABLE
        start = time.perf_counter()
        try:
            if self._cluster_unready:
                # Discovering the slot map is left to the socket timeouts: cancelling it midway
                # leaks the connections it opened.
                await self.client.initialize()
                self._cluster_unready = False
            # The socket timeouts (redis_timeout) end a stuck call cleanly; this outer clock is
            # only the backstop for what they do not cover (waiting for a pooled connection).
            async with asyncio.timeout(self.timeout * 2 + 0.1):
                result = await fn()
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except Exception as exc:  # any client failure (even a bug of its own) only costs the cache
            self._failed(op, exc)
            return UNAVAILABLE
        if self.latency is not None:
            self.latency.labels(op).observe(time.perf_counter() - start)
        self.breaker.success()
        if self._was_open:
            self._was_open = False
            log.warning("redis cache tier at %s answers again", self.where)
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        kind, unreachable = _classify(exc)
        errors = self.stats.errors
        errors[op, kind] = errors.get((op, kind), 0) + 1
        if unreachable:
            self.breaker.failure()
        # The class name only: redis-py's messages can quote addresses and arguments.
        self._throttle.warn(
            f"redis cache tier at {self.where}: {op} failed ({kind}: {type(exc).__name__}); "
            f"serving from origin and the in-process tier"
        )
        if self.breaker.state != "closed" and not self._was_open:
            self._was_open = True
            log.warning(
                "redis cache tier at %s unreachable: not asking it for %.1f s at a time",
                self.where,
                self.breaker.cooldown,
            )

    @staticmethod
    def _count(table: dict[str, int], kind: str, n: int = 1) -> None:
        table[kind] = table.get(kind, 0) + n

    # Values ---------------------------------------------------------------------------------

    async def get(self, kind: str, key: str) -> tuple[bytes, float] | _Unavailable | None:
        """The value and its remaining time to live in seconds, or None on a miss."""

        async def fetch() -> tuple[bytes | None, int]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self._key(key))
                pipe.pttl(self._key(key))
                value, pttl = await pipe.execute()
            return value, int(pttl)

        result = await self._call("get", fetch)
        if isinstance(result, _Unavailable):
            return result
        value, pttl = result
        if value is None:
            self._count(self.stats.misses, kind)
            return None
        return self._hit(kind, value, pttl)

    def _hit(self, kind: str, value: bytes, pttl: int) -> tuple[bytes, float]:
        """A value found, with its remaining lifetime in seconds (PTTL -1: none set)."""
        self._count(self.stats.hits, kind)
        self._count(self.stats.read_bytes, kind, len(value))
        return bytes(value), (pttl / 1000 if pttl > 0 else float("inf"))

    async def set(
        self, kind: str, key: str, value: bytes, ttl: float, tags: Iterable[str]
    ) -> bool | _Unavailable:
        if len(value) > self.max_value_bytes:
            return False
        full_key = self._key(key)

        async def store() -> bool:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(full_key, value, px=max(1, int(ttl * 1000)))
                for tag in tags:
                    pipe.sadd(self._tag(tag), full_key)
                    pipe.pexpire(self._tag(tag), self.tag_ttl_ms)
                await pipe.execute()
            return True

        result = await self._call("set", store)
        if result is True:
            self._count(self.stats.written_bytes, kind, len(value))
        return result

    async def purge(self, tags: Iterable[str]) -> int | _Unavailable:
        """Delete every value recorded under ``tags``; the number of keys deleted."""

        async def drop() -> int:
            deleted = 0
            for tag in tags:
                members: list[bytes] = []
                async for member in self.client.sscan_iter(self._tag(tag), count=500):
                    members.append(member)
                for start in range(0, len(members), 500):
                    # One key per DEL: in a cluster the keys live in different slots.
                    async with self.client.pipeline(transaction=False) as pipe:
                        for member in members[start : start + 500]:
                            pipe.delete(member)
                        deleted += sum(await pipe.execute())
                await self.client.delete(self._tag(tag))
            return deleted

        # A purge may be long: it gets its own clock, not the per-call timeout.
        saved, self.timeout = self.timeout, max(self.timeout, 30.0)
        try:
            return await self._call("purge", drop)
        finally:
            self.timeout = saved

    async def claim(self, key: str, ttl: float) -> bool | _Unavailable:
        """True for the first caller to claim ``key`` within ``ttl`` on any replica."""

        async def setnx() -> bool:
            return bool(await self.client.set(self._key(key), b"1", nx=True, px=int(ttl * 1000)))

        return await self._call("claim", setnx)

    # Cross-replica build lock ---------------------------------------------------------------

    async def try_lock(self, key: str) -> Lock | _Unavailable | None:
        """The build lock for ``key`` if we got it, None if another replica holds it."""
        lock: Lock = self.client.lock(
            self._lock_name(key), timeout=self.lock_ttl, blocking=False, thread_local=False
        )

        async def acquire() -> bool:
            return bool(await lock.acquire())

        got = await self._call("lock", acquire)
        if isinstance(got, _Unavailable):
            return got
        return lock if got else None

    async def poll(self, kind: str, key: str) -> tuple[bytes, float] | bool | _Unavailable:
        """While another replica builds: its value (with TTL) once there, else whether its lock
        is still held (False: it gave up or died with the lock expired: build ourselves)."""

        async def check() -> tuple[bytes | None, int, int]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self._key(key))
                pipe.pttl(self._key(key))
                pipe.exists(self._lock_name(key))
                value, pttl, held = await pipe.execute()
            return value, int(pttl), int(held)

        result = await self._call("poll", check)
        if isinstance(result, _Unavailable):
            return result
        value, pttl, held = result
        if value is None:
            return bool(held)
        return self._hit(kind, value, pttl)

    async def unlock(self, lock: Lock) -> None:
        async def release() -> None:
            owned = await lock.owned()
            if owned:
                await lock.release()

        await self._call("unlock", release)

    # Purge notifications --------------------------------------------------------------------

    async def publish_purge(self, tags: list[str]) -> bool:
        message = msgspec.json.encode({"from": self.instance, "tags": tags})
        result = await self._call("publish", lambda: self.client.publish(self.channel, message))
        return not isinstance(result, _Unavailable)

    async def listen_purges(self, on_purge: Callable[[frozenset[str]], object]) -> None:
        """Runs until cancelled: applies other replicas' purges; reconnects by itself."""
        delay = 0.5
        while True:
            pubsub = None
            try:
                if isinstance(self.client, RedisCluster):
                    await self.client.initialize()  # its pubsub needs the slot map
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.channel)
                delay = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        body = msgspec.json.decode(message["data"], type=dict[str, Any])
                        tags = body.get("tags")
                        if body.get("from") != self.instance and isinstance(tags, list):
                            on_purge(frozenset(str(t) for t in tags))
                    except msgspec.DecodeError:
                        continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # this loop must outlive any client trouble
                self._throttle.warn(
                    f"redis cache tier at {self.where}: purge subscription lost "
                    f"({type(exc).__name__}); resubscribing"
                )
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(pubsub.aclose())
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        # A Sentinel-managed client also holds connections to the sentinels themselves.
        manager = getattr(getattr(self.client, "connection_pool", None), "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            with contextlib.suppress(Exception):
                await sentinel.aclose()
