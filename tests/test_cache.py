"""The in-process cache: byte budgets hold, and concurrent misses share one build."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backends.cache import (
    ByteBudgetLRU,
    CircuitBreaker,
    MemoryTier,
    RedisURLError,
    SingleFlight,
    keys,
    tags_for,
)
from backends.cache.redis_tier import display, parse_url
from gateway.cli import main
from tests.conftest import app_client
from tests.media import MediaLibrary
from tests.metrics import scrape


def test_budget_holds_and_evicts_least_recently_used() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("c", "C", 40)  # 120 > 100: the least recently used (b) goes
    assert cache.get("b") is None
    assert cache.get("a") == "A"
    assert cache.get("c") == "C"
    assert cache.used == 80
    assert cache.stats.evictions == 1


def test_value_larger_than_budget_is_not_kept() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "A", 60)
    cache.put("huge", "H", 101)
    assert cache.get("huge") is None
    assert cache.get("a") == "A"
    assert cache.used == 60


def test_replacing_a_key_updates_the_bytes_used() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "A", 60)
    cache.put("a", "A2", 10)
    assert cache.used == 10
    cache.discard("a")
    assert cache.used == 0
    assert len(cache) == 0


@pytest.mark.anyio
async def test_single_flight_builds_once_for_concurrent_callers() -> None:
    flight: SingleFlight[int] = SingleFlight()
    builds = 0
    release = asyncio.Event()

    async def build() -> int:
        nonlocal builds
        builds += 1
        await release.wait()
        return 42

    callers = [asyncio.ensure_future(flight.run("k", build)) for _ in range(200)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*callers) == [42] * 200
    assert builds == 1
    assert flight.coalesced == 199


@pytest.mark.anyio
async def test_single_flight_shares_failure_and_survives_a_cancelled_caller() -> None:
    flight: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def failing() -> int:
        await release.wait()
        raise ValueError("bad media")

    first = asyncio.ensure_future(flight.run("k", failing))
    second = asyncio.ensure_future(flight.run("k", failing))
    await asyncio.sleep(0)
    first.cancel()  # the first client went away: the others still get the real outcome
    release.set()
    with pytest.raises(ValueError, match="bad media"):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    # Nothing is left pending: the next call builds afresh.
    release.clear()

    async def fine() -> int:
        return 7

    assert await flight.run("k", fine) == 7


# Expiry and purge tags ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_expired_values_are_misses_and_free_their_bytes() -> None:
    clock = Clock()
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100, clock)
    cache.put("short", "S", 10, ttl=5)
    cache.put("long", "L", 10, ttl=50)
    clock.now = 4.9
    assert cache.get("short") == "S"
    clock.now = 5.0
    assert cache.get("short") is None
    assert cache.get("long") == "L"
    assert cache.used == 10
    cache.put("none", "N", 10, ttl=0)  # a zero lifetime keeps nothing
    assert cache.get("none") is None


def test_purge_drops_values_carrying_a_tag() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "A", 10, tags={"movies", "movies/a.mp4"})
    cache.put("b", "B", 10, tags={"movies", "movies/b.mp4"})
    cache.put("c", "C", 10, tags={"shows"})
    assert cache.purge(frozenset({"movies/a.mp4"})) == 1
    assert cache.purge(frozenset({"movies", "nothing"})) == 1
    assert [cache.get(k) for k in "abc"] == [None, None, "C"]
    assert cache.used == 10


def test_memory_tier_budgets_are_per_kind() -> None:
    tier = MemoryTier({"index": 100, "segment": 50})
    tier.put("index", "i", "I", 80, 60, ())
    for n in range(10):
        tier.put("segment", f"s{n}", "S", 20, 60, ())  # segments churn...
    assert tier.get("index", "i") == "I"  # ...without pushing out the index
    assert tier.lrus["segment"].used <= 50
    assert tier.lrus["segment"].stats.evictions == 8


@pytest.mark.parametrize(
    ("paths", "purged_by", "kept_by"),
    [
        (("movies/b/720p.mp4",), ["", "movies", "movies/b", "movies/b/720p.mp4"], ["movies/b/7"]),
        (("a.mp4",), ["", "a.mp4"], ["a", "a.mp4/main"]),
        (("x/1.mp4", "y/2.mp4"), ["x", "y", "y/2.mp4"], ["x/2.mp4", "z"]),
    ],
)
def test_tags_cover_each_source_and_every_folder_above(
    paths: tuple[str, ...], purged_by: list[str], kept_by: list[str]
) -> None:
    tags = tags_for("lib", *paths)
    assert all(keys.tag("lib", p) in tags for p in purged_by)
    assert not any(keys.tag("lib", p) in tags for p in kept_by)
    assert keys.tag("other-lib", paths[0]) not in tags  # libraries never share tags


# The circuit breaker ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "states"),
    [
        # two failures of three: still closed; a success resets the count
        ("ffsff", ["closed", "closed", "closed", "closed", "closed"]),
        # the third failure in a row opens it
        ("fff", ["closed", "closed", "open"]),
        # after the cooldown one probe goes through; its success closes
        ("fff+ps", ["closed", "closed", "open", "half-open", "open", "closed"]),
        # a failed probe opens it again for another cooldown
        ("fff+pf", ["closed", "closed", "open", "half-open", "open", "open"]),
        # a cancelled probe lets the next one through
        ("fff+pr", ["closed", "closed", "open", "half-open", "open", "half-open"]),
    ],
)
def test_breaker_states(events: str, states: list[str]) -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=2.0, clock=clock)
    seen = []
    for event in events:
        if event == "f":
            assert breaker.allow() or breaker.state != "closed"
            breaker.failure()
        elif event == "s":
            breaker.success()
        elif event == "+":
            clock.now += 2.0
        elif event == "p":
            assert breaker.allow()  # the probe
            assert not breaker.allow()  # only one at a time
        elif event == "r":
            breaker.release()
        seen.append(breaker.state)
    assert seen == states


def test_open_breaker_refuses_calls_until_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=5.0, clock=clock)
    breaker.failure()
    assert breaker.trips == 1
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow()


# Redis URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "mode", "detail"),
    [
        ("redis://localhost:6379/0", "standalone", "redis://localhost:6379/0"),
        ("rediss://:pw@cache.example:6380/1", "standalone", "rediss://:pw@cache.example:6380/1"),
        ("unix:///run/redis.sock?db=2", "standalone", "unix:///run/redis.sock?db=2"),
        ("redis+cluster://node1:7000", "cluster", "redis://node1:7000"),
        ("rediss+cluster://u:p@node1:7000", "cluster", "rediss://u:p@node1:7000"),
        ("redis+sentinel://s1:26379,s2:26379/mymaster", "sentinel", "mymaster/0"),
        ("redis+sentinel://:secret@s1:26379/cache/3", "sentinel", "cache/3"),
    ],
)
def test_redis_urls(url: str, mode: str, detail: str) -> None:
    target = parse_url(url)
    assert target.mode == mode
    if mode == "sentinel":
        assert f"{target.service}/{target.db}" == detail
        assert target.sentinels[0][1] == 26379
    else:
        assert target.url == detail


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379", "unsupported Redis URL scheme"),
        ("redis+shard://h:1", "unsupported Redis URL scheme"),
        ("redis://", "names no host"),
        ("redis+sentinel://s1/mymaster", "is not host:port"),
        ("redis+sentinel://s1:26379", "must end in /service-name"),
        ("redis+sentinel://:hunter2@s1:26379/a/b/c", "must end in /service-name"),
    ],
)
def test_bad_redis_urls_are_refused_without_their_password(url: str, message: str) -> None:
    with pytest.raises(RedisURLError, match=message) as caught:
        parse_url(url)
    assert "hunter2" not in str(caught.value)


def test_redis_url_is_shown_without_its_password() -> None:
    assert display("redis://user:hunter2@h:1/0") == "redis://user:***@h:1/0"
    assert display("rediss://:hunter2@h:1") == "rediss://***@h:1"
    assert display("redis://h:1") == "redis://h:1"


# The in-process tier in the gateway ---------------------------------------------------------


@pytest.mark.anyio
async def test_segment_budget_holds_under_traffic(media: MediaLibrary) -> None:
    media.ladder()
    budget_mb = 0.5  # smaller than the fixture's segments together
    urls = [f"/vod/ladder/{r}/seg-{n}.m4s" for r in ("360p", "240p", "180p") for n in (1, 2)]
    async with app_client(media.root, cache={"segment_budget_mb": budget_mb}) as (client, _):
        replies = [await client.get(url) for url in urls]
        sizes = [len(r.content) for r in replies if r.status_code == 200]
        again = await client.get(urls[-1])  # the most recent one is still held
        seen = await scrape(client)
    assert len(sizes) == len(urls)
    assert sum(sizes) > budget_mb * 2**20
    held = seen.value("clipsync_cache_bytes", tier="memory", kind="segment")
    assert 0 < held <= budget_mb * 2**20
    assert seen.value("clipsync_cache_evictions_total", tier="memory", kind="segment") > 0
    assert seen.value("clipsync_cache_hits_total", tier="memory", kind="segment") == 1
    assert seen.value("clipsync_cache_builds_total", kind="segment") == len(urls)
    assert again.status_code == 200


@pytest.mark.anyio
async def test_segments_can_be_kept_out_of_memory(media: MediaLibrary) -> None:
    media.good("h264_30fps_bframes")
    url = "/vod/h264_30fps_bframes.mp4/main/seg-1.m4s"
    async with app_client(media.root, cache={"segment_budget_mb": 0}) as (client, _):
        first, second = [await client.get(url) for _ in range(2)]
        seen = await scrape(client)
    assert first.content == second.content
    assert seen.value("clipsync_cache_builds_total", kind="segment") == 2
    assert seen.value("clipsync_cache_bytes", tier="memory", kind="segment") == 0


@pytest.mark.parametrize(
    ("redis_url", "message"),
    [
        ("http://cache:6379", "cache.redis_url: unsupported Redis URL scheme"),
        ("redis+sentinel://:hunter2@s1/x", "is not host:port"),
    ],
)
def test_serve_refuses_a_bad_redis_url(
    redis_url: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["serve", "--library", str(tmp_path), "--redis", redis_url]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "hunter2" not in err
