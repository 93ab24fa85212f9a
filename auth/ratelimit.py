"""Rate limits per client IP on sign-in, registration and password reset, through ``limits``.

With Redis configured every worker and replica counts in one place (a moving window under our
key prefix); without it each process counts for itself. A limiter that cannot reach Redis falls
back to its in-process counts for that request and logs at most once per interval: a Redis
outage must not lock everyone out, nor open the gate entirely.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from backends.cache.redis_tier import parse_url
from backends.errors import TooManyRequests
from backends.throttle import ThrottledLog

log = logging.getLogger("clipsync.auth")


def parse_rule(text: str) -> RateLimitItem:
    """``"20/minute"`` and the like; ValueError naming the rule otherwise."""
    try:
        return parse(text)
    except ValueError:
        raise ValueError(
            f"rate limit {text!r} is not like 20/minute (N/second|minute|hour|day)"
        ) from None


def limits_uri(redis_url: str) -> str:
    """Our Redis URL (see ``backends.cache.redis_tier``) in the ``limits`` spelling."""
    target = parse_url(redis_url)
    scheme, sep, rest = redis_url.partition("://")
    if target.mode == "cluster":
        return f"async+redis+cluster://{rest}"
    if target.mode == "sentinel":
        return f"async+redis+sentinel://{rest}"
    if scheme == "unix":
        return f"async+redis+unix://{rest}"
    return f"async+{scheme}{sep}{rest}"


class RateLimits:
    def __init__(
        self,
        rules: Mapping[str, str],
        redis_url: str = "",
        prefix: str = "clipsync:",
        timeout: float = 0.25,
    ) -> None:
        self.rules = {name: parse_rule(text) for name, text in rules.items()}
        self.local = MovingWindowRateLimiter(MemoryStorage())
        self.shared: MovingWindowRateLimiter | None = None
        self._storage: Storage | None = None
        if redis_url:
            options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            storage = storage_from_string(
                limits_uri(redis_url),
                implementation="redispy",
                key_prefix=f"{prefix}ratelimit",
                wrap_exceptions=True,
                **options,
            )
            assert isinstance(storage, Storage)  # the async+ schemes give asyncio storages
            self._storage = storage
            self.shared = MovingWindowRateLimiter(storage)
        self._trouble = ThrottledLog(log, 10.0)

    async def close(self) -> None:
        # limits has no close(); its redis-py client sits on the storage's bridge.
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def hit(self, rule: str, key: str) -> None:
        """Counts one request of ``key`` against ``rule``; TooManyRequests when over it."""
        item = self.rules[rule]
        limiter = self.local
        if self.shared is not None:
            try:
                if await self.shared.hit(item, rule, key):
                    return
                limiter = self.shared
            except Exception as exc:  # Redis unreachable: count here instead
                self._trouble.warn(f"rate limits counted in-process: Redis failed ({exc})"[:200])
                limiter = self.local
        if limiter is self.local and await self.local.hit(item, rule, key):
            return
        stats = await limiter.get_window_stats(item, rule, key)
        wait = int(stats.reset_time - time.time()) + 1
        raise TooManyRequests("too many requests: slow down and try again later", wait)
