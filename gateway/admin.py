"""Admin endpoints: purge the cached objects of a library path from every tier and replica.

Open to a signed-in user with the admin role, and to ``server.admin_token`` (a bearer token
compared in constant time, for scripts and operators without an account). With neither accounts
nor a token configured the endpoints are off.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backends import paths
from backends.errors import MediaNotFound, Unauthorized
from gateway.api import http
from gateway.api.identity import Identity
from gateway.errors import problem
from gateway.library import Library


class PurgeRequest(msgspec.Struct, forbid_unknown_fields=True):
    # A library path: a file, or a folder (everything under it); "" is the whole library.
    path: Annotated[str, msgspec.Meta(max_length=1024)]


class Admin:
    def __init__(self, library: Library, token: str, identity: Identity | None = None) -> None:
        self.library = library
        self.token = token.encode()
        self.identity = identity

    async def _refused(self, request: Request) -> Response | None:
        accounts = self.identity is not None and self.identity.tokens is not None
        if not self.token and not accounts:
            return problem(
                403, "Forbidden", "admin endpoints are off: set server.admin_token or accounts"
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if (
            self.token
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), self.token)
        ):
            return None
        if accounts and self.identity is not None:
            try:
                who = await self.identity.of(request, required=True)
            except Unauthorized:
                who = None
            if who is not None:
                if who.admin:
                    return None
                return problem(403, "Forbidden", "this needs the admin role")
        return problem(
            401,
            "Unauthorized",
            "an admin's access token (or server.admin_token) is required",
            {"www-authenticate": 'Bearer realm="clipsync-admin"'},
        )

    async def purge(self, request: Request) -> Response:
        refused = await self._refused(request)
        if refused is not None:
            return refused
        wanted = await http.body(request, PurgeRequest)
        try:
            path = paths.clean(wanted.path)
        except MediaNotFound as exc:
            return problem(400, "Bad Request", f"invalid path: {exc}")
        result = await self.library.cache.purge(self.library.tags_of_path(path))
        answer = {"path": path, "memory": result.memory, "redis": result.redis}
        if self.library.cache.redis is not None and result.redis is None:
            return problem(
                503,
                "Cache Tier Unavailable",
                f"purged {result.memory} objects in this process, but the Redis tier (and with "
                "it the other replicas) could not be reached: retry",
                {"retry-after": "5"},
            )
        return JSONResponse(answer, headers={"cache-control": "no-store"})
