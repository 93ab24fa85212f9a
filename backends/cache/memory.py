"""The in-process tier: one byte-budgeted LRU per kind of object, with expiry and purge tags.

Values are live objects (a parsed index with its plan, a playlist with its gzip form, segment
bytes): a hit costs a dictionary lookup, no decoding. Each kind has its own budget, so a burst
of segments never pushes out the indexes every request needs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class _Item(Generic[V]):
    value: V
    size: int
    expires: float  # time.monotonic() deadline; inf: no expiry
    tags: frozenset[str]


class ByteBudgetLRU(Generic[V]):
    """Least-recently-used mapping whose values' declared sizes never sum past ``budget``.

    A value larger than the whole budget is not stored (the caller still gets it). An expired
    value counts as a miss and is dropped when looked up.
    """

    def __init__(self, budget: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.used = 0
        self.stats = CacheStats()
        self._clock = clock
        self._items: OrderedDict[Hashable, _Item[V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None or item.expires <= self._clock():
            if item is not None:
                self.discard(key)
            self.stats.misses += 1
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return item.value

    def put(
        self,
        key: Hashable,
        value: V,
        size: int,
        ttl: float = float("inf"),
        tags: Iterable[str] = (),
    ) -> None:
        self.discard(key)
        if size > self.budget or ttl <= 0:
            return
        self._items[key] = _Item(value, size, self._clock() + ttl, frozenset(tags))
        self.used += size
        while self.used > self.budget:
            _, evicted = self._items.popitem(last=False)
            self.used -= evicted.size
            self.stats.evictions += 1

    def discard(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old.size

    def purge(self, tags: frozenset[str]) -> int:
        """Drop every value carrying one of ``tags``; returns how many were dropped."""
        doomed = [key for key, item in self._items.items() if item.tags & tags]
        for key in doomed:
            self.discard(key)
        return len(doomed)


class MemoryTier:
    """One LRU per kind; a kind with a zero budget keeps nothing."""

    name = "memory"

    def __init__(self, budgets: Mapping[str, int]) -> None:
        self.lrus: dict[str, ByteBudgetLRU[object]] = {
            kind: ByteBudgetLRU(budget) for kind, budget in budgets.items()
        }

    def get(self, kind: str, key: str) -> object | None:
        return self.lrus[kind].get(key)

    def put(
        self, kind: str, key: str, value: object, size: int, ttl: float, tags: Iterable[str]
    ) -> None:
        self.lrus[kind].put(key, value, size, ttl, tags)

    def purge(self, tags: frozenset[str]) -> int:
        return sum(lru.purge(tags) for lru in self.lrus.values())
