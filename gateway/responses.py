"""HTTP semantics for generated media: ETag/304, Range/206/416, HEAD, caching headers, gzip.

The body of a segment is produced only when it is going to be sent: a HEAD, a 304 or a 416 costs
no media read, because the size of every generated resource is known from the index.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.ranges import RangeNotSatisfiable, parse_range
from packager.mux import SegmentBody

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
IMMUTABLE = "public, max-age={age}, immutable"
_GZIP_MIN_BYTES = 256


def etag(*parts: object) -> str:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
    return f'"{digest}"'


def _matches(header: str, tag: str) -> bool:
    """If-None-Match uses weak comparison (RFC 9110 13.1.2)."""
    if header.strip() == "*":
        return True
    bare = tag.removeprefix("W/")
    return any(c.strip().removeprefix("W/") == bare for c in header.split(","))


class ChunkedBody(Response):
    """A response whose body is a list of chunks (bytes or memoryviews), sent in order."""

    def __init__(
        self,
        parts: Sequence[bytes | bytearray | memoryview],
        status_code: int,
        headers: dict[str, str],
        media_type: str | None,
    ) -> None:
        self.parts = parts
        # The caller sets Content-Length (a HEAD sends none of the parts it announces).
        super().__init__(None, status_code, headers, media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        # One body message (granian streams many small ones far slower), passed as it is when it
        # already is one buffer: a segment is built in place and never copied again here.
        parts = self.parts
        single = len(parts) == 1 and isinstance(parts[0], bytes | bytearray)
        body = parts[0] if single else b"".join(parts)
        await send({"type": "http.response.body", "body": body})


def _base_headers(tag: str, cache_control: str) -> dict[str, str]:
    return {"etag": tag, "cache-control": cache_control, "accept-ranges": "bytes"}


def not_modified(request: Request, tag: str, cache_control: str) -> Response | None:
    header = request.headers.get("if-none-match")
    if header and _matches(header, tag):
        return Response(status_code=304, headers={"etag": tag, "cache-control": cache_control})
    return None


def _ranged(
    headers: dict[str, str],
    size: int,
    range_header: str | None,
    content_type: str,
    body: SegmentBody | bytes | bytearray | None,
) -> Response:
    try:
        byte_range = parse_range(range_header, size)
    except RangeNotSatisfiable:
        headers["content-range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    start, end = byte_range if byte_range else (0, size)
    headers["content-length"] = str(end - start)
    status = 200
    if byte_range:
        status = 206
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    parts: list[bytes | bytearray | memoryview] = []
    if isinstance(body, bytes | bytearray):
        parts = [body if (start, end) == (0, len(body)) else memoryview(body)[start:end]]
    elif body is not None:
        parts = body.slice(start, end)
    return ChunkedBody(parts, status, headers, content_type)


async def media(
    request: Request,
    *,
    size: int,
    tag: str,
    content_type: str,
    cache_control: str,
    produce: Callable[[], Awaitable[SegmentBody | bytes | bytearray]],
) -> Response:
    """Serve a generated binary resource whose ``size`` is known (or predicted) from the index."""
    cached = not_modified(request, tag, cache_control)
    if cached is not None:
        return cached
    headers = _base_headers(tag, cache_control)
    if_range = request.headers.get("if-range")
    range_header = request.headers.get("range") if if_range in (None, tag) else None
    if request.method == "HEAD":
        return _ranged(headers, size, range_header, content_type, None)
    try:
        parse_range(range_header, size)
    except RangeNotSatisfiable:
        return _ranged(headers, size, range_header, content_type, None)
    body = await produce()
    # Lengths come from the bytes produced; the prediction only spared HEAD and 416 the work.
    actual = len(body) if isinstance(body, bytes | bytearray) else body.size
    return _ranged(headers, actual, range_header, content_type, body)


class _PlaylistValue(msgspec.Struct, array_like=True, frozen=True):
    tag: str
    body: bytes
    sources: tuple[str, ...]


class Playlist:
    """Playlist text with its gzip form, built once and served many times; ``sources`` are the
    library paths it was made from (purging one of them drops it)."""

    def __init__(self, text: str, tag: str, sources: tuple[str, ...] = ()) -> None:
        self.body = text.encode("utf-8")
        self.tag = tag
        self.sources = sources
        self._gzipped: bytes | None = None

    @property
    def nbytes(self) -> int:
        return len(self.body) * 2 + 256

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self._gzipped

    def to_bytes(self) -> bytes:
        return msgspec.msgpack.encode(_PlaylistValue(self.tag, self.body, self.sources))

    @classmethod
    def from_bytes(cls, data: bytes) -> Playlist:
        value = msgspec.msgpack.decode(data, type=_PlaylistValue)
        return cls(value.body.decode("utf-8"), value.tag, value.sources)


def _accepts_gzip(request: Request) -> bool:
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def playlist(request: Request, item: Playlist, cache_control: str, allow_gzip: bool) -> Response:
    use_gzip = allow_gzip and len(item.body) >= _GZIP_MIN_BYTES and _accepts_gzip(request)
    # Each content coding is its own representation, so it gets its own validator.
    tag = item.tag[:-1] + '-gz"' if use_gzip else item.tag
    cached = not_modified(request, tag, cache_control)
    if cached is not None:
        return cached
    headers = {"etag": tag, "cache-control": cache_control, "vary": "Accept-Encoding"}
    body = item.body
    if use_gzip:
        body = item.gzipped()
        headers["content-encoding"] = "gzip"
    headers["content-length"] = str(len(body))
    parts = [] if request.method == "HEAD" else [body]
    return ChunkedBody(parts, 200, headers, PLAYLIST_TYPE)
