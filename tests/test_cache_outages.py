"""Redis misbehaving under load: stopped, paused (SIGSTOP, DEBUG SLEEP), full, never there.
Clients must not notice; the tier must come back by itself. Each test runs its own
redis-server; the cross-replica lock cases use the shared one."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from backends.cache import CircuitBreaker, Entry, MemoryTier, RedisTier, TieredCache, connect
from backends.cache.redis_tier import parse_url
from tests.conftest import serving, settings_for
from tests.media import MediaLibrary
from tests.metrics import scrape
from tests.redis_fixtures import RedisServer
from tests.serving import free_port, run_server, stop_server

pytestmark = pytest.mark.anyio

MEDIA = "h264_30fps_bframes"
# Segments are not kept in process, so every request asks Redis; a short breaker cooldown.
THROUGH_REDIS = {"segment_budget_mb": 0, "playlist_ttl": 0.2, "breaker_cooldown": 0.5}


@contextlib.asynccontextmanager
async def gateway(
    root: Path, url: str, **cache: object
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    settings = settings_for(root, {"redis_url": url, **THROUGH_REDIS, **cache})
    async with serving(settings, client_timeout=30) as (h, app):
        yield h, app


def paths(count: int) -> list[str]:
    """Playlists and every segment of the fixture, round-robin: ``count`` request paths."""
    base = f"/vod/{MEDIA}.mp4"
    cycle = [f"{base}/master.m3u8", f"{base}/main/index.m3u8"]
    cycle += [f"{base}/main/seg-{n}.m4s" for n in (1, 2, 3)]
    return list(itertools.islice(itertools.cycle(cycle), count))


class Progress:
    """Requests answered so far; the test acts when the load reaches a point."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def step(self) -> None:
        async with self._changed:
            self.count += 1
            self._changed.notify_all()

    async def reach(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.count >= count)


async def load(
    client: httpx.AsyncClient, urls: list[str], done: Progress, concurrency: int = 16
) -> list[int]:
    queue = list(reversed(urls))
    statuses: list[int] = []

    async def worker() -> None:
        while queue:
            r = await client.get(queue.pop())
            statuses.append(r.status_code)
            await done.step()
            await asyncio.sleep(0.003)  # a few ms apart: the load spans the outages

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def test_load_survives_redis_stopped_and_paused(
    media: MediaLibrary, own_redis: RedisServer, tmp_path: Path
) -> None:
    """``clipsync serve`` (granian) under 1,000 requests while its Redis is frozen (SIGSTOP),
    then stopped, then started again empty on the same port."""
    media.good(MEDIA)
    settings = settings_for(media.root, {"redis_url": own_redis.url, **THROUGH_REDIS})
    log = tmp_path / "gateway.log"
    server = await asyncio.to_thread(run_server, settings, log)
    try:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            done = Progress()
            running = asyncio.ensure_future(load(client, paths(1000), done))
            await done.reach(150)
            own_redis.pause()  # SIGSTOP: connections open, nothing answers
            await asyncio.sleep(1.0)
            own_redis.resume()
            await done.reach(450)
            await asyncio.to_thread(own_redis.stop)
            await done.reach(650)
            await asyncio.to_thread(own_redis.start)  # empty, same port
            statuses = await running
            during = await scrape(client)

            # Back by itself, with no restart of ours: Redis is read and written again.
            hits = "clipsync_cache_hits_total"
            before = during.value(hits, tier="redis", kind="segment")
            after = during
            for _ in range(50):
                for url in paths(10):
                    assert (await client.get(url)).status_code == 200
                after = await scrape(client)
                if after.value(hits, tier="redis", kind="segment") > before:
                    break
                await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(stop_server, server)
    assert len(statuses) == 1000
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
    assert during.total("clipsync_redis_errors_total") > 0
    assert during.value("clipsync_redis_breaker_trips_total") >= 1
    assert after.value("clipsync_redis_breaker_open") == 0
    assert after.value(hits, tier="redis", kind="segment") > before
    with own_redis.client() as check:
        assert check.dbsize() > 0, "the restarted Redis is written to again"
    # The breaker spared most calls; the trouble is logged once per interval per kind, not
    # once per failed or refused call.
    refused = during.value("clipsync_redis_skipped_calls_total")
    assert refused > 100
    lines = [line for line in log.read_text().splitlines() if "redis cache tier at" in line]
    assert 1 <= len(lines) <= 12, lines


async def test_debug_sleep_costs_no_request(media: MediaLibrary, own_redis: RedisServer) -> None:
    media.good(MEDIA)

    def sleep_redis() -> None:
        with own_redis.client() as blocker:
            blocker.execute_command("DEBUG", "SLEEP", "1.5")

    async with gateway(media.root, own_redis.url) as (client, _):
        warm = await load(client, paths(20), Progress())
        # DEBUG SLEEP blocks the server for everyone; the load runs inside that window.
        sleeper = threading.Thread(target=sleep_redis)
        sleeper.start()
        await asyncio.sleep(0.1)
        statuses = await load(client, paths(100), Progress())
        await asyncio.to_thread(sleeper.join)
        seen = await scrape(client)
    assert warm + statuses == [200] * 120
    assert seen.total("clipsync_redis_errors_total", error="timeout") > 0


