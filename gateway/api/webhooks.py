"""Webhook endpoints of the API: a user manages their own, an admin may see and remove any.

The signing secret is answered once, at creation; it is stored as given (the sender needs it
to sign), never shown again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, cast

from msgspec import Meta, Struct, field
from starlette.requests import Request
from starlette.responses import Response

from backends.catalog import Catalog
from backends.catalog import webhooks as store
from backends.catalog.store import possible_id
from backends.errors import Forbidden, InvalidRequest, NotFound
from gateway.api import http
from gateway.api.identity import Identity
from gateway.api.spec import Endpoint, Param
from gateway.webhooks import EVENTS, MAX_URL, EventName, Webhooks, check_url, new_secret

DeliveryStatus = Literal["pending", "delivered", "failed"]
STATUSES = ("pending", "delivered", "failed")
EVENT_LIST = Annotated[
    list[EventName], Meta(min_length=1, max_length=3, description="Default: every event")
]


class WebhookCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_URL,
            description="https:// (or http://), no credentials; public addresses only",
        ),
    ]
    events: EVENT_LIST = field(default_factory=lambda: list(EVENTS))


class WebhookOut(Struct, kw_only=True):
    id: str
    user_id: str
    url: str
    events: list[EventName]
    created_at: datetime


class WebhookCreated(WebhookOut, kw_only=True):
    secret: str  # whsec_…: verifies webhook-signature; shown only in this answer


class WebhookList(Struct, kw_only=True):
    items: list[WebhookOut]


class DeliveryOut(Struct, kw_only=True):
    id: str
    webhook_id: str
    event_id: str  # the webhook-id header and the body's id
    event: str  # one of the events, or "ping"
    status: DeliveryStatus
    attempts: int
    last_status: int | None  # HTTP status of the last answer
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None  # while pending
    delivered_at: datetime | None


class DeliveryPage(Struct, kw_only=True):
    items: list[DeliveryOut]
    next_cursor: str | None


def webhook_out(hook: store.Webhook) -> WebhookOut:
    return WebhookOut(
        id=hook.id,
        user_id=hook.user_id,
        url=hook.url,
        events=cast(list[EventName], hook.events),
        created_at=hook.created_at,
    )


def delivery_out(d: store.Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        webhook_id=d.webhook_id,
        event_id=d.event_id,
        event=d.event,
        status=d.status,
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=d.created_at,
        last_attempt_at=d.last_attempt_at,
        next_attempt_at=d.next_attempt_at,
        delivered_at=d.delivered_at,
    )


class WebhookRoutes:
    def __init__(self, catalog: Catalog, identity: Identity, hooks: Webhooks) -> None:
        self.catalog = catalog
        self.identity = identity
        self.hooks = hooks

    async def _visible(self, request: Request) -> store.Webhook:
        """The endpoint of the URL if the caller owns it or is an admin; 404 otherwise (its
        existence is not revealed)."""
        who = await self.identity.me(request)
        hook = await store.get(self.catalog, request.path_params["webhook_id"])
        if hook is None or (hook.user_id != who.user_id and not who.admin):
            raise NotFound("no such webhook")
        return hook

    async def create(self, request: Request) -> Response:
        who = await self.identity.me(request)
        wanted = await http.body(request, WebhookCreate)
        settings = self.hooks.settings
        url = check_url(wanted.url, settings.allow_private)
        events = [e for e in EVENTS if e in wanted.events]
        hook = await store.create(
            self.catalog, who.user_id, url, events, new_secret(), settings.max_per_user
        )
        created = WebhookCreated(
            id=hook.id,
            user_id=hook.user_id,
            url=hook.url,
            events=cast(list[EventName], hook.events),
            created_at=hook.created_at,
            secret=hook.secret,
        )
        return http.json(created, 201, {"location": f"/api/v1/webhooks/{hook.id}"})

    async def listing(self, request: Request) -> Response:
        who = await self.identity.me(request)
        user_id = request.query_params.get("user_id", who.user_id)
        if user_id != who.user_id and not who.admin:
            raise Forbidden("only an admin may list another user's webhooks")
        hooks = await store.owned(self.catalog, user_id) if possible_id(user_id) else []
        return http.json(WebhookList(items=[webhook_out(h) for h in hooks]))

    async def get(self, request: Request) -> Response:
        return http.json(webhook_out(await self._visible(request)))

    async def delete(self, request: Request) -> Response:
        hook = await self._visible(request)
        await store.remove(self.catalog, hook.id)
        return http.no_content()

    async def deliveries(self, request: Request) -> Response:
        hook = await self._visible(request)
        limit = http.integer(request, "limit", 20, 1, 100)
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
        scope = f"deliveries:{hook.id}:newest"
        items, after = await store.log(
            self.catalog,
            hook.id,
            limit,
            http.cursor_in(request, scope),
            cast(DeliveryStatus | None, status),
        )
        page = DeliveryPage(
            items=[delivery_out(d) for d in items], next_cursor=http.cursor_out(after, scope)
        )
        return http.json(page)

    async def test(self, request: Request) -> Response:
        hook = await self._visible(request)
        return http.json(delivery_out(await self.hooks.ping(hook)), 202)


WEBHOOK_ID = Param("webhook_id", "path", {"type": "string", "maxLength": 64})
OWNER = Param("user_id", "query", {"type": "string", "maxLength": 64}, "whose (admin only)")
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}, "page size")
CURSOR = Param("cursor", "query", {"type": "string", "maxLength": 512}, "next_cursor of a page")
STATUS = Param("status", "query", {"type": "string", "enum": list(STATUSES)}, "only these")


def webhook_endpoints(w: WebhookRoutes) -> list[Endpoint]:
    e = Endpoint
    return [
        e("POST", "/webhooks", "Add a webhook endpoint; the answer holds its signing secret",
          w.create, response=WebhookCreated, status=201, body=WebhookCreate, auth="required",
          errors=(400, 413)),
        e("GET", "/webhooks", "My webhook endpoints (an admin: anyone's, by user_id)", w.listing,
          response=WebhookList, auth="required", params=(OWNER,), errors=(400, 403)),
        e("GET", "/webhooks/{webhook_id}", "A webhook endpoint (owner or admin)", w.get,
          response=WebhookOut, auth="required", params=(WEBHOOK_ID,), errors=(404,)),
        e("DELETE", "/webhooks/{webhook_id}", "Remove a webhook endpoint and its deliveries",
          w.delete, status=204, auth="required", params=(WEBHOOK_ID,), errors=(404,)),
        e("GET", "/webhooks/{webhook_id}/deliveries", "Its delivery log, newest first",
          w.deliveries, response=DeliveryPage, auth="required",
          params=(WEBHOOK_ID, STATUS, LIMIT, CURSOR), errors=(400, 404)),
        e("POST", "/webhooks/{webhook_id}/test", "Queue a ping to the endpoint", w.test,
          response=DeliveryOut, status=202, auth="required", params=(WEBHOOK_ID,),
          errors=(404,)),
    ]  # fmt: skip
