"""The storage protocol and its fsspec adapter.

Everything above this module speaks in paths relative to the library root, already checked by
``backends.paths.clean``. fsspec's ``Any``-typed surface stays inside this module.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import fsspec
import msgspec

from backends import paths
from backends.blocking import BlockingRunner
from backends.errors import BadMedia, MediaNotFound, SourceChanged, StorageUnavailable

Kind = Literal["file", "directory"]
# (file offset, buffers): the file's bytes from the offset fill the buffers one after another.
ScatterRead = tuple[int, Sequence[memoryview]]
_IOV_MAX = 1024
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


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
    """Read side of a media library. Paths are relative to the root and pre-cleaned."""

    @property
    def uri(self) -> str: ...

    async def stat(self, path: str) -> ObjectInfo: ...

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


def _short_read(path: str, offset: int, wanted: int, got: int) -> BadMedia:
    return BadMedia(
        f"{path} ended early: wanted {wanted} bytes at offset {offset}, got {got} "
        "(the file was truncated or replaced while being read)"
    )


def _kind(info: dict[str, Any]) -> Kind:
    return "directory" if info.get("type") == "directory" else "file"


def _etag(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag"):
        if info.get(key):
            return str(info[key]).strip('"')
    stamp = info.get("mtime", info.get("created", 0))
    stamp_ns = int(float(stamp.timestamp() if hasattr(stamp, "timestamp") else stamp) * 1e9)
    return f"{int(info.get('ino', 0)):x}-{stamp_ns:x}-{int(info.get('size') or 0):x}"


def _mtime(info: dict[str, Any]) -> float:
    stamp = info.get("mtime", info.get("created", 0))
    return float(stamp.timestamp() if hasattr(stamp, "timestamp") else stamp or 0)


class FsspecStorage:
    """A synchronous fsspec filesystem rooted at ``root``; calls run in bounded threads."""

    def __init__(self, fs: Any, root: str, uri: str, runner: BlockingRunner) -> None:
        self._fs = fs
        self._root = root.rstrip("/")
        self._uri = uri
        self._runner = runner

    @property
    def uri(self) -> str:
        return self._uri

    def _full(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root or "/"

    async def _call(self, func: Callable[[], Any], path: str) -> Any:
        try:
            return await self._runner.run(func)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise MediaNotFound(f"{path or '/'} not found") from None
        except PermissionError:
            raise MediaNotFound(f"{path or '/'} not found") from None
        except (TimeoutError, ConnectionError) as exc:
            raise StorageUnavailable(f"storage did not answer: {type(exc).__name__}") from None

    def _info(self, path: str) -> ObjectInfo:
        info = self._fs.info(self._full(path))
        return ObjectInfo(
            path=path,
            kind=_kind(info),
            size=int(info.get("size") or 0),
            etag=_etag(info),
            mtime=_mtime(info),
        )

    async def stat(self, path: str) -> ObjectInfo:
        info: ObjectInfo = await self._call(lambda: self._info(path), path)
        return info

    def _expect(self, path: str, etag: str | None) -> None:
        if etag is not None and self._info(path).etag != etag:
            raise SourceChanged(path)

    def _read_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]], etag: str | None = None
    ) -> list[bytes]:
        self._expect(path, etag)
        with self._fs.open(self._full(path), "rb", block_size=0, cache_type="none") as handle:
            out = []
            for start, end in ranges:
                handle.seek(start)
                out.append(handle.read(end - start))
            return out

    async def read_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]], etag: str | None = None
    ) -> list[bytes]:
        result: list[bytes] = await self._call(lambda: self._read_ranges(path, ranges, etag), path)
        return result

    async def read_range(self, path: str, start: int, end: int, etag: str | None = None) -> bytes:
        return (await self.read_ranges(path, [(start, end)], etag))[0]

    def _read_into(self, path: str, reads: Sequence[ScatterRead], etag: str | None) -> None:
        self._expect(path, etag)
        with self._fs.open(self._full(path), "rb", block_size=0, cache_type="none") as handle:
            for offset, buffers in reads:
                wanted = sum(len(b) for b in buffers)
                handle.seek(offset)
                data = memoryview(handle.read(wanted))
                if len(data) != wanted:
                    raise _short_read(path, offset, wanted, len(data))
                pos = 0
                for buffer in buffers:
                    buffer[:] = data[pos : pos + len(buffer)]
                    pos += len(buffer)

    async def read_into(
        self, path: str, reads: Sequence[ScatterRead], etag: str | None = None
    ) -> None:
        await self._call(lambda: self._read_into(path, reads, etag), path)

    def _list(self, path: str) -> list[Entry]:
        full = self._full(path)
        if not self._fs.isdir(full):
            raise NotADirectoryError(path)
        entries = []
        for info in self._fs.ls(full, detail=True):
            name = posixpath.basename(str(info["name"]).rstrip("/"))
            entries.append(Entry(name=name, kind=_kind(info), size=int(info.get("size") or 0)))
        return sorted(entries, key=lambda e: e.name)

    async def list(self, path: str) -> list[Entry]:
        result: list[Entry] = await self._call(lambda: self._list(path), path)
        return result


def _advance(buffers: Sequence[memoryview], count: int) -> list[memoryview]:
    """The buffers still to fill once ``count`` bytes have gone into the first of them."""
    rest = []
    for buffer in buffers:
        if count >= len(buffer):
            count -= len(buffer)
            continue
        rest.append(buffer[count:] if count else buffer)
        count = 0
    return rest


def _batches(
    reads: Sequence[ScatterRead],
) -> Iterator[tuple[int, int, int, Sequence[memoryview], int]]:
    """(read number, first buffer, file offset, buffers, bytes) per preadv call: at most
    IOV_MAX buffers each."""
    for i, (offset, buffers) in enumerate(reads):
        for first in range(0, len(buffers), _IOV_MAX):
            batch = buffers[first : first + _IOV_MAX]
            wanted = sum(len(b) for b in batch)
            yield i, first, offset, batch, wanted
            offset += wanted


def _read_cached(fd: int, reads: Sequence[ScatterRead]) -> list[ScatterRead]:
    """Fill what the page cache can without blocking; return the reads still to do."""
    for i, first, offset, batch, wanted in _batches(reads):
        try:
            got = os.preadv(fd, batch, offset, _NOWAIT) if _NOWAIT else 0
        except BlockingIOError:
            got = 0
        except OSError as exc:  # the filesystem does not do RWF_NOWAIT
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            got = 0
        if got < wanted:
            return [(offset + got, _advance(reads[i][1][first:], got)), *reads[i + 1 :]]
    return []


def _read_blocking(fd: int, reads: Sequence[ScatterRead], path: str) -> None:
    for _, _, offset, batch, wanted in _batches(reads):
        got = os.preadv(fd, batch, offset)
        if got != wanted:
            raise _short_read(path, offset, wanted, got)


def _local_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class LocalStorage(FsspecStorage):
    """A folder on this machine. Symlinks may not lead outside the root.

    ``stat`` runs inline: a local stat takes microseconds, while a hop to a thread costs some
    200 µs of CPU. Reads stay in threads (a cold disk may take milliseconds), open the file once,
    check its identity against the caller's ETag and read with pread/preadv.
    """

    _PARENT_TTL = 1.0  # seconds a directory's "inside the root" verdict is trusted

    def __init__(self, fs: Any, root: str, uri: str, runner: BlockingRunner) -> None:
        super().__init__(fs, root, uri, runner)
        self._parents: dict[str, tuple[float, bool]] = {}

    def _inside(self, real: str) -> bool:
        return real == self._root or real.startswith(self._root + os.sep)

    def _parent_inside(self, directory: str) -> bool:
        now = time.monotonic()
        known = self._parents.get(directory)
        if known is not None and now - known[0] < self._PARENT_TTL:
            return known[1]
        verdict = self._inside(os.path.realpath(directory))
        if len(self._parents) > 4096:
            self._parents.clear()
        self._parents[directory] = (now, verdict)
        return verdict

    def _checked(self, path: str) -> str:
        full = self._full(path)
        if not path:
            return full
        parent = os.path.dirname(full)
        if not self._parent_inside(parent):
            raise FileNotFoundError(path)
        if os.path.islink(full) and not self._inside(os.path.realpath(full)):
            raise FileNotFoundError(path)
        return full

    def _info(self, path: str) -> ObjectInfo:
        st = os.stat(self._checked(path))
        kind: Kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        return ObjectInfo(path, kind, st.st_size, _local_etag(st), st.st_mtime)

    async def stat(self, path: str) -> ObjectInfo:
        try:
            return self._info(path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            raise MediaNotFound(f"{path or '/'} not found") from None

    def _open(self, path: str, etag: str | None) -> int:
        fd = os.open(self._checked(path), os.O_RDONLY)
        if etag is not None and _local_etag(os.fstat(fd)) != etag:
            os.close(fd)
            raise SourceChanged(path)
        return fd

    def _read_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]], etag: str | None = None
    ) -> list[bytes]:
        fd = self._open(path, etag)
        try:
            return [os.pread(fd, end - start, start) for start, end in ranges]
        finally:
            os.close(fd)

    async def read_into(
        self, path: str, reads: Sequence[ScatterRead], etag: str | None = None
    ) -> None:
        # preadv puts the file's bytes straight where they belong: one copy from the page cache.
        # What the page cache already holds is read right here (RWF_NOWAIT never blocks); only
        # the rest, which needs the disk, goes to a thread.
        try:
            fd = self._open(path, etag)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            raise MediaNotFound(f"{path} not found") from None
        try:
            rest = _read_cached(fd, reads)
            if rest:
                # Not abandoned on cancellation: the fd stays open until the thread is done.
                await self._runner.run(_read_blocking, fd, rest, path)
        finally:
            os.close(fd)

    def _list(self, path: str) -> list[Entry]:
        self._checked(path)
        return super()._list(path)


def open_storage(library: str, runner: BlockingRunner) -> Storage:
    """Build the storage for ``library``: a folder path, ``file://…`` or ``memory://…``."""
    scheme = urlsplit(library).scheme if "://" in library else "file"
    if scheme == "file":
        folder = library[len("file://") :] if library.startswith("file://") else library
        root = os.path.realpath(os.path.expanduser(folder))
        if not os.path.isdir(root):
            raise MediaNotFound(f"library folder {folder} does not exist")
        fs = fsspec.filesystem("file")
        return LocalStorage(fs, root, f"file://{root}", runner)
    if scheme == "memory":
        root = "/" + paths.clean(library[len("memory://") :].strip("/"))
        fs = fsspec.filesystem("memory")
        return FsspecStorage(fs, root.rstrip("/"), f"memory://{root}", runner)
    raise ValueError(f"unsupported storage URL scheme {scheme!r} (supported: file, memory)")