async def test_full_redis_is_counted_and_costs_nothing(media: MediaLibrary, tmp_path: Path) -> None:
    media.good(MEDIA)
    media.ladder()
    server = RedisServer(tmp_path, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    try:
        async with gateway(media.root, server.url) as (client, app):
            # One segment stored while there is room (read back from Redis later), then enough
            # to fill it: which writes fit must not depend on the fixtures' exact sizes.
            urls = [f"/vod/{MEDIA}.mp4/main/seg-1.m4s"]
            urls += [
                f"/vod/ladder/{r}/seg-{n}.m4s" for r in ("360p", "240p", "180p") for n in (1, 2)
            ]
            urls += paths(20)
            for url in urls:
                assert (await client.get(url)).status_code == 200
                await app.state.library.cache.settle()
            seen = await scrape(client)
    finally:
        server.stop()
    assert seen.value("clipsync_redis_errors_total", op="set", error="full") > 0
    # Full is not down: reads still go to Redis, the breaker stays closed.
    assert seen.value("clipsync_redis_breaker_trips_total") == 0
    assert seen.value("clipsync_cache_hits_total", tier="redis", kind="segment") > 0


async def test_no_redis_at_all_is_not_waited_on(media: MediaLibrary) -> None:
    media.good(MEDIA)
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    async with gateway(media.root, nobody, breaker_cooldown=60) as (client, _):
        statuses = [(await client.get(url)).status_code for url in paths(50)]
        seen = await scrape(client)
    assert statuses == [200] * 50
    # A few failed calls opened the breaker; the rest were never made.
    assert seen.value("clipsync_redis_breaker_open") == 1
    assert seen.total("clipsync_redis_errors_total") <= 6  # the calls already under way
    assert seen.value("clipsync_redis_skipped_calls_total") > 40


# The cross-replica build lock, with two caches standing for two replicas -------------------


def replica_cache(url: str, prefix: str, lock_wait: float) -> TieredCache:
    client = connect(parse_url(url), timeout=1.0, max_connections=8)
    tier = RedisTier(
        client,
        prefix=prefix,
        timeout=1.0,
        max_value_bytes=2**20,
        tag_ttl=60,
        lock_ttl=10,
        breaker=CircuitBreaker(3, 1.0),
    )
    return TieredCache(MemoryTier({"segment": 2**20}), tier, lock_wait=lock_wait)


async def _same(data: bytes) -> bytes:
    return data


def entry(key: str) -> Entry[bytes]:
    return Entry("segment", key, 60.0, frozenset({"t"}), len, bytes, _same)


@pytest.mark.parametrize(
    ("holder_seconds", "lock_wait", "b_builds"),
    [
        (0.4, 3.0, 0),  # slow but in time: B waits and takes A's result
        (2.0, 0.3, 1),  # too slow: B stops waiting and builds
    ],
)
async def test_one_replica_builds_while_the_other_waits(
    shared_redis: str, redis_prefix: str, holder_seconds: float, lock_wait: float, b_builds: int
) -> None:
    a = replica_cache(shared_redis, redis_prefix, lock_wait)
    b = replica_cache(shared_redis, redis_prefix, lock_wait)

    async def build_a() -> bytes:
        await asyncio.sleep(holder_seconds)
        return b"from A"

    async def build_b() -> bytes:
        return b"from B"

    try:
        first = asyncio.ensure_future(a.fetch(entry("k"), build_a))
        await asyncio.sleep(0.1)  # A holds the lock now
        got_b = await b.fetch(entry("k"), build_b)
        got_a = await first
    finally:
        await a.close()
        await b.close()
    assert got_a == b"from A"
    assert got_b == (b"from A" if b_builds == 0 else b"from B")
    assert b.stats.builds.get("segment", 0) == b_builds
    assert b.stats.coalesced[("segment", "replica")] == 1


async def test_a_dead_lock_holder_costs_one_lock_wait(shared_redis: str, redis_prefix: str) -> None:
    # A replica took the lock and died: the lock stays until its TTL, nobody writes the value.
    redis.Redis.from_url(shared_redis).set(f"{redis_prefix}lock:k", b"dead", ex=30)
    b = replica_cache(shared_redis, redis_prefix, lock_wait=0.3)
    start = time.monotonic()

    async def build() -> bytes:
        return b"mine"

    try:
        got = await b.fetch(entry("k"), build)
    finally:
        await b.close()
    assert got == b"mine"
    assert 0.3 <= time.monotonic() - start < 2.0
    assert b.stats.builds == {"segment": 1}
