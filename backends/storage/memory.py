"""fsspec's in-memory filesystem as an object store: for tests, demos and throwaway libraries.

Every call is a dictionary operation, so it runs inline in the event loop. It goes through
``RemoteStorage`` like the network stores, which keeps that path exercised without a server.
"""

from __future__ import annotations

import errno
import io
import posixpath
from collections.abc import AsyncIterable
from typing import Any

import fsspec

from backends.storage.base import Entry, Kind, ObjectInfo
from backends.storage.retry import Failure, Retrier


class _Changed(Exception):
    """The object is not the version a conditional read asked for."""


def classify(exc: BaseException) -> tuple[Failure, str]:
    if isinstance(exc, _Changed):
        return Failure.CHANGED, "changed"
    if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return Failure.NOT_FOUND, "not found"
    if isinstance(exc, OSError) and exc.errno == errno.EINVAL:
        return Failure.BAD_RANGE, "range outside the object"
    return Failure.TRANSIENT, type(exc).__name__


class MemoryStore:
    def __init__(self, root: str) -> None:
        # One process-wide store, as fsspec keeps it: two libraries on memory:// share files.
        self.fs: Any = fsspec.filesystem("memory")
        self.root = root.rstrip("/")

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root or "/"

    def _etag(self, full: str) -> str:
        # A rewrite replaces the MemoryFile object, so its identity is a version.
        item = self.fs.store.get(full)
        return f"{id(item):x}-{len(item.getbuffer()) if item is not None else 0:x}"

    async def head(self, path: str) -> ObjectInfo:
        full = self._full(path)
        info = self.fs.info(full)
        kind: Kind = "directory" if info.get("type") == "directory" else "file"
        created = info.get("created")
        mtime = created.timestamp() if hasattr(created, "timestamp") else 0.0
        etag = self._etag(full) if kind == "file" else "dir"
        return ObjectInfo(path, kind, int(info.get("size") or 0), etag, mtime)

    async def get(self, path: str, start: int, end: int, etag: str | None) -> bytes:
        full = self._full(path)
        if full not in self.fs.store:
            raise FileNotFoundError(path)
        if etag is not None and self._etag(full) != etag:
            raise _Changed(path)
        data: bytes = self.fs.cat_file(full, start, end)
        return data

    async def listdir(self, path: str) -> list[Entry]:
        full = self._full(path)
        if not self.fs.isdir(full):
            raise NotADirectoryError(path)
        entries = []
        for info in self.fs.ls(full, detail=True):
            name = posixpath.basename(str(info["name"]).rstrip("/"))
            kind: Kind = "directory" if info.get("type") == "directory" else "file"
            entries.append(Entry(name, kind, int(info.get("size") or 0)))
        return entries

    async def put(self, path: str, chunks: AsyncIterable[bytes], retry: Retrier) -> None:
        buffer = io.BytesIO()
        async for chunk in chunks:
            buffer.write(chunk)
        # Swapped in whole: readers never see a part.
        self.fs.pipe_file(self._full(path), buffer.getvalue())

    async def delete(self, path: str) -> None:
        full = self._full(path)
        if full in self.fs.store:
            self.fs.rm_file(full)

    async def close(self) -> None:
        return None
