"""Webhook endpoints and their deliveries in the catalog.

A delivery row is both the log and the work item. It is queued ``pending`` and due at once; a
sender *claims* a due row with a conditional update (still pending, still due) that counts the
attempt, names the sender and moves ``next_attempt_at`` to the end of a lease: of several
senders racing for a row one wins, and a sender that dies mid-attempt holds it only until the
lease ends. The sender then *settles* the attempt (delivered, failed, or due again later),
which only the sender named on the row may do.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
from sqlalchemy import (
    DateTime,
    Integer,
    String,
    Text,
    and_,
    delete,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from backends.catalog import schema
from backends.catalog.records import new_id
from backends.catalog.store import Catalog, aware, possible_id
from backends.errors import Conflict, InvalidRequest

DeliveryStatus = Literal["pending", "delivered", "failed"]
MAX_ERROR = 500  # characters of an error kept on the row


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    user_id: str
    url: str
    events: list[str]
    secret: str
    created_at: datetime


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    webhook_id: str
    event_id: str
    event: str
    status: DeliveryStatus
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery this sender holds for one attempt, with what sending it needs."""

    delivery: Delivery
    url: str
    secret: str
    payload: str


def _now() -> datetime:
    return datetime.now(UTC)


def _times(row: dict[str, Any]) -> dict[str, Any]:
    # Keys as plain str (msgspec refuses SQLAlchemy's str subclass); times with their zone.
    return {str(k): aware(v) if isinstance(v, datetime) else v for k, v in row.items()}


_DELIVERY_FIELDS = set(Delivery.__struct_fields__)


def _delivery(row: dict[str, Any]) -> Delivery:
    return msgspec.convert(
        {k: v for k, v in _times(row).items() if k in _DELIVERY_FIELDS}, Delivery
    )


def _webhook(row: dict[str, Any]) -> Webhook:
    return msgspec.convert(_times(row), Webhook)


# Endpoints -----------------------------------------------------------------------------------


async def create(
    catalog: Catalog, user_id: str, url: str, events: Sequence[str], secret: str, limit: int
) -> Webhook:
    """A new endpoint of ``user_id``; InvalidRequest when they already have ``limit``."""
    w, u = schema.webhooks, schema.users
    row = {
        "id": new_id(),
        "user_id": user_id,
        "url": url,
        "events": list(events),
        "secret": secret,
        "created_at": _now(),
    }
    try:
        async with catalog.engine.begin() as conn:
            # PostgreSQL: the user's row is locked, so two creations cannot both see room for
            # one more (SQLite has one writer at a time anyway).
            await conn.execute(select(u.c.id).where(u.c.id == user_id).with_for_update())
            count = select(func.count()).select_from(w).where(w.c.user_id == user_id)
            if (await conn.execute(count)).scalar_one() >= limit:
                raise InvalidRequest(f"at most {limit} webhooks per user: delete one first")
            await conn.execute(insert(w).values(**row))
    except IntegrityError:
        raise Conflict("no such user") from None
    return _webhook(row)


async def get(catalog: Catalog, webhook_id: str) -> Webhook | None:
    if not possible_id(webhook_id):
        return None
    w = schema.webhooks
    async with catalog.reader.connect() as conn:
        row = (await conn.execute(select(w).where(w.c.id == webhook_id))).first()
    return None if row is None else _webhook(row._asdict())


async def owned(catalog: Catalog, user_id: str, limit: int = 100) -> list[Webhook]:
    """The endpoints of ``user_id``, newest first."""
    w = schema.webhooks
    query = (
        select(w)
        .where(w.c.user_id == user_id)
        .order_by(w.c.created_at.desc(), w.c.id.desc())
        .limit(limit)
    )
    async with catalog.reader.connect() as conn:
        return [_webhook(row._asdict()) for row in await conn.execute(query)]


async def remove(catalog: Catalog, webhook_id: str) -> bool:
    """Delete an endpoint with its deliveries (pending ones are never sent)."""
    w = schema.webhooks
    async with catalog.engine.begin() as conn:
        done = await conn.execute(delete(w).where(w.c.id == webhook_id))
    return done.rowcount == 1


# Queueing ------------------------------------------------------------------------------------


async def enqueue(
    catalog: Catalog, webhook_ids: Sequence[str], event: str, event_id: str, payload: str
) -> list[str]:
    """Queue ``payload`` for each endpoint; the ids of the deliveries queued. An endpoint
    deleted meanwhile gets none, and one that already has ``event_id`` no second one."""
    d, w = schema.webhook_deliveries, schema.webhooks
    columns = ["id", "webhook_id", "event_id", "event", "payload", "status", "attempts"]
    columns += ["created_at", "next_attempt_at"]
    when = DateTime(timezone=True)
    now = _now()
    queued = []
    async with catalog.engine.begin() as conn:
        for webhook_id in webhook_ids:
            delivery_id = new_id()
            # INSERT ... SELECT from the endpoint: nothing when it is gone, no foreign key error.
            source = select(
                literal(delivery_id, String),
                w.c.id,
                literal(event_id, String),
                literal(event, String),
                literal(payload, Text),
                literal("pending", String),
                literal(0, Integer),
                literal(now, when),
                literal(now, when),
            ).where(w.c.id == webhook_id)
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = (
                dialect.insert(d)
                .from_select(columns, source)
                .on_conflict_do_nothing(index_elements=["webhook_id", "event_id"])
            )
            if (await conn.execute(statement)).rowcount == 1:
                queued.append(delivery_id)
    return queued


