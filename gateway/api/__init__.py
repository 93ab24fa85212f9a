"""The catalog API under /api/v1: its endpoint table, routes and OpenAPI document."""

from __future__ import annotations

from starlette.routing import Route

from auth.playback import PlaybackSigner
from backends.cache import TieredCache
from backends.catalog import Catalog
from backends.catalog.views import ViewAggregator
from backends.storage import Storage
from gateway.api.account_models import (
    AccountUpdate,
    Credentials,
    LogoutRequest,
    PasswordChange,
    PasswordReset,
    PlaybackOut,
    PlaybackRequest,
    RefreshRequest,
    ResetRequest,
    SessionOut,
    SignIn,
    UserOut,
    UserPage,
)
from gateway.api.accounts import AccountRoutes
from gateway.api.analytics import Analytics
from gateway.api.events import EVENTS, TIMEOUT, VideoEvents
from gateway.api.identity import Identity
from gateway.api.models import (
    Accepted,
    CommentCreate,
    CommentOut,
    CommentPage,
    LikeState,
    VideoCreate,
    VideoCreated,
    VideoOut,
    VideoPage,
    VideoStats,
    VideoUpdate,
    ViewBeacon,
)
from gateway.api.playback import PlaybackGrants
from gateway.api.social import Social
from gateway.api.spec import Endpoint, Param, doc_routes, routes
from gateway.api.videos import Videos
from gateway.api.webhooks import WebhookRoutes, webhook_endpoints
from gateway.assets import CatalogAssets
from gateway.webhooks import Webhooks

VIDEO_ID = Param("video_id", "path", {"type": "string", "maxLength": 64})
COMMENT_ID = Param("comment_id", "path", {"type": "string", "maxLength": 64})
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}, "page size")
CURSOR = Param("cursor", "query", {"type": "string", "maxLength": 512}, "next_cursor of a page")
SORT = Param("sort", "query", {"type": "string", "enum": ["newest", "most_viewed"]})
QUERY = Param("q", "query", {"type": "string", "maxLength": 200}, "words to find")
DAYS = Param("days", "query", {"type": "integer", "minimum": 1, "maximum": 366}, "window")
TRENDING_DAYS = Param("days", "query", {"type": "integer", "minimum": 1, "maximum": 90}, "window")
FEW = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 50}, "how many")
PAGE = (LIMIT, CURSOR)


USER_ID = Param("user_id", "path", {"type": "string", "maxLength": 64})
USERS_LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 200}, "size")


def account_endpoints(a: AccountRoutes, grants: PlaybackGrants) -> list[Endpoint]:
    e = Endpoint
    return [
        e("POST", "/videos/{video_id}/playback",
          "A signed playback URL (private videos: owner or admin)", grants.grant,
          response=PlaybackOut, status=201, body=PlaybackRequest, auth="optional",
          params=(VIDEO_ID,), errors=(400, 401, 403, 404, 413)),
        e("POST", "/auth/register", "Create an account", a.register, response=UserOut,
          status=201, body=Credentials, errors=(400, 401, 409, 413, 429)),
        e("POST", "/auth/login", "Sign in: tokens in the body, or cookies with cookie: true",
          a.login, response=SessionOut, body=SignIn, errors=(400, 401, 413, 429)),
        e("POST", "/auth/refresh", "Next tokens of a session (the refresh token is spent)",
          a.refresh, response=SessionOut, body=RefreshRequest, errors=(400, 401, 403, 413)),
        e("POST", "/auth/logout", "Sign out: this access token and its session end", a.logout,
          status=204, body=LogoutRequest, auth="required", errors=(400, 401, 403, 413)),
        e("GET", "/auth/me", "The signed-in account", a.me, response=UserOut, auth="required",
          errors=(401,)),
        e("PATCH", "/auth/me", "Change my account's settings (notify_ready: email me when a "
          "video is ready or failed)", a.update_me, response=UserOut, body=AccountUpdate,
          auth="required", errors=(400, 401, 403, 413)),
        e("POST", "/auth/password", "Change my password: every session ends, a new one starts",
          a.change_password, response=SessionOut, body=PasswordChange, auth="required",
          errors=(400, 401, 403, 413)),
        e("POST", "/auth/reset-request", "Email a one-time password reset link (always 202)",
          a.request_reset, response=Accepted, status=202, body=ResetRequest,
          errors=(400, 401, 413, 429)),
        e("POST", "/auth/reset", "Set a new password with a reset link's token", a.reset,
          status=204, body=PasswordReset, errors=(400, 401, 413, 429)),
        e("GET", "/admin/users", "Every account, newest first (admin)", a.users,
          response=UserPage, auth="required", params=(USERS_LIMIT, CURSOR),
          errors=(400, 401, 403)),
        e("POST", "/admin/users/{user_id}/disable", "Disable an account; its sessions end (admin)",
          a.disable, status=204, auth="required", params=(USER_ID,), errors=(401, 403, 404)),
        e("POST", "/admin/users/{user_id}/enable", "Enable an account again (admin)", a.disable,
          status=204, auth="required", params=(USER_ID,), errors=(401, 403, 404)),
    ]  # fmt: skip


