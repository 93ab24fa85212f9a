"""The Redis tier against the real Redis (127.0.0.1:6379, one key prefix per test): what is
shared between replicas, coalescing across them, freshness, purge, and the admin endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from backends.cache.breaker import CircuitBreaker
from backends.cache.redis_tier import (
    READ_BUFFER,
    RedisTier,
    WideConnection,
    WideSSLConnection,
    connect,
    parse_url,
)
from tests.conftest import app_client, serving, settings_for
from tests.media import MediaLibrary
from tests.metrics import scrape, scrape_sync
from tests.redis_fixtures import keys_under
from tests.serving import run_server, stop_server

pytestmark = pytest.mark.anyio

MEDIA = "h264_30fps_bframes"
SEGMENT = f"/vod/{MEDIA}.mp4/main/seg-2.m4s"
PLAYLIST = f"/vod/{MEDIA}.mp4/main/index.m3u8"
ADMIN = "test-admin-token"


def replica(
    root: Path, url: str, prefix: str, **extra: object
) -> contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, Any]]:
    """One gateway (in-process) using Redis at ``url`` under ``prefix``."""
    cache = {"redis_url": url, "redis_prefix": prefix, **extra}
    return app_client(root, cache, {"admin_token": ADMIN})


async def settle(app: Any) -> None:
    await app.state.library.cache.settle()


async def test_second_replica_is_answered_from_redis(
    media: MediaLibrary, shared_redis: str, redis_prefix: str
) -> None:
    media.good(MEDIA)
    async with replica(media.root, shared_redis, redis_prefix) as (a, app_a):
        first = await a.get(SEGMENT)
        playlist = await a.get(PLAYLIST)
        await settle(app_a)
        seen_a = await scrape(a)
    assert first.status_code == playlist.status_code == 200
    assert seen_a.value("clipsync_cache_builds_total", kind="segment") == 1
    assert seen_a.value("clipsync_cache_misses_total", tier="redis", kind="segment") == 1
    assert seen_a.value("clipsync_cache_written_bytes_total", tier="redis", kind="segment") == len(
        first.content
    )
    assert keys_under(shared_redis, redis_prefix)

    # A second replica (empty in-process tier) packages nothing: index, playlist and segment
    # come from Redis, byte for byte the same.
    async with replica(media.root, shared_redis, redis_prefix) as (b, _):
        again = await b.get(SEGMENT)
        playlist_b = await b.get(PLAYLIST)
        repeat = await b.get(SEGMENT)
        seen_b = await scrape(b)
    assert again.content == repeat.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert playlist_b.text == playlist.text
    assert seen_b.total("clipsync_cache_builds_total") == 0
    assert seen_b.value("clipsync_cache_hits_total", tier="redis", kind="segment") == 1
    assert seen_b.value("clipsync_cache_hits_total", tier="redis", kind="index") == 1
    assert seen_b.value("clipsync_cache_hits_total", tier="redis", kind="playlist") == 1
    # The third request was answered in process.
    assert seen_b.value("clipsync_cache_hits_total", tier="memory", kind="segment") == 1


async def test_segments_can_stay_out_of_redis_and_big_values_are_not_shared(
    media: MediaLibrary, shared_redis: str, redis_prefix: str
) -> None:
    media.good(MEDIA)
    async with replica(media.root, shared_redis, redis_prefix, redis_segments=False) as (a, app):
        assert (await a.get(SEGMENT)).status_code == 200
        await settle(app)
        seen = await scrape(a)
    assert seen.value("clipsync_cache_written_bytes_total", tier="redis", kind="segment") == 0
    assert seen.value("clipsync_cache_written_bytes_total", tier="redis", kind="index") > 0

    small = 0.01  # MB: smaller than any segment of the fixture
    async with replica(media.root, shared_redis, redis_prefix, redis_max_value_mb=small) as (
        b,
        app,
    ):
        assert (await b.get(f"/vod/{MEDIA}.mp4/main/seg-3.m4s")).status_code == 200
        await settle(app)
        seen = await scrape(b)
    assert seen.value("clipsync_cache_written_bytes_total", tier="redis", kind="segment") == 0


async def test_200_concurrent_cold_requests_package_once(
    media: MediaLibrary, shared_redis: str, redis_prefix: str
) -> None:
    media.good(MEDIA)
    async with replica(media.root, shared_redis, redis_prefix) as (a, _):
        replies = await asyncio.gather(*(a.get(SEGMENT) for _ in range(200)))
        seen = await scrape(a)
    assert {r.status_code for r in replies} == {200}
    assert len({r.content for r in replies}) == 1
    assert seen.value("clipsync_cache_builds_total", kind="segment") == 1
    assert seen.value("clipsync_cache_builds_total", kind="index") == 1
    assert seen.value("clipsync_cache_coalesced_total", kind="segment", scope="process") == 199


def test_two_gateway_processes_package_at_most_twice(
    media: MediaLibrary, shared_redis: str, redis_prefix: str, tmp_path: Path
) -> None:
    media.good(MEDIA)
    settings = settings_for(media.root, {"redis_url": shared_redis, "redis_prefix": redis_prefix})
    servers = [run_server(settings, tmp_path / f"gateway-{n}.log") for n in range(2)]
    try:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as http:
                calls = [http.get(servers[n % 2].base + SEGMENT) for n in range(200)]
                return await asyncio.gather(*calls)

        replies = asyncio.run(burst())
        seen = [scrape_sync(s.base) for s in servers]
    finally:
        for server in servers:
            stop_server(server)
    assert {r.status_code for r in replies} == {200}
    assert len({r.content for r in replies}) == 1
    segment_builds = sum(m.value("clipsync_cache_builds_total", kind="segment") for m in seen)
    index_builds = sum(m.value("clipsync_cache_builds_total", kind="index") for m in seen)
    assert 1 <= segment_builds <= 2
    assert 1 <= index_builds <= 2


async def test_replaced_source_is_reindexed_through_redis(
    media: MediaLibrary, shared_redis: str, redis_prefix: str, tmp_path: Path
) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    shutil.copy(media.good(MEDIA), root / "a.mp4")
    async with replica(root, shared_redis, redis_prefix, playlist_ttl=0.2) as (a, app):
        before = await a.get("/vod/a.mp4/main/index.m3u8")
        old_segment = await a.get("/vod/a.mp4/main/seg-1.m4s")
        await settle(app)
        shutil.copy(media.good("h264_2997fps"), root / "a.mp4")
        os.utime(root / "a.mp4", ns=(1, 1))
    # Another replica, Redis still holding the old file's index, playlist and segment.
    await asyncio.sleep(0.2)
    async with replica(root, shared_redis, redis_prefix, playlist_ttl=0.2) as (b, _):
        after = await b.get("/vod/a.mp4/main/index.m3u8")
        new_segment = await b.get("/vod/a.mp4/main/seg-1.m4s")
        seen = await scrape(b)
    assert after.text != before.text
    assert new_segment.headers["etag"] != old_segment.headers["etag"]
    assert new_segment.content != old_segment.content
    assert seen.value("clipsync_cache_builds_total", kind="index") == 1
    assert seen.value("clipsync_cache_builds_total", kind="segment") == 1


async def test_purge_drops_a_path_from_both_tiers_and_other_replicas(
    media: MediaLibrary, shared_redis: str, redis_prefix: str
) -> None:
    media.good(MEDIA)
    media.ladder()
    other = "/vod/ladder/360p/seg-1.m4s"
    async with (
        replica(media.root, shared_redis, redis_prefix) as (a, app_a),
        replica(media.root, shared_redis, redis_prefix) as (b, app_b),
    ):
        for client, app in ((a, app_a), (b, app_b)):
            for path in (SEGMENT, PLAYLIST, other):
                assert (await client.get(path)).status_code == 200
            await settle(app)
        kept = len(keys_under(shared_redis, redis_prefix))
        before_b = await scrape(b)

        r = await a.post(
            "/api/v1/admin/purge",
            json={"path": f"{MEDIA}.mp4"},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        # This replica dropped index, playlist and segment of the file; Redis too.
        assert body["memory"] == 3
        assert body["redis"] >= 3
        assert len(keys_under(shared_redis, redis_prefix)) < kept
        await asyncio.sleep(0.5)  # the other replica hears of it through Redis pub/sub
        assert (await b.get(SEGMENT)).status_code == 200
        assert (await b.get(other)).status_code == 200
        after_b = await scrape(b)
    builds = "clipsync_cache_builds_total"
    # B had to rebuild the purged file's segment (and its index) but not the ladder's.
    assert after_b.value(builds, kind="segment") == before_b.value(builds, kind="segment") + 1
    assert after_b.value(builds, kind="index") == before_b.value(builds, kind="index") + 1
    assert after_b.value("clipsync_cache_hits_total", tier="memory", kind="segment") > (
        before_b.value("clipsync_cache_hits_total", tier="memory", kind="segment")
    )


async def test_purge_of_a_folder_and_of_the_whole_library(
    media: MediaLibrary, shared_redis: str, redis_prefix: str
) -> None:
    media.good(MEDIA)
    media.ladder()
    async with replica(media.root, shared_redis, redis_prefix) as (a, app):
        for path in ("/vod/ladder/master.m3u8", "/vod/ladder/240p/seg-1.m4s", SEGMENT):
            assert (await a.get(path)).status_code == 200
        await settle(app)
        auth = {"authorization": f"Bearer {ADMIN}"}
        folder = await a.post("/api/v1/admin/purge", json={"path": "ladder"}, headers=auth)
        # master playlist, three rendition indexes, one segment
        assert folder.json()["memory"] == 5
        everything = await a.post("/api/v1/admin/purge", json={"path": ""}, headers=auth)
        assert everything.json()["memory"] == 2  # the single file's index and segment
    # No value is left; what remains are other paths' tag sets, which expire by themselves.
    left = keys_under(shared_redis, redis_prefix)
    assert [k for k in left if not k.startswith(f"{redis_prefix}tag:".encode())] == []


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"path": "x"}, 401),
        ({"authorization": "Bearer wrong"}, {"path": "x"}, 401),
        ({"authorization": f"Basic {ADMIN}"}, {"path": "x"}, 401),
        ({"authorization": "Bearer " + "x" * 10_000}, {"path": "x"}, 401),
        ({"authorization": f"Bearer {ADMIN}"}, {"path": "../etc"}, 400),
        ({"authorization": f"Bearer {ADMIN}"}, {"path": "/abs"}, 400),
        ({"authorization": f"Bearer {ADMIN}"}, {"path": 5}, 400),
        ({"authorization": f"Bearer {ADMIN}"}, {"path": "x", "extra": 1}, 400),
        ({"authorization": f"Bearer {ADMIN}"}, {"path": "x" * 2000}, 400),
        ({"authorization": f"Bearer {ADMIN}"}, [], 400),
    ],
)
async def test_purge_refuses_bad_requests_and_keeps_the_cache(
    media: MediaLibrary,
    shared_redis: str,
    redis_prefix: str,
    headers: dict[str, str],
    body: object,
    status: int,
) -> None:
    media.good(MEDIA)
    async with replica(media.root, shared_redis, redis_prefix) as (a, app):
        assert (await a.get(SEGMENT)).status_code == 200
        await settle(app)
        stored = len(keys_under(shared_redis, redis_prefix))
        r = await a.post("/api/v1/admin/purge", json=body, headers=headers)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert (await a.get(SEGMENT)).status_code == 200
        seen = await scrape(a)
    assert len(keys_under(shared_redis, redis_prefix)) == stored
    assert seen.value("clipsync_cache_builds_total", kind="segment") == 1


async def test_purge_is_off_without_an_admin_token(media: MediaLibrary) -> None:
    async with serving(settings_for(media.root)) as (h, _):
        r = await h.post(
            "/api/v1/admin/purge", json={"path": ""}, headers={"authorization": "Bearer "}
        )
    assert r.status_code == 403
    assert "server.admin_token" in r.json()["detail"]


async def test_damaged_values_in_redis_are_rebuilt(
    media: MediaLibrary, shared_redis: str, redis_prefix: str
) -> None:
    media.good(MEDIA)
    async with replica(media.root, shared_redis, redis_prefix) as (a, app):
        good = await a.get(SEGMENT)
        assert (await a.get(PLAYLIST)).status_code == 200
        await settle(app)
    client = redis.Redis.from_url(shared_redis)
    for key in keys_under(shared_redis, redis_prefix):
        if b":index:" in key or b":playlist:" in key:
            client.set(key, b"\x00garbage", keepttl=True)
    async with replica(media.root, shared_redis, redis_prefix) as (b, _):
        playlist = await b.get(PLAYLIST)
        segment = await b.get(SEGMENT)
        seen = await scrape(b)
    assert playlist.status_code == 200
    assert segment.content == good.content
    assert seen.value("clipsync_cache_builds_total", kind="index") == 1


@pytest.mark.parametrize(
    ("url", "connection"),
    [
        ("redis://127.0.0.1:6379/0", WideConnection),
        ("rediss://127.0.0.1:6379/0", WideSSLConnection),
    ],
)
def test_the_tier_reads_large_replies_in_wide_rounds(url: str, connection: type) -> None:
    client = connect(parse_url(url), 1.0, 4)
    assert client.connection_pool.connection_class is connection
    assert client.connection_pool.connection_kwargs["socket_read_size"] == READ_BUFFER


async def test_values_larger_than_the_read_buffer_come_back_whole(
    shared_redis: str, redis_prefix: str
) -> None:
    tier = RedisTier(
        connect(parse_url(shared_redis), 2.0, 8),
        prefix=redis_prefix,
        timeout=2.0,
        max_value_bytes=64 << 20,
        tag_ttl=60,
        lock_ttl=10,
        breaker=CircuitBreaker(3, 1.0),
    )
    sizes = (0, 1, READ_BUFFER - 1, READ_BUFFER, 3 * READ_BUFFER + 17, 9_000_001)
    values = {f"value-{size}": os.urandom(size) for size in sizes}
    try:
        for key, value in values.items():
            assert await tier.set("segment", key, value, 60, ()) is True
        # Several at once on few connections: replies of different sizes interleave.
        keys = list(values) * 4
        found = await asyncio.gather(*(tier.get("segment", key) for key in keys))
        for key, result in zip(keys, found, strict=True):
            assert isinstance(result, tuple), key
            assert result[0] == values[key], key
            assert 0 < result[1] <= 60
    finally:
        await tier.close()
