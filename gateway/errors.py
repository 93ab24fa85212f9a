"""The one table from domain exceptions to HTTP statuses, and problem+json responses."""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from backends.errors import (
    BadMedia,
    CatalogUnavailable,
    ClipSyncError,
    Conflict,
    Forbidden,
    InvalidRequest,
    MediaNotFound,
    NotFound,
    RequestTooLarge,
    SegmentOutOfRange,
    StorageUnavailable,
    TooManyRequests,
    Unauthorized,
)
from gateway import tus
from gateway.logs import REQUEST_ID
from gateway.ranges import RangeNotSatisfiable

log = logging.getLogger("clipsync.gateway")

# Most specific first: UnsupportedMedia and MisalignedLadder are BadMedia.
STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (MediaNotFound, 404, "Not Found"),
    (NotFound, 404, "Not Found"),
    (RequestTooLarge, 413, "Content Too Large"),
    (tus.UploadTooLarge, 413, "Content Too Large"),
    (tus.ChecksumMismatch, 460, "Checksum Mismatch"),
    (tus.UnsupportedContent, 415, "Unsupported Media Type"),
    (tus.VersionMismatch, 412, "Precondition Failed"),
    (InvalidRequest, 400, "Bad Request"),
    (Unauthorized, 401, "Unauthorized"),
    (Forbidden, 403, "Forbidden"),
    (Conflict, 409, "Conflict"),
    (TooManyRequests, 429, "Too Many Requests"),
    (CatalogUnavailable, 503, "Catalog Unavailable"),
    (SegmentOutOfRange, 404, "Not Found"),
    (BadMedia, 422, "Unprocessable Media"),
    (StorageUnavailable, 503, "Storage Unavailable"),
    (RangeNotSatisfiable, 416, "Range Not Satisfiable"),
)


class Problem(msgspec.Struct, omit_defaults=True):
    title: str
    status: int
    detail: str
    type: str = "about:blank"


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    body = msgspec.json.encode(Problem(title=title, status=status, detail=detail))
    all_headers = {"cache-control": "no-store", **(headers or {})}
    return Response(body, status, all_headers, media_type="application/problem+json")


def status_of(exc: Exception) -> tuple[int, str]:
    for kind, status, title in STATUS:
        if isinstance(exc, kind):
            return status, title
    return 500, "Internal Server Error"


async def handle_domain(request: Request, exc: Exception) -> Response:
    status, title = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, StorageUnavailable | TooManyRequests):
        headers["retry-after"] = str(exc.retry_after)
    if isinstance(exc, RangeNotSatisfiable):
        headers["content-range"] = f"bytes */{exc.size}"
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="clipsync"'
    if isinstance(exc, tus.VersionMismatch):
        headers["tus-version"] = tus.VERSION
    if isinstance(exc, CatalogUnavailable):
        headers["retry-after"] = "5"
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    detail = str(exc) if isinstance(exc, ClipSyncError | RangeNotSatisfiable) else title
    return problem(status, title, detail, headers)


async def handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, exc.detail, exc.detail, dict(exc.headers or {}))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    response = problem(500, "Internal Server Error", "unexpected error; it has been logged")
    rid = REQUEST_ID.get()
    if rid is not None:  # the access layer set it; this answer is sent from outside that layer
        response.headers["x-request-id"] = rid
    return response
