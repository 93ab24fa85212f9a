"""Single-flight: concurrent calls for one key share one execution of the build."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


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

    def joining(self, key: Hashable) -> bool:
        """Whether a call for ``key`` now would wait on a build already running."""
        return key in self._pending

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
