"""Caching: the in-process tier, the Redis tier, and the flight logic that joins them."""

from __future__ import annotations

from prometheus_client import Histogram

from backends.cache.breaker import CircuitBreaker
from backends.cache.flight import SingleFlight
from backends.cache.keys import tags_for
from backends.cache.memory import ByteBudgetLRU, CacheStats, MemoryTier
from backends.cache.redis_tier import RedisTier, RedisURLError, connect, display, parse_url
from backends.cache.tiered import Entry, PurgeResult, TieredCache
from conf.settings import CacheSettings

KINDS = ("index", "playlist", "segment", "video")

__all__ = [
    "KINDS",
    "ByteBudgetLRU",
    "CacheStats",
    "CircuitBreaker",
    "Entry",
    "MemoryTier",
    "PurgeResult",
    "RedisTier",
    "RedisURLError",
    "SingleFlight",
    "TieredCache",
    "open_cache",
    "tags_for",
]

_MB = 2**20


def open_cache(settings: CacheSettings, latency: Histogram | None = None) -> TieredCache:
    """The tiers ``settings`` asks for. Raises RedisURLError for an unusable Redis URL; makes no
    connection (redis-py connects on first use, so a Redis that is down delays nothing)."""
    memory = MemoryTier(
        {
            "index": int(settings.index_budget_mb * _MB),
            "playlist": int(settings.playlist_budget_mb * _MB),
            "segment": int(settings.segment_budget_mb * _MB),
            # Catalog lookups for /v/ playback: small, and in the playlists' budget class.
            "video": int(settings.playlist_budget_mb * _MB),
        }
    )
    redis = None
    if settings.redis_url:
        target = parse_url(settings.redis_url)
        client = connect(target, settings.redis_timeout, settings.redis_max_connections)
        redis = RedisTier(
            client,
            prefix=settings.redis_prefix,
            timeout=settings.redis_timeout,
            max_value_bytes=int(settings.redis_max_value_mb * _MB),
            tag_ttl=max(settings.index_ttl, settings.segment_ttl, settings.playlist_ttl),
            lock_ttl=settings.lock_ttl,
            breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown),
            latency=latency,
            where=display(settings.redis_url),
        )
    return TieredCache(memory, redis, lock_wait=settings.lock_wait)