# Sending -------------------------------------------------------------------------------------


async def due(catalog: Catalog, limit: int) -> list[str]:
    """Pending deliveries whose time has come, longest waiting first."""
    d = schema.webhook_deliveries
    query = (
        select(d.c.id)
        .where(and_(d.c.status == "pending", d.c.next_attempt_at <= _now()))
        .order_by(d.c.next_attempt_at)
        .limit(limit)
    )
    async with catalog.reader.connect() as conn:
        return [str(row[0]) for row in await conn.execute(query)]


async def claim(catalog: Catalog, delivery_id: str, sender: str, lease: float) -> Claimed | None:
    """Hold a due delivery for one attempt of at most ``lease`` seconds; None when another
    sender got it first (or it is no longer due)."""
    d, w = schema.webhook_deliveries, schema.webhooks
    now = _now()
    async with catalog.engine.begin() as conn:
        done = await conn.execute(
            update(d)
            .where(and_(d.c.id == delivery_id, d.c.status == "pending", d.c.next_attempt_at <= now))
            .values(
                sender=sender,
                attempts=d.c.attempts + 1,
                last_attempt_at=now,
                next_attempt_at=now + timedelta(seconds=lease),
            )
        )
        if done.rowcount != 1:
            return None
        query = (
            select(d, w.c.url, w.c.secret)
            .join(w, w.c.id == d.c.webhook_id)
            .where(d.c.id == delivery_id)
        )
        found = (await conn.execute(query)).first()
    if found is None:
        return None
    row = found._asdict()
    return Claimed(
        delivery=_delivery(row), url=row["url"], secret=row["secret"], payload=row["payload"]
    )


async def settle(
    catalog: Catalog,
    delivery_id: str,
    sender: str,
    status: DeliveryStatus,
    http_status: int | None,
    error: str | None,
    retry_at: datetime | None = None,
) -> bool:
    """Record how the held attempt went: ``delivered``, ``failed`` for good, or ``pending``
    again at ``retry_at``. False when the hold was lost (the lease ran out, someone else
    took the delivery): that sender records its own attempt."""
    d = schema.webhook_deliveries
    now = _now()
    values: dict[str, Any] = {
        "status": status,
        "last_status": http_status,
        "last_error": error[:MAX_ERROR] if error else None,
        "sender": None,
        "next_attempt_at": retry_at if status == "pending" else None,
    }
    if status == "delivered":
        values["delivered_at"] = now
    async with catalog.engine.begin() as conn:
        done = await conn.execute(
            update(d)
            .where(and_(d.c.id == delivery_id, d.c.sender == sender, d.c.status == "pending"))
            .values(values)
        )
    return done.rowcount == 1


# The log -------------------------------------------------------------------------------------


async def get_delivery(catalog: Catalog, delivery_id: str) -> Delivery | None:
    if not possible_id(delivery_id):
        return None
    d = schema.webhook_deliveries
    async with catalog.reader.connect() as conn:
        row = (await conn.execute(select(d).where(d.c.id == delivery_id))).first()
    return None if row is None else _delivery(row._asdict())


async def log(
    catalog: Catalog,
    webhook_id: str,
    limit: int,
    after: tuple[datetime, str] | None = None,
    status: DeliveryStatus | None = None,
) -> tuple[list[Delivery], tuple[datetime, str] | None]:
    """A page of an endpoint's deliveries, newest first, and where the next page starts."""
    d = schema.webhook_deliveries
    query = select(d).where(d.c.webhook_id == webhook_id)
    if status is not None:
        query = query.where(d.c.status == status)
    if after is not None:
        query = query.where(tuple_(d.c.created_at, d.c.id) < tuple_(*after))
    query = query.order_by(d.c.created_at.desc(), d.c.id.desc()).limit(limit + 1)
    async with catalog.reader.connect() as conn:
        rows = [_delivery(row._asdict()) for row in await conn.execute(query)]
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], (last.created_at, last.id)


async def prune(catalog: Catalog, older_than: float) -> int:
    """Forget finished deliveries created more than ``older_than`` seconds ago."""
    d = schema.webhook_deliveries
    before = _now() - timedelta(seconds=older_than)
    async with catalog.engine.begin() as conn:
        done = await conn.execute(
            delete(d).where(and_(d.c.status != "pending", d.c.created_at < before))
        )
    return int(done.rowcount)
