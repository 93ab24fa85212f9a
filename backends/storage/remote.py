"""Storage over an object store (Azure Blob, S3, an HTTP origin, fsspec's memory store).

A backend supplies an ``ObjectStore``: the handful of primitive calls, each one request to the
store. ``RemoteStorage`` puts the hot-path behaviour around them once for all stores: retries
under the request deadline (``retry``), reads split and fetched concurrently (``readplan``),
conditional reads against the planned ETag, and a short-lived memory of ``stat`` answers so a
segment request of a file checked moments ago costs no extra round trip.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from backends import tracing
from backends.errors import ClipSyncError, SourceChanged
from backends.storage import readplan
from backends.storage.base import Entry, ObjectInfo, ScatterRead, scatter, short_read
from backends.storage.retry import Classifier, Failure, Retrier, RetryPolicy

T = TypeVar("T")


class ObjectStore(Protocol):
    """One backend's primitive calls. Paths are relative to the library root; errors are the
    store library's own and are classified by the backend's ``Classifier``."""

    async def head(self, path: str) -> ObjectInfo: ...

    # Bytes [start, end) of the version ``etag`` (None: whatever version is there now).
    async def get(self, path: str, start: int, end: int, etag: str | None) -> bytes: ...

    async def listdir(self, path: str) -> list[Entry]: ...

    # ``retry`` runs an idempotent step (a part upload) with the storage's retry policy.
    async def put(self, path: str, chunks: AsyncIterable[bytes], retry: Retrier) -> None: ...

    async def delete(self, path: str) -> None: ...

    async def close(self) -> None: ...


@dataclass
class StoreStats:
    """Requests made to the store (attempts, retries included) and bytes it sent."""

    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    bytes_read: int = 0
    # Told of every call: its operation, seconds, and what it raised (metrics).
    observe: Callable[[str, float, BaseException | None], object] | None = None

    @property
    def total(self) -> int:
        return sum(self.requests.values())


class _Counted:
    """An ObjectStore that counts and times what passes through it."""

    def __init__(self, store: ObjectStore, stats: StoreStats, backend: str) -> None:
        self.store = store
        self.stats = stats
        self.backend = backend

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        self.stats.requests[op] += 1
        observe = self.stats.observe
        with tracing.span(tracing.STORAGE, op=op, backend=self.backend):
            if observe is None:
                return await call
            start = time.perf_counter()
            try:
                result = await call
            except BaseException as exc:
                observe(op, time.perf_counter() - start, exc)
                raise
            observe(op, time.perf_counter() - start, None)
            return result

    async def head(self, path: str) -> ObjectInfo:
        return await self._timed("head", self.store.head(path))

    async def get(self, path: str, start: int, end: int, etag: str | None) -> bytes:
        data = await self._timed("get", self.store.get(path, start, end, etag))
        self.stats.bytes_read += len(data)
        return data

    async def listdir(self, path: str) -> list[Entry]:
        return await self._timed("list", self.store.listdir(path))

    async def put(self, path: str, chunks: AsyncIterable[bytes], retry: Retrier) -> None:
        await self._timed("put", self.store.put(path, chunks, retry))

    async def delete(self, path: str) -> None:
        await self._timed("delete", self.store.delete(path))

    async def close(self) -> None:
        await self.store.close()


@dataclass(frozen=True)
class RemoteOptions:
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    read_concurrency: int = 8  # ranged requests in flight per read call
    max_read_bytes: int = 8 * 2**20  # larger ranges are split
    stat_entries: int = 10_000  # remembered stat answers


class RemoteStorage:
    def __init__(
        self,
        uri: str,
        name: str,
        connect: Callable[[], Awaitable[ObjectStore]],
        classify: Classifier,
        options: RemoteOptions,
    ) -> None:
        self._uri = uri
        self.name = name
        self._connect = connect
        self.options = options
        self.retrier = Retrier(name, options.policy, classify)
        self._store: ObjectStore | None = None
        self._lock: asyncio.Lock | None = None
        self._known: dict[str, tuple[float, ObjectInfo]] = {}
        self.counts = StoreStats()

    @property
    def uri(self) -> str:
        return self._uri

    def observe(self, report: Callable[[str, float, str | None], object]) -> None:
        """Have ``report(op, seconds, failure)`` told of every call to the store; ``failure``
        is None for a success or an answer (an object not found), else what went wrong."""
        classify = self.retrier.classify

        def seen(op: str, seconds: float, exc: BaseException | None) -> None:
            failure = None
            if exc is not None and not isinstance(exc, asyncio.CancelledError):
                kind = classify(exc)[0]
                failure = None if kind is Failure.NOT_FOUND else kind.name.lower()
            report(op, seconds, failure)

        self.counts.observe = seen

    async def _open(self) -> ObjectStore:
        # Connected on first use, inside the event loop that will use it: async clients bind
        # their sessions to a loop.
        if self._store is not None:
            return self._store
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._store is None:
                store = await self.retrier.call("connect to", "", self._connect)
                self._store = _Counted(store, self.counts, self.name)
        return self._store

    async def stat(self, path: str, max_age: float = 0.0) -> ObjectInfo:
        now = time.monotonic()
        if max_age > 0:
            known = self._known.get(path)
            if known is not None and now - known[0] <= max_age:
                return known[1]
        store = await self._open()
        info = await self.retrier.call("stat", path, lambda: store.head(path))
        if len(self._known) >= self.options.stat_entries:
            self._known.clear()
        self._known[path] = (now, info)
        return info

    async def _get(
        self, store: ObjectStore, path: str, start: int, end: int, etag: str | None
    ) -> bytes:
        try:
            data = await self.retrier.call("read", path, lambda: store.get(path, start, end, etag))
        except SourceChanged:
            self._known.pop(path, None)  # the next stat must ask the store
            raise
        if len(data) != end - start:
            raise short_read(path, start, end - start, len(data))
        return data

    def _job(
        self, store: ObjectStore, path: str, start: int, end: int, etag: str | None
    ) -> Callable[[], Awaitable[bytes]]:
        return functools.partial(self._get, store, path, start, end, etag)

    async def _each(self, jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run ``jobs``, ``read_concurrency`` at a time; the first failure cancels the rest."""
        if len(jobs) == 1:
            return [await jobs[0]()]
        gate = asyncio.Semaphore(self.options.read_concurrency)

        async def gated(job: Callable[[], Awaitable[T]]) -> T:
            async with gate:
                return await job()

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(gated(job)) for job in jobs]
        except BaseExceptionGroup as failed:
            errors: list[BaseException] = list(failed.exceptions)
            ours = [e for e in errors if isinstance(e, ClipSyncError)]
            raise (ours or errors)[0] from None
        return [task.result() for task in tasks]

    async def read_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]], etag: str | None = None
    ) -> list[bytes]:
        store = await self._open()
        limit = self.options.max_read_bytes
        per_range = [readplan.split_ranges([span], limit) for span in ranges]
        pieces = [piece for split in per_range for piece in split]
        datas = await self._each([self._job(store, path, s, e, etag) for s, e in pieces])
        out, i = [], 0
        for split in per_range:
            count = len(split)
            out.append(datas[i] if count == 1 else b"".join(datas[i : i + count]))
            i += count
        return out

    async def read_range(self, path: str, start: int, end: int, etag: str | None = None) -> bytes:
        return (await self.read_ranges(path, [(start, end)], etag))[0]

    async def read_into(
        self, path: str, reads: Sequence[ScatterRead], etag: str | None = None
    ) -> None:
        store = await self._open()

        async def fill(part: readplan.Part) -> None:
            scatter(await self._get(store, path, part.start, part.end, etag), part.buffers)

        parts = readplan.split_reads(reads, self.options.max_read_bytes)
        await self._each([functools.partial(fill, p) for p in parts])

    async def list(self, path: str) -> list[Entry]:
        store = await self._open()
        entries = await self.retrier.call("list", path, lambda: store.listdir(path))
        return sorted(entries, key=lambda e: e.name)

    async def write(self, path: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        store = await self._open()
        self._known.pop(path, None)
        failed: list[BaseException] = []

        async def watched() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield chunk
            except BaseException as exc:
                failed.append(exc)
                raise

        # One attempt: a stream cannot be replayed. Its parts are retried inside ``put``.
        try:
            await self.retrier.guard(
                "write", path, lambda: store.put(path, watched(), self.retrier)
            )
        except Exception:
            if failed:  # the caller's stream broke (an uploader went away): its error, as is
                raise failed[0] from None
            raise
        return await self.stat(path)

    async def delete(self, path: str) -> None:
        store = await self._open()
        self._known.pop(path, None)
        await self.retrier.call("delete", path, lambda: store.delete(path))

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await store.close()
