"""Every request: a request id (taken from X-Request-ID or made, and returned), its metrics by
route template, and one access log line.

Pure ASGI rather than a Starlette BaseHTTPMiddleware: it sits around every request, segments
included, and must not add a task or copy a body. It is the outermost layer, so it sees the
status the client got even when a handler failed.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends import tracing
from gateway.logs import REQUEST_ID, redact
from gateway.metrics import GatewayMetrics

access_log = logging.getLogger("clipsync.access")

# A request id a client or a proxy chose is kept only if it is short and plain: it goes into
# logs and response headers.
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Set by handlers that know more about a request than their route's template (the kind of a
# playback URL: master, media, init, segment...).
ROUTE_DETAIL = "clipsync.route_detail"


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _GOOD_ID.fullmatch(text):
                return text
            break
    # 128 random bits as 32 hex digits, like a uuid4 but without a getrandom call per request:
    # an id only has to be unique, and the random module is reseeded in every forked worker.
    return f"{random.getrandbits(128):032x}"


def route_label(scope: Scope) -> str:
    """The route template that answered (never the raw path: ids and file names would make a
    new time series each), with the handler's detail when it gave one."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return "unmatched"
    detail = scope.get(ROUTE_DETAIL)
    return f"{template} {detail}" if detail else template


def set_detail(scope: Scope, detail: str) -> None:
    scope[ROUTE_DETAIL] = detail


class Access:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope["headers"])
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "sent": 0, "started": False}
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                # Now: the tracing layer ends its span with the response's last message.
                tracing.name_request(scope["method"], route_label(scope))
                message["headers"] = [*message.get("headers", ()), header]
            elif message["type"] == "http.response.body":
                state["sent"] += len(message.get("body", b""))
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # Left set: the 500 handler outside this layer logs and answers with the same id.
            failed = True
            raise
        finally:
            seconds = time.perf_counter() - start
            # No response started: a failure, or a client gone before it (nginx's 499).
            status = state["status"] if state["started"] else 500 if failed else 499
            route = route_label(scope)
            method = scope["method"]
            self.metrics.observe(route, method, status, seconds, state["sent"])
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(
                    "%s %s %d",
                    method,
                    scope["path"],  # the path only: query strings carry playback tokens
                    status,
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "bytes": state["sent"],
                        "ms": round(seconds * 1000, 2),
                        "client": client[0] if client else None,
                        "user_agent": _header(scope, b"user-agent"),
                    },
                )
            if not failed:
                REQUEST_ID.reset(token)


def traced() -> Middleware | None:
    """The OpenTelemetry ASGI middleware when tracing is on: one server span per request (its
    name set by ``Access`` once the route is known), no span per body message, no spans for
    probes and scrapes, and no token in any attribute (URLs carry playback tokens)."""
    if not tracing.enabled():
        return None
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    def scrub(span: Any, scope: Scope) -> None:
        for key, value in dict(getattr(span, "attributes", None) or {}).items():
            if isinstance(value, str) and redact(value) != value:
                span.set_attribute(key, redact(value))

    return Middleware(
        OpenTelemetryMiddleware,
        tracer_provider=tracing.provider(),
        excluded_urls="/healthz,/readyz,/metrics",
        exclude_spans=["receive", "send"],
        default_span_details=lambda scope: (scope.get("method", "HTTP"), {}),
        server_request_hook=scrub,
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1")[:256])
    return None
