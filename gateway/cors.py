"""CORS for players on any origin, identical on every response.

Starlette's CORSMiddleware adds CORS headers only when the request carries an Origin, so it must
also send ``Vary: Origin``, and a CDN then keeps one copy of every segment per requesting site.
Playback resources are public (tokens, not cookies, protect them), so this middleware sends the
same headers whatever the request: the response never varies and a CDN keeps one copy.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = "GET, HEAD, OPTIONS"
ALLOW_HEADERS = "Range, If-None-Match, If-Range, If-Modified-Since"
EXPOSE_HEADERS = "Content-Length, Content-Range, Accept-Ranges, ETag"


class PublicCORS:
    def __init__(self, app: ASGIApp, max_age: int = 86400) -> None:
        self.app = app
        self.preflight = [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", str(max_age).encode()),
            (b"allow", ALLOW_METHODS.encode()),
            (b"content-length", b"0"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The API's own routes answer OPTIONS (405 with the route's Allow list).
        if scope["method"] == "OPTIONS" and not scope["path"].startswith("/api/"):
            await send({"type": "http.response.start", "status": 204, "headers": self.preflight})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["access-control-allow-origin"] = "*"
                headers["access-control-expose-headers"] = EXPOSE_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_cors)
