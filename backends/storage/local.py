"""A folder on this machine as the media library.

Everything here is a system call: ``stat`` runs inline (microseconds, while a hop to a thread
costs some 200 µs of CPU); reads use preadv straight into the caller's buffers, inline for
what the page cache holds and in a thread for what needs the disk; writes go to a hidden
temporary file in the target folder and are renamed into place, so a reader sees the old file
or the whole new one. Symlinks may not lead outside the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
import uuid
from collections.abc import AsyncIterable, Callable, Iterator, Sequence
from typing import TypeVar, TypeVarTuple, Unpack

from backends.blocking import BlockingRunner
from backends.errors import MediaNotFound, SourceChanged, StorageUnavailable
from backends.storage.base import Entry, Kind, ObjectInfo, ScatterRead, short_read

_IOV_MAX = 1024
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
# Temporary files of writes in progress: hidden, and never a media name.
PARTIAL_PREFIX = ".partial-"
WRITE_BATCH = 1024 * 1024  # bytes gathered before one write call
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


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
            raise short_read(path, offset, wanted, got)


def _local_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class LocalStorage:
    _PARENT_TTL = 1.0  # seconds a directory's "inside the root" verdict is trusted

    def __init__(self, root: str, runner: BlockingRunner) -> None:
        self._root = root.rstrip("/") or "/"
        self._runner = runner
        self._parents: dict[str, tuple[float, bool]] = {}

    @property
    def uri(self) -> str:
        return f"file://{self._root}"

    def _full(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root

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

    def local_path(self, path: str) -> str:
        """The file's own path, for tools that read files (PyAV probing an upload)."""
        try:
            return self._checked(path)
        except FileNotFoundError:
            raise MediaNotFound(f"{path} not found") from None

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

    async def stat(self, path: str, max_age: float = 0.0) -> ObjectInfo:
        try:
            st = os.stat(self._checked(path))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            raise MediaNotFound(f"{path or '/'} not found") from None
        kind: Kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        return ObjectInfo(path, kind, st.st_size, _local_etag(st), st.st_mtime)

    def _open(self, path: str, etag: str | None) -> int:
        try:
            fd = os.open(self._checked(path), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
            raise MediaNotFound(f"{path} not found") from None
        if etag is not None and _local_etag(os.fstat(fd)) != etag:
            os.close(fd)
            raise SourceChanged(path)
        return fd

    def _read_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]], etag: str | None
    ) -> list[bytes]:
        fd = self._open(path, etag)
        try:
            return [os.pread(fd, end - start, start) for start, end in ranges]
        finally:
            os.close(fd)

    async def read_ranges(
        self, path: str, ranges: Sequence[tuple[int, int]], etag: str | None = None
    ) -> list[bytes]:
        return await self._runner.run(self._read_ranges, path, ranges, etag)

    async def read_range(self, path: str, start: int, end: int, etag: str | None = None) -> bytes:
        return (await self.read_ranges(path, [(start, end)], etag))[0]

    async def read_into(
        self, path: str, reads: Sequence[ScatterRead], etag: str | None = None
    ) -> None:
        # preadv puts the file's bytes straight where they belong: one copy from the page cache.
        # What the page cache already holds is read right here (RWF_NOWAIT never blocks); only
        # the rest, which needs the disk, goes to a thread.
        fd = self._open(path, etag)
        try:
            rest = _read_cached(fd, reads)
            if rest:
                # Not abandoned on cancellation: the fd stays open until the thread is done.
                await self._runner.run(_read_blocking, fd, rest, path)
        finally:
            os.close(fd)

    def _list(self, path: str) -> list[Entry]:
        entries = []
        with os.scandir(self._checked(path)) as found:
            for item in found:
                if item.name.startswith(PARTIAL_PREFIX):
                    continue
                try:
                    is_dir = item.is_dir()
                    size = 0 if is_dir else item.stat().st_size
                except OSError:
                    continue  # vanished or a dangling symlink
                entries.append(Entry(item.name, "directory" if is_dir else "file", size))
        return sorted(entries, key=lambda e: e.name)

    async def list(self, path: str) -> list[Entry]:
        try:
            return await self._runner.run(self._list, path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            raise MediaNotFound(f"{path or '/'} not found") from None

    async def write(self, path: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        if not path:
            raise MediaNotFound("cannot write the library root")
        full = self._full(path)
        folder, name = os.path.split(full)
        if not self._inside(await self._io(path, os.path.realpath, folder)):
            raise MediaNotFound(f"{path} not found")
        await self._io(path, os.makedirs, folder, 0o755, True)
        temp = os.path.join(folder, f"{PARTIAL_PREFIX}{uuid.uuid4().hex}-{name}")
        fd = await self._io(path, os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        # An error of the stream itself (the uploader went away) passes through unchanged.
        with _removed_on_error(temp):
            try:
                await self._pour(path, fd, chunks)
            finally:
                os.close(fd)
            await self._io(path, _publish, temp, full)
        return await self.stat(path)

    async def append(self, path: str, at: int, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        """Writes ``chunks`` into ``path`` from byte ``at`` on (the file is created when ``at``
        is 0 and cut to ``at`` first: bytes past it are left over from a write that was not
        accounted for). Not atomic, for files nobody reads while they grow (upload parts): a
        resumed upload then needs no join. A stream error cuts the file back to ``at``."""
        full = self._full(path)
        folder = os.path.dirname(full)
        if not self._inside(await self._io(path, os.path.realpath, folder)):
            raise MediaNotFound(f"{path} not found")
        await self._io(path, os.makedirs, folder, 0o755, True)
        flags = os.O_WRONLY | (os.O_CREAT if at == 0 else 0)
        try:
            fd = await self._runner.run(os.open, full, flags, 0o644)
        except FileNotFoundError:
            raise MediaNotFound(f"{path} not found") from None
        except OSError as exc:
            reason = os.strerror(exc.errno or 0)
            raise StorageUnavailable(f"cannot write {path}: {reason}") from None
        try:
            size = (await self._io(path, os.fstat, fd)).st_size
            if size < at:
                raise MediaNotFound(f"{path} holds {size} bytes, not {at}: cannot write at {at}")
            await self._io(path, os.ftruncate, fd, at)
            await self._io(path, os.lseek, fd, at, os.SEEK_SET)
            try:
                await self._pour(path, fd, chunks)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, at)
                raise
        finally:
            os.close(fd)
        return await self.stat(path)

    async def _pour(self, path: str, fd: int, chunks: AsyncIterable[bytes]) -> None:
        """Writes the stream at ``fd``'s position, then makes it durable."""
        # ASGI bodies come in 64 KB pieces: one thread hop per MB, not per piece.
        pending: list[bytes] = []
        size = 0
        async for chunk in chunks:
            pending.append(chunk)
            size += len(chunk)
            if size >= WRITE_BATCH:
                await self._io(path, _write_all, fd, b"".join(pending))
                pending, size = [], 0
        if pending:
            await self._io(path, _write_all, fd, b"".join(pending))
        await self._io(path, os.fsync, fd)

    async def move(self, source: str, target: str) -> ObjectInfo:
        """Rename ``source`` to ``target`` inside the library (atomic, durable): joining an
        upload of one part costs a rename, not a copy."""
        try:
            full, into = self._checked(source), self._full(target)
        except FileNotFoundError:
            raise MediaNotFound(f"{source} not found") from None
        folder = os.path.dirname(into)
        if not self._inside(await self._io(target, os.path.realpath, folder)):
            raise MediaNotFound(f"{target} not found")
        await self._io(target, os.makedirs, folder, 0o755, True)
        await self._io(target, _publish, full, into)
        return await self.stat(target)

    async def _io(self, path: str, func: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        try:
            return await self._runner.run(func, *args)
        except OSError as exc:
            message = f"cannot write {path}: {os.strerror(exc.errno or 0)}"
            raise StorageUnavailable(message) from None

    async def delete(self, path: str) -> None:
        try:
            os.unlink(self._checked(path))
        except FileNotFoundError:
            return
        except (IsADirectoryError, NotADirectoryError, PermissionError):
            raise MediaNotFound(f"{path} is not a file") from None

    async def close(self) -> None:
        return None


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _publish(temp: str, full: str) -> None:
    """Rename into place and make the rename durable."""
    os.replace(temp, full)
    folder = os.open(os.path.dirname(full), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextlib.contextmanager
def _removed_on_error(temp: str) -> Iterator[None]:
    # BaseException: a cancelled upload (client gone) leaves no temporary file behind either.
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
