"""The API's edge: JSON bodies in and out, the caller's identity, cursors. Every failure here is
a domain exception that the error table turns into problem+json."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from backends.errors import CatalogUnavailable, InvalidRequest, RequestTooLarge

T = TypeVar("T")
MAX_BODY = 64 * 1024
JSON = "application/json"


async def body(request: Request, kind: type[T]) -> T:
    """The request body as ``kind``; 400 with the offending field named, 413 past MAX_BODY."""
    if request.headers.get("content-type", JSON).split(";")[0].strip().lower() != JSON:
        raise InvalidRequest("send the body as application/json")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise RequestTooLarge(f"the body may be at most {MAX_BODY} bytes")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise InvalidRequest("the body is not valid JSON (UTF-8)") from None


def json(value: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    all_headers = {"cache-control": "no-store", **(headers or {})}
    return Response(msgspec.json.encode(value), status, all_headers, media_type=JSON)


def no_content() -> Response:
    return Response(status_code=204, headers={"cache-control": "no-store"})


def client_ip(request: Request) -> str | None:
    """The client's address: the peer's, or the one a trusted proxy forwarded (proxies.py)."""
    return request.client.host if request.client else None


def integer(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def choice(request: Request, name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = request.query_params.get(name, default)
    if raw not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}")
    return raw


# Cursors: where the next page starts, opaque to clients (base64url of a small JSON array).


def cursor_out(position: tuple[Any, str] | None, scope: str) -> str | None:
    if position is None:
        return None
    value, last_id = position
    shown = value.isoformat() if isinstance(value, datetime) else value
    raw = msgspec.json.encode([scope, shown, last_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def cursor_in(request: Request, scope: str) -> tuple[Any, str] | None:
    """The position a ``?cursor=`` names, checked to belong to this listing and sort."""
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        if len(raw) > 512:
            raise ValueError
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        kind, value, last_id = msgspec.json.decode(data, type=tuple[str, str | int, str])
        if kind != scope:
            raise ValueError
        if scope.endswith(":newest"):
            if not isinstance(value, str):
                raise ValueError
            return datetime.fromisoformat(value), last_id
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError
        return value, last_id
    except (ValueError, binascii.Error, msgspec.DecodeError):
        raise InvalidRequest("invalid cursor: pass back next_cursor as it was given") from None


def guarded(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A database that cannot answer is a 503 to the client, never a 500."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except (SQLAlchemyError, OSError) as exc:
            raise CatalogUnavailable(
                f"the catalog cannot answer now ({type(exc).__name__}); retry"
            ) from None

    return run
