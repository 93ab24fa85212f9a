"""The in-process cache: byte budgets hold, and concurrent misses share one build."""

from __future__ import annotations

import asyncio

import pytest

from backends.cache import ByteBudgetLRU, SingleFlight


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
