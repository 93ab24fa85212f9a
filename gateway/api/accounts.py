"""The accounts endpoints: register, sign in and out, refresh, me, passwords, admin."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from msgspec import UnsetType
from starlette.requests import Request
from starlette.responses import Response

from auth import passwords
from auth.accounts import Accounts
from auth.ratelimit import RateLimits
from auth.sessions import Issued
from backends.catalog import Catalog
from backends.catalog.records import User
from backends.errors import ClipSyncError, Forbidden, InvalidRequest, NotFound, Unauthorized
from gateway.api import http
from gateway.api.account_models import (
    AccountUpdate,
    Credentials,
    LogoutRequest,
    PasswordChange,
    PasswordReset,
    RefreshRequest,
    ResetRequest,
    SessionOut,
    SignIn,
    UserOut,
    UserPage,
)
from gateway.api.identity import REFRESH_COOKIE, Identity, check_csrf
from gateway.api.models import Accepted


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        role=user.role,
        disabled=user.disabled,
        created_at=user.created_at,
        notify_ready=user.notify_ready,
    )


def client_key(request: Request) -> str:
    """What per-IP rate limits count against."""
    return http.client_ip(request) or "unknown"


class AccountRoutes:
    def __init__(
        self,
        catalog: Catalog,
        accounts: Accounts | None,
        identity: Identity,
        limits: RateLimits,
        refresh_ttl: int,
        failed_login: Callable[[], object] = lambda: None,
    ) -> None:
        self.catalog = catalog
        self.failed_login = failed_login  # metrics: clipsync_logins_failed_total
        self._accounts = accounts
        self.identity = identity
        self.limits = limits
        self.refresh_ttl = refresh_ttl

    async def settle(self) -> None:
        """Waits for reset emails still being sent (shutdown)."""
        if self._accounts is not None:
            await self._accounts.settle()

    @property
    def accounts(self) -> Accounts:
        if self._accounts is None:
            raise Unauthorized("accounts are not configured on this gateway (auth.jwt_secret)")
        return self._accounts

    def _session(self, issued: Issued, cookie: bool, status: int = 200) -> Response:
        if not cookie:
            body = SessionOut(
                access_token=issued.access_token,
                refresh_token=issued.refresh_token,
                expires_in=issued.expires_in,
            )
            return http.json(body, status)
        csrf = secrets.token_urlsafe(24)
        body = SessionOut(
            access_token=None, refresh_token=None, expires_in=issued.expires_in, csrf_token=csrf
        )
        response = http.json(body, status)
        self.identity.set_cookies(response, issued, self.refresh_ttl, csrf)
        return response

    async def register(self, request: Request) -> Response:
        accounts = self.accounts
        await self.limits.hit("register", client_key(request))
        wanted = await http.body(request, Credentials)
        user = await accounts.register(wanted.email, wanted.password)
        return http.json(user_out(user), 201)

    async def login(self, request: Request) -> Response:
        accounts = self.accounts
        await self.limits.hit("login", client_key(request))
        wanted = await http.body(request, SignIn)
        try:
            issued = await accounts.login(wanted.email, wanted.password)
        except ClipSyncError:  # wrong password, unknown email, disabled, locked out
            self.failed_login()
            raise
        return self._session(issued, wanted.cookie)

    async def refresh(self, request: Request) -> Response:
        accounts = self.accounts
        wanted = await http.body(request, RefreshRequest)
        token, cookie = wanted.refresh_token, False
        if token is None:
            token, cookie = request.cookies.get(REFRESH_COOKIE), True
            if not token:
                raise Unauthorized("send refresh_token, or sign in with cookie: true")
            check_csrf(request)
        return self._session(await accounts.sessions.rotate(token), cookie)

    async def logout(self, request: Request) -> Response:
        who = await self.identity.me(request)
        wanted = await http.body(request, LogoutRequest)
        token = wanted.refresh_token or request.cookies.get(REFRESH_COOKIE)
        await self.accounts.sessions.end(who, token)
        response = http.no_content()
        self.identity.clear_cookies(response)
        return response

    async def me(self, request: Request) -> Response:
        who = await self.identity.me(request)
        user = await self.catalog.get_user(who.user_id)
        if user is None:
            raise Unauthorized("session ended: sign in again")
        return http.json(user_out(user))

    async def update_me(self, request: Request) -> Response:
        """PATCH /auth/me: the signed-in account's settings (``notify_ready``)."""
        who = await self.identity.me(request)  # cookie sessions: the CSRF header is checked
        wanted = await http.body(request, AccountUpdate)
        if isinstance(wanted.notify_ready, UnsetType):
            user = await self.catalog.get_user(who.user_id)
        else:
            user = await self.catalog.set_notify_ready(who.user_id, wanted.notify_ready)
        if user is None:
            raise Unauthorized("session ended: sign in again")
        return http.json(user_out(user))

    async def change_password(self, request: Request) -> Response:
        who = await self.identity.me(request)
        wanted = await http.body(request, PasswordChange)
        issued = await self.accounts.change_password(
            who.user_id, wanted.current_password, wanted.new_password
        )
        return self._session(issued, cookie="authorization" not in request.headers)

    async def request_reset(self, request: Request) -> Response:
        accounts = self.accounts
        await self.limits.hit("reset", client_key(request))
        wanted = await http.body(request, ResetRequest)
        try:
            address = passwords.normalize_email(wanted.email)
        except InvalidRequest:
            address = None  # nothing will be sent: nothing to count
        if address is not None:
            await self.limits.hit("reset_account", address)
        await accounts.request_reset(wanted.email)
        return http.json(Accepted(accepted=True), 202)

    async def reset(self, request: Request) -> Response:
        accounts = self.accounts
        await self.limits.hit("reset", client_key(request))
        wanted = await http.body(request, PasswordReset)
        await accounts.reset(wanted.token, wanted.new_password)
        return http.no_content()

    # Admin ----------------------------------------------------------------------------------

    async def _admin(self, request: Request) -> None:
        who = await self.identity.me(request)
        if not who.admin:
            raise Forbidden("this needs the admin role")

    async def users(self, request: Request) -> Response:
        await self._admin(request)
        limit = http.integer(request, "limit", 50, 1, 200)
        scope = "users:newest"
        items, after = await self.catalog.list_users(limit, http.cursor_in(request, scope))
        page = UserPage(
            items=[user_out(u) for u in items], next_cursor=http.cursor_out(after, scope)
        )
        return http.json(page)

    async def disable(self, request: Request) -> Response:
        await self._admin(request)
        user_id = request.path_params["user_id"]
        if await self.catalog.get_user(user_id) is None:
            raise NotFound("no such user")
        await self.accounts.set_disabled(user_id, request.url.path.endswith("/disable"))
        return http.no_content()
