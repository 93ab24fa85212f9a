"""Prometheus metrics of the cache tiers, read from their counters when scraped.

The hot path only bumps plain integers; this collector turns them into metric families at
scrape time, so a cache hit pays nothing for being observed. Redis latency is the exception: a
histogram is observed per call (only on calls that reach Redis).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backends.cache.tiered import TieredCache

# Redis answers in well under a millisecond when healthy; the top buckets catch a sick one.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def redis_latency(registry: CollectorRegistry | None) -> Histogram:
    """None: a multiprocess histogram (gateway/metrics.py reads the files)."""
    return Histogram(
        "clipsync_redis_latency_seconds",
        "Time of each call to the Redis cache tier, by operation",
        ["op"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


class CacheCollector(Collector):
    def __init__(self, cache: TieredCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        tier_kind = ["tier", "kind"]
        hits = CounterMetricFamily(
            "clipsync_cache_hits", "Cache lookups answered", labels=tier_kind
        )
        misses = CounterMetricFamily(
            "clipsync_cache_misses", "Cache lookups not answered", labels=tier_kind
        )
        evictions = CounterMetricFamily(
            "clipsync_cache_evictions",
            "Values pushed out of the in-process tier by its byte budget",
            labels=tier_kind,
        )
        held = GaugeMetricFamily(
            "clipsync_cache_bytes", "Bytes held by the in-process tier", labels=tier_kind
        )
        budget = GaugeMetricFamily(
            "clipsync_cache_budget_bytes", "Byte budget of the in-process tier", labels=["kind"]
        )
        items = GaugeMetricFamily(
            "clipsync_cache_items", "Values held by the in-process tier", labels=tier_kind
        )
        for kind, lru in self.cache.memory.lrus.items():
            hits.add_metric(["memory", kind], lru.stats.hits)
            misses.add_metric(["memory", kind], lru.stats.misses)
            evictions.add_metric(["memory", kind], lru.stats.evictions)
            held.add_metric(["memory", kind], lru.used)
            items.add_metric(["memory", kind], len(lru))
            budget.add_metric([kind], lru.budget)
        read = CounterMetricFamily(
            "clipsync_cache_read_bytes", "Bytes read from the Redis tier", labels=tier_kind
        )
        written = CounterMetricFamily(
            "clipsync_cache_written_bytes", "Bytes written to the Redis tier", labels=tier_kind
        )
        errors = CounterMetricFamily(
            "clipsync_redis_errors",
            "Failed calls to the Redis tier by operation and error class "
            "(timeout, connection, unavailable, full, error)",
            labels=["op", "error"],
        )
        breaker = GaugeMetricFamily(
            "clipsync_redis_breaker_open",
            "1 while the circuit breaker keeps requests from waiting on Redis",
        )
        trips = CounterMetricFamily(
            "clipsync_redis_breaker_trips", "Times the Redis circuit breaker opened"
        )
        skipped = CounterMetricFamily(
            "clipsync_redis_skipped_calls", "Redis calls not made because the breaker was open"
        )
        redis = self.cache.redis
        if redis is not None:
            stats = redis.stats
            for kind in sorted(set(stats.hits) | set(stats.misses)):
                hits.add_metric(["redis", kind], stats.hits.get(kind, 0))
                misses.add_metric(["redis", kind], stats.misses.get(kind, 0))
            for kind, n in sorted(stats.read_bytes.items()):
                read.add_metric(["redis", kind], n)
            for kind, n in sorted(stats.written_bytes.items()):
                written.add_metric(["redis", kind], n)
            for (op, error), n in sorted(stats.errors.items()):
                errors.add_metric([op, error], n)
            breaker.add_metric([], 0 if redis.breaker.state == "closed" else 1)
            trips.add_metric([], redis.breaker.trips)
            skipped.add_metric([], stats.skipped)
        flight = self.cache.stats
        builds = CounterMetricFamily(
            "clipsync_cache_builds",
            "Objects built after missing every tier: index builds, playlists, packaged segments",
            labels=["kind"],
        )
        for kind, n in sorted(flight.builds.items()):
            builds.add_metric([kind], n)
        coalesced = CounterMetricFamily(
            "clipsync_cache_coalesced",
            "Requests that waited for a build already under way, in this process (process) or "
            "on another replica holding the Redis build lock (replica)",
            labels=["kind", "scope"],
        )
        for (kind, scope), n in sorted(flight.coalesced.items()):
            coalesced.add_metric([kind, scope], n)
        dropped = CounterMetricFamily(
            "clipsync_cache_unshared",
            "Built values not written to Redis because too many writes were pending",
        )
        dropped.add_metric([], flight.skipped_writes)
        yield from (hits, misses, evictions, held, budget, items, read, written, builds)
        yield from (coalesced, dropped, errors, breaker, trips, skipped)
