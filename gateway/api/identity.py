"""Who is calling: an access token from ``Authorization: Bearer`` (API clients) or from the
session cookie (browsers), checked against the database on every request (logout, password
change, disabled accounts and role changes apply at once).

Cookie sessions are CSRF-protected by double submit: unsafe methods must echo the readable
``clipsync_csrf`` cookie in an ``X-CSRF-Token`` header, which another site's page cannot read.
The access cookie is HttpOnly, SameSite=Lax and Secure (``auth.cookie_secure``); the refresh
cookie is sent only to the refresh and logout endpoints.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from auth.sessions import Issued, Sessions
from auth.tokens import AccessTokens, Principal
from backends.errors import Forbidden, Unauthorized

ACCESS_COOKIE = "clipsync_access"
REFRESH_COOKIE = "clipsync_refresh"
CSRF_COOKIE = "clipsync_csrf"
CSRF_HEADER = "x-csrf-token"
AUTH_PATH = "/api/v1/auth"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_HEADER = 4096


class Identity:
    def __init__(
        self, tokens: AccessTokens | None, sessions: Sessions | None, cookie_secure: bool = True
    ) -> None:
        self.tokens = tokens
        self.sessions = sessions
        self.cookie_secure = cookie_secure

    async def of(self, request: Request, required: bool = True) -> Principal | None:
        token = self._token(request, required)
        if token is None:
            return None
        if self.tokens is None:
            raise Unauthorized("accounts are not configured on this gateway (auth.jwt_secret)")
        principal = self.tokens.verify(token)
        if self.sessions is not None:
            principal = await self.sessions.check(principal)
        return principal

    async def me(self, request: Request) -> Principal:
        who = await self.of(request)
        assert who is not None
        return who

    def _token(self, request: Request, required: bool) -> str | None:
        header = request.headers.get("authorization")
        if header is not None:
            if len(header) > MAX_HEADER:
                raise Unauthorized("Authorization header too long")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("expected Authorization: Bearer <access token>")
            return token.strip()
        cookie = request.cookies.get(ACCESS_COOKIE)
        if cookie:
            if request.method not in SAFE_METHODS:
                check_csrf(request)
            return cookie
        if required:
            raise Unauthorized("sign in: this needs an access token (Authorization: Bearer)")
        return None

    def set_cookies(self, response: Response, issued: Issued, refresh_ttl: int, csrf: str) -> None:
        """Puts a session in cookies, with the CSRF token the page must echo."""
        secure = self.cookie_secure
        response.set_cookie(
            ACCESS_COOKIE, issued.access_token, max_age=issued.expires_in, path="/",
            secure=secure, httponly=True, samesite="lax",
        )  # fmt: skip
        response.set_cookie(
            REFRESH_COOKIE, issued.refresh_token, max_age=refresh_ttl, path=AUTH_PATH,
            secure=secure, httponly=True, samesite="strict",
        )  # fmt: skip
        response.set_cookie(
            CSRF_COOKIE, csrf, max_age=refresh_ttl, path="/", secure=secure, httponly=False,
            samesite="lax",
        )  # fmt: skip

    def clear_cookies(self, response: Response) -> None:
        for name, path in ((ACCESS_COOKIE, "/"), (REFRESH_COOKIE, AUTH_PATH), (CSRF_COOKIE, "/")):
            response.delete_cookie(name, path=path, secure=self.cookie_secure)


def check_csrf(request: Request) -> None:
    """Double submit: the header must equal the cookie (a cross-site page can set neither)."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or len(header) > MAX_HEADER or not hmac.compare_digest(cookie, header):
        raise Forbidden("missing or wrong X-CSRF-Token header (echo the clipsync_csrf cookie)")
