"""The storage protocol and its fsspec adapter.

Everything above this module speaks in paths relative to the library root, already checked by
``backends.paths.clean``. fsspec's ``Any``-typed surface stays inside this module.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import fsspec
import msgspec

from backends import paths
from backends.blocking import BlockingRunner
from backends.errors import MediaNotFound, StorageUnavailable

Kind = Literal["file", "directory"]


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

    async def read_range(self, path: str, start: int, end: int) -> bytes: ...

    async def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]: ...

    async def list(self, path: str) -> list[Entry]: ...


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

    def _read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        with self._fs.open(self._full(path), "rb", block_size=0, cache_type="none") as handle:
            out = []
            for start, end in ranges:
                handle.seek(start)
                out.append(handle.read(end - start))
            return out

    async def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        result: list[bytes] = await self._call(lambda: self._read_ranges(path, ranges), path)
        return result

    async def read_range(self, path: str, start: int, end: int) -> bytes:
        return (await self.read_ranges(path, [(start, end)]))[0]

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


class LocalStorage(FsspecStorage):
    """A folder on this machine. Symlinks may not lead outside the root; reads use pread."""

    def _checked(self, path: str) -> str:
        full = os.path.realpath(self._full(path))
        if full != self._root and not full.startswith(self._root + os.sep):
            raise FileNotFoundError(path)
        return full

    def _info(self, path: str) -> ObjectInfo:
        self._checked(path)
        return super()._info(path)

    def _read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        fd = os.open(self._checked(path), os.O_RDONLY)
        try:
            return [os.pread(fd, end - start, start) for start, end in ranges]
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
