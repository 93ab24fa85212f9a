"""Requests and responses of the accounts API (sign-in, sessions, passwords, admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

Email = Annotated[str, Meta(min_length=3, max_length=320)]
Password = Annotated[str, Meta(min_length=1, max_length=256)]
Token = Annotated[str, Meta(min_length=1, max_length=128)]


class Credentials(Struct, forbid_unknown_fields=True, kw_only=True):
    email: Email
    password: Password


class SignIn(Struct, forbid_unknown_fields=True, kw_only=True):
    email: Email
    password: Password
    # Browsers: the session goes into HttpOnly cookies instead of the body.
    cookie: bool = False


class RefreshRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    refresh_token: Token | None = None  # omitted: the refresh cookie


class LogoutRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    refresh_token: Token | None = None


class PasswordChange(Struct, forbid_unknown_fields=True, kw_only=True):
    current_password: Password
    new_password: Password


class ResetRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    email: Email


class PasswordReset(Struct, forbid_unknown_fields=True, kw_only=True):
    token: Token
    new_password: Password


class SessionOut(Struct, kw_only=True):
    """Tokens in the body (API clients), or null here and in cookies (``cookie: true``)."""

    access_token: str | None
    refresh_token: str | None
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name
    expires_in: int  # seconds the access token is valid
    csrf_token: str | None = None  # cookie sessions: echo it in X-CSRF-Token on writes


class UserOut(Struct, kw_only=True):
    id: str
    email: str
    role: Literal["user", "admin"]
    disabled: bool
    created_at: datetime
    notify_ready: bool  # emailed when a video of theirs is ready or failed


class AccountUpdate(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Only the fields given change."""

    notify_ready: bool | UnsetType = UNSET


class UserPage(Struct, kw_only=True):
    items: list[UserOut]
    next_cursor: str | None


class PlaybackRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    ttl: Annotated[int, Meta(ge=60, le=30 * 86_400)] | None = None  # seconds; default 6 h
    # Bind the URL to the caller's address (bind_ip) or to a network ("203.0.113.0/24").
    bind_ip: bool = False
    cidr: Annotated[str, Meta(max_length=64)] | None = None


class PlaybackOut(Struct, kw_only=True):
    url: str  # the master playlist, signed; every URI in it carries the same token
    token: str
    expires_at: datetime