def endpoints(videos: Videos, social: Social, analytics: Analytics) -> list[Endpoint]:
    e = Endpoint
    return [
        e("POST", "/videos", "Create a video (then upload its file)", videos.create,
          response=VideoCreated, status=201, body=VideoCreate, auth="required",
          errors=(400, 409, 413)),
        e("GET", "/videos", "Public videos that play", videos.public,
          response=VideoPage, params=(SORT, *PAGE)),
        e("GET", "/videos/{video_id}", "A video", videos.get,
          response=VideoOut, auth="optional", params=(VIDEO_ID,), errors=(401, 404)),
        e("GET", "/videos/{video_id}/events",
          "Live status and progress as Server-Sent Events (owner or admin)",
          VideoEvents(videos).stream, events=EVENTS, auth="required",
          params=(VIDEO_ID, TIMEOUT), errors=(400, 403, 404)),
        e("PATCH", "/videos/{video_id}", "Change a video (owner)", videos.update,
          response=VideoOut, body=VideoUpdate, auth="required", params=(VIDEO_ID,),
          errors=(400, 403, 404, 413)),
        e("DELETE", "/videos/{video_id}", "Delete a video with its files (owner or admin)",
          videos.delete, status=204, auth="required", params=(VIDEO_ID,), errors=(403, 404)),
        e("GET", "/search", "Ranked full-text search over public videos", videos.search,
          response=VideoPage, params=(QUERY, *PAGE)),
        e("GET", "/videos/{video_id}/related", "Recommendations: shared tags, then similar text",
          videos.related, response=VideoPage, auth="optional", params=(VIDEO_ID, FEW),
          errors=(400, 401, 404)),
        e("GET", "/me/videos", "My videos, whatever their status", videos.mine,
          response=VideoPage, auth="required", params=PAGE),
        e("POST", "/videos/{video_id}/comments", "Comment on a video", social.comment,
          response=CommentOut, status=201, body=CommentCreate, auth="required",
          params=(VIDEO_ID,), errors=(400, 404, 413)),
        e("GET", "/videos/{video_id}/comments", "Comments, newest first", social.comments,
          response=CommentPage, auth="optional", params=(VIDEO_ID, *PAGE),
          errors=(400, 401, 404)),
        e("DELETE", "/comments/{comment_id}", "Delete one's comment (or any, as admin)",
          social.delete_comment, status=204, auth="required", params=(COMMENT_ID,),
          errors=(403, 404)),
        e("PUT", "/videos/{video_id}/like", "Like a video (idempotent)", social.like,
          response=LikeState, auth="required", params=(VIDEO_ID,), errors=(404,)),
        e("DELETE", "/videos/{video_id}/like", "Unlike a video (idempotent)", social.like,
          response=LikeState, auth="required", params=(VIDEO_ID,), errors=(404,)),
        e("GET", "/videos/{video_id}/like", "My like of a video (404: I do not like it)",
          social.like_state, response=LikeState, auth="required", params=(VIDEO_ID,),
          errors=(404,)),
        e("POST", "/videos/{video_id}/views", "A player's view beacon (start, progress, complete)",
          analytics.beacon, response=Accepted, status=202, body=ViewBeacon, params=(VIDEO_ID,),
          errors=(400, 403, 404, 413)),
        e("GET", "/videos/{video_id}/stats", "Views, watch time and completion per day (owner)",
          analytics.stats, response=VideoStats, auth="required", params=(VIDEO_ID, DAYS),
          errors=(400, 403, 404)),
        e("GET", "/trending", "Public videos with the most views in the last days",
          analytics.trending, response=VideoPage, params=(TRENDING_DAYS, LIMIT)),
    ]  # fmt: skip


def api_routes(
    catalog: Catalog,
    identity: Identity,
    accounts: AccountRoutes,
    storage: Storage,
    cache: TieredCache,
    playback: CatalogAssets,
    aggregator: ViewAggregator,
    signer: PlaybackSigner | None,
    playback_ttl: int,
    hooks: Webhooks,
) -> list[Route]:
    videos = Videos(catalog, identity, storage, cache)
    analytics = Analytics(catalog, videos, playback, aggregator)
    grants = PlaybackGrants(videos, signer, playback_ttl)
    table = endpoints(videos, Social(catalog, videos), analytics)
    table += account_endpoints(accounts, grants)
    table += webhook_endpoints(WebhookRoutes(catalog, identity, hooks))
    return routes(table) + doc_routes(table)
