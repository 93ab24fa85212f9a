"""A read-only HTTP(S) origin (a static web server, another CDN, a bucket's website endpoint).

fsspec's HTTP filesystem provides the aiohttp session and the directory-listing parser; stat
and reads are made here because they need what fsspec does not do: ``If-Match`` on ranged
reads, and refusing a 200 answer to a Range request (an origin that ignores ranges would send
the whole file for every segment). A folder is recognised by a trailing slash, which is where
web servers redirect a folder's URL; listing a folder needs the server's index page (nginx
``autoindex on``).
"""

from __future__ import annotations

import email.utils
import posixpath
from collections.abc import AsyncIterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from backends.errors import StorageUnavailable
from backends.storage.base import Entry, Kind, ObjectInfo
from backends.storage.retry import Failure, Retrier


class HttpStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class ReadOnly(StorageUnavailable):
    def __init__(self) -> None:
        super().__init__("the HTTP origin is read-only: writes need another storage", 3600)


def classify(exc: BaseException) -> tuple[Failure, str]:
    status = getattr(exc, "status", None)
    if isinstance(exc, FileNotFoundError) or status in (404, 410):
        return Failure.NOT_FOUND, "not found"
    if status == 412:
        return Failure.CHANGED, "changed"
    if status == 416:
        return Failure.BAD_RANGE, "range outside the object"
    if isinstance(exc, PermissionError) or status in (401, 403):
        return Failure.DENIED, f"HTTP {status}" if status else "denied"
    return Failure.TRANSIENT, f"HTTP {status}" if status else type(exc).__name__


def _mtime(headers: Any) -> float:
    text = headers.get("Last-Modified")
    if not text:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


class HttpStore:
    def __init__(self, fs: Any, session: Any, base: str) -> None:
        self.fs = fs
        self.session = session
        self.base = base.rstrip("/")

    @classmethod
    async def connect(cls, base: str, seconds: float) -> HttpStore:
        import aiohttp
        from fsspec.implementations.http import HTTPFileSystem

        limits = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
        fs = HTTPFileSystem(
            asynchronous=True, skip_instance_cache=True, client_kwargs={"timeout": limits}
        )
        return cls(fs, await fs.set_session(), base)

    def _url(self, path: str, folder: bool = False) -> str:
        url = f"{self.base}/{quote(path)}" if path else self.base + "/"
        return url + "/" if folder and path else url

    async def head(self, path: str) -> ObjectInfo:
        url = self._url(path)
        headers = {"Accept-Encoding": "identity"}
        async with self.session.head(url, headers=headers, allow_redirects=True) as r:
            if r.status >= 400:
                raise HttpStatus(r.status)
            if urlsplit(str(r.url)).path.endswith("/"):
                return ObjectInfo(path=path, kind="directory", size=0, etag="dir", mtime=0.0)
            length = r.headers.get("Content-Length")
            if length is None:
                raise StorageUnavailable(
                    f"the HTTP origin gives no Content-Length for {path}: cannot serve it", 60
                )
            size = int(length)
            tag = r.headers.get("ETag")
            modified = r.headers.get("Last-Modified")
            # Without an ETag the version is the modification time; without either, only the
            # size tells versions apart.
            etag = tag or (f"lm:{modified}:{size}" if modified else f"size:{size}")
            return ObjectInfo(path=path, kind="file", size=size, etag=etag, mtime=_mtime(r.headers))

    async def get(self, path: str, start: int, end: int, etag: str | None) -> bytes:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        if etag and etag.startswith('"'):  # strong ETag: the origin compares it for us
            headers["If-Match"] = etag
        elif etag and etag.startswith("lm:"):
            headers["If-Unmodified-Since"] = etag.split(":", 1)[1].rsplit(":", 1)[0]
        async with self.session.get(self._url(path), headers=headers) as r:
            if r.status == 200:
                raise StorageUnavailable(
                    "the HTTP origin ignored a Range request: it must support byte ranges", 60
                )
            if r.status != 206:
                raise HttpStatus(r.status)
            served = r.headers.get("Content-Range", "")
            if not served.startswith(f"bytes {start}-"):
                raise StorageUnavailable(f"the HTTP origin answered another range ({served})", 60)
            data: bytes = await r.read()
            return data

    async def listdir(self, path: str) -> list[Entry]:
        folder = self._url(path, folder=True)
        links = await self.fs._ls(folder, detail=True)
        entries = []
        for link in links:
            name = str(link["name"])
            if not name.startswith(folder):
                continue  # the parent, sorting links, other sites
            rest = unquote(name[len(folder) :])
            if not rest or "/" in rest.rstrip("/") or rest.startswith(("?", "#")):
                continue
            kind: Kind = "directory" if rest.endswith("/") else "file"
            entries.append(Entry(posixpath.basename(rest.rstrip("/")), kind, 0))
        return entries

    async def put(self, path: str, chunks: AsyncIterable[bytes], retry: Retrier) -> None:
        raise ReadOnly()

    async def delete(self, path: str) -> None:
        raise ReadOnly()

    async def close(self) -> None:
        await self.session.close()
