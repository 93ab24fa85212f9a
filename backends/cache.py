"""In-process cache: a byte-budgeted LRU, and single-flight for concurrent identical misses."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class ByteBudgetLRU(Generic[V]):
    """Least-recently-used mapping whose values' declared sizes never sum past ``budget``.

    A value larger than the whole budget is not stored (the caller still gets it).
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.stats = CacheStats()
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None:
            self.stats.misses += 1
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return item[0]

    def put(self, key: Hashable, value: V, size: int) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old[1]
        if size > self.budget:
            return
        self._items[key] = (value, size)
        self.used += size
        while self.used > self.budget:
            _, (_, evicted) = self._items.popitem(last=False)
            self.used -= evicted
            self.stats.evictions += 1

    def discard(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old[1]


class SingleFlight(Generic[V]):
    """Concurrent calls for one key share one execution of ``build`` (and its exception).

    The build runs as its own task: a client that disconnects cancels only its own wait, never
    the work other clients are waiting for.
    """

    def __init__(self) -> None:
        self._pending: dict[Hashable, asyncio.Task[V]] = {}
        self.coalesced = 0

    def _done(self, key: Hashable, task: asyncio.Task[V]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unwatched failure is not logged as lost

    async def run(self, key: Hashable, build: Callable[[], Awaitable[V]]) -> V:
        task = self._pending.get(key)
        if task is None:

            async def _build() -> V:
                return await build()

            task = asyncio.ensure_future(_build())
            self._pending[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        else:
            self.coalesced += 1
        return await asyncio.shield(task)
