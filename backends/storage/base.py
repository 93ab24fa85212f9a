"""What every storage backend offers: the Storage protocol and the records it returns.

Everything above ``backends.storage`` speaks in paths relative to the library root, already
checked by ``backends.paths.clean``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Literal, Protocol

import msgspec

from backends.errors import BadMedia

Kind = Literal["file", "directory"]
# (file offset, buffers): the file's bytes from the offset fill the buffers one after another.
ScatterRead = tuple[int, Sequence[memoryview]]


class ObjectInfo(msgspec.Struct, frozen=True):
    path: str
    kind: Kind
    size: int
    # Changes whenever the content may have changed; caches key on it.
    etag: str
    mtime: float


class Entry(msgspec.Struct, frozen=True):
    name: str
    kind: Kind
    size: int


class Storage(Protocol):
    """A media library. Paths are relative to the root and pre-cleaned."""

    @property
    def uri(self) -> str:
        """Where the library lives, without credentials: part of every cache key."""
        ...

    # ``max_age``: a remembered answer at most this many seconds old will do (segment requests
    # of a file whose version the caller checked moments ago); 0 asks the store itself.
    async def stat(self, path: str, max_age: float = 0.0) -> ObjectInfo: ...

    # ``etag``: the version of the file the caller planned the read for (from ``stat``). If the
    # file has been replaced since, the read fails with SourceChanged instead of returning bytes
    # of the new file cut where the old one's samples were.
    async def read_range(
        self, path: str, start: int, end: int, etag: str | None = None
    ) -> bytes: ...

    async def read_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]], etag: str | None = None
    ) -> list[bytes]: ...

    async def read_into(
        self, path: str, reads: Sequence[ScatterRead], etag: str | None = None
    ) -> None: ...

    async def list(self, path: str) -> list[Entry]: ...

    # Streamed and atomic: readers see the old object or the whole new one, never a part.
    async def write(self, path: str, chunks: AsyncIterable[bytes]) -> ObjectInfo: ...

    async def delete(self, path: str) -> None: ...

    async def close(self) -> None: ...


def short_read(path: str, offset: int, wanted: int, got: int) -> BadMedia:
    return BadMedia(
        f"{path} ended early: wanted {wanted} bytes at offset {offset}, got {got} "
        "(the file was truncated or replaced while being read)"
    )


def scatter(data: bytes | memoryview, buffers: Sequence[memoryview]) -> None:
    """Copy ``data`` into ``buffers`` one after another (their lengths sum to len(data))."""
    view = memoryview(data)
    pos = 0
    for buffer in buffers:
        buffer[:] = view[pos : pos + len(buffer)]
        pos += len(buffer)


READ_BLOCK = 8 * 1024 * 1024


async def read_blocks(
    storage: Storage, path: str, size: int, block: int = READ_BLOCK
) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of ``path`` in ``block``-sized reads: a whole object through
    bounded memory (joining upload parts, copying an original to a local file)."""
    for start in range(0, size, block):
        yield await storage.read_range(path, start, min(size, start + block))
