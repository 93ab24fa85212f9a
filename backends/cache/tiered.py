"""The cache the gateway asks: the in-process tier, then Redis, then one build for everyone.

``fetch(entry, build)`` answers from the in-process tier; on a miss, concurrent callers in this
process share one flight (single-flight) that asks Redis; on a Redis miss the flight takes a
short Redis lock so one replica builds while the others poll for its result, and builds itself
if the lock holder is slow or gone. A built value goes to the in-process tier at once and to
Redis in the background: no client waits on a cache write. Redis trouble at any step only
means the value is built here: callers never see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from redis.asyncio.lock import Lock

from backends.cache.flight import SingleFlight
from backends.cache.memory import MemoryTier
from backends.cache.redis_tier import RedisTier

V = TypeVar("V")
log = logging.getLogger("clipsync.cache")

# Cache writes waiting for Redis at once; past this a value is simply not shared (it holds
# memory until written, and a slow Redis must not turn into an unbounded backlog).
MAX_PENDING_WRITES = 64


@dataclass(frozen=True)
class Entry(Generic[V]):
    """How one object is cached: its kind (budget, metrics), key, lifetime and purge tags;
    ``encode``/``decode`` make it shareable through Redis (None: in-process only)."""

    kind: str
    key: str
    ttl: float
    tags: frozenset[str]
    size: Callable[[V], int]
    encode: Callable[[V], bytes] | None = None
    decode: Callable[[bytes], Awaitable[V]] | None = None
    # Tags only known once the value exists (a playlist's source files).
    tags_of: Callable[[V], frozenset[str]] | None = None

    def tags_with(self, value: V) -> frozenset[str]:
        return self.tags | self.tags_of(value) if self.tags_of is not None else self.tags


@dataclass
class FlightStats:
    builds: dict[str, int] = field(default_factory=dict)
    coalesced: dict[tuple[str, str], int] = field(default_factory=dict)
    skipped_writes: int = 0
    decode_errors: int = 0


@dataclass(frozen=True)
class PurgeResult:
    memory: int
    redis: int | None  # None: no Redis configured, or it could not be reached


class TieredCache:
    def __init__(
        self,
        memory: MemoryTier,
        redis: RedisTier | None = None,
        *,
        lock_wait: float = 2.0,
        poll_interval: float = 0.02,
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.lock_wait = lock_wait
        self.poll_interval = poll_interval
        self.stats = FlightStats()
        self._flight: SingleFlight[Any] = SingleFlight()
        self._writes: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None

    @staticmethod
    def _bump(table: dict[Any, int], key: Any) -> None:
        table[key] = table.get(key, 0) + 1

    async def fetch(self, entry: Entry[V], build: Callable[[], Awaitable[V]]) -> V:
        value = self.memory.get(entry.kind, entry.key)
        if value is not None:
            return cast(V, value)
        if self._flight.joining(entry.key):
            self._bump(self.stats.coalesced, (entry.kind, "process"))
        result: V = await self._flight.run(entry.key, lambda: self._fill(entry, build))
        return result

    def peek(self, entry: Entry[V]) -> V | None:
        """The in-process copy, if any (no Redis, no build)."""
        return cast(V | None, self.memory.get(entry.kind, entry.key))

    async def _fill(self, entry: Entry[V], build: Callable[[], Awaitable[V]]) -> V:
        redis = self.redis if entry.encode is not None else None
        lock: Lock | None = None
        if redis is not None:
            self._ensure_listener()
            found = await redis.get(entry.kind, entry.key)
            if isinstance(found, tuple):
                value = await self._decoded(entry, found)
                if value is not None:
                    return value
            if found is None:
                got = await redis.try_lock(entry.key)
                if isinstance(got, Lock):
                    lock = got
                elif got is None:  # another replica is building it
                    self._bump(self.stats.coalesced, (entry.kind, "replica"))
                    value = await self._wait_for_other(redis, entry)
                    if value is not None:
                        return value
        try:
            self._bump(self.stats.builds, entry.kind)
            value = await build()
        except BaseException:
            if lock is not None and redis is not None:
                self._background(redis.unlock(lock))
            raise
        tags = entry.tags_with(value)
        self.memory.put(entry.kind, entry.key, value, entry.size(value), entry.ttl, tags)
        if redis is not None and entry.encode is not None:
            self._share(redis, entry, value, lock)
        return value

    async def _decoded(self, entry: Entry[V], found: tuple[bytes, float]) -> V | None:
        data, ttl = found
        assert entry.decode is not None
        try:
            value = await entry.decode(data)
        except Exception:  # a value written by other code, or damaged: rebuild it
            self.stats.decode_errors += 1
            log.warning("undecodable %s value in the redis cache tier: rebuilding it", entry.kind)
            return None
        # Never longer here than in Redis: a replaced source is not served past its TTL.
        self.memory.put(
            entry.kind,
            entry.key,
            value,
            entry.size(value),
            min(entry.ttl, ttl),
            entry.tags_with(value),
        )
        return value

    async def _wait_for_other(self, redis: RedisTier, entry: Entry[V]) -> V | None:
        end = time.monotonic() + self.lock_wait
        delay = self.poll_interval
        while time.monotonic() < end:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.2)
            state = await redis.poll(entry.kind, entry.key)
            if isinstance(state, tuple):
                return await self._decoded(entry, state)
            if state is not True:  # lock gone with no value, or Redis gone: build here
                return None
        return None  # the holder is slow: build here rather than keep the client waiting

    def _share(self, redis: RedisTier, entry: Entry[V], value: V, lock: Lock | None) -> None:
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.stats.skipped_writes += 1
            if lock is not None:
                self._background(redis.unlock(lock))
            return
        assert entry.encode is not None
        data = entry.encode(value)

        tags = entry.tags_with(value)

        async def write() -> None:
            await redis.set(entry.kind, entry.key, data, entry.ttl, tags)
            if lock is not None:  # released after the write: waiters find the value
                await redis.unlock(lock)

        self._background(write())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _ensure_listener(self) -> None:
        if self._listener is None and self.redis is not None:
            self._listener = asyncio.ensure_future(self.redis.listen_purges(self.memory.purge))

    async def purge(self, tags: frozenset[str]) -> PurgeResult:
        """Drop every object carrying one of ``tags`` here, in Redis and on other replicas."""
        dropped = self.memory.purge(tags)
        if self.redis is None:
            return PurgeResult(dropped, None)
        self._ensure_listener()
        deleted = await self.redis.purge(tags)
        published = await self.redis.publish_purge(sorted(tags))
        if isinstance(deleted, int) and published:
            return PurgeResult(dropped, deleted)
        return PurgeResult(dropped, None)

    async def settle(self) -> None:
        """Wait for the background cache writes under way (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.settle()
        for task in list(self._writes):
            task.cancel()
        if self.redis is not None:
            await self.redis.close()
