"""Resumable uploads in the catalog: the offset of each, and one writer at a time.

A PATCH first *claims* the upload at the offset it was told (a conditional update: of two
concurrent PATCHes one wins, the other learns the offset moved or a writer is busy), writes its
part to storage, then *advances* the offset by what it stored and lets go. A writer that dies
holds its claim only until ``writer_until``; after that anyone may claim again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from backends.catalog import schema
from backends.catalog.records import new_id
from backends.catalog.store import Catalog, aware, possible_id
from backends.errors import Conflict


class Upload(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    video_id: str
    user_id: str
    length: int
    offset: int
    parts: int
    filename: str
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None

    @property
    def complete(self) -> bool:
        return self.offset == self.length


def _now() -> datetime:
    return datetime.now(UTC)


def _upload(row: dict[str, object]) -> Upload:
    fields = {str(k): v for k, v in row.items() if k != "writer_until"}
    for name in ("created_at", "expires_at", "completed_at"):
        value = fields[name]
        if isinstance(value, datetime):
            fields[name] = aware(value)
    return msgspec.convert(fields, Upload)


async def create(
    catalog: Catalog, video_id: str, user_id: str, length: int, filename: str, ttl: float
) -> Upload:
    """A new upload for ``video_id``; Conflict if the video already has one."""
    now = _now()
    row = {
        "id": new_id(),
        "video_id": video_id,
        "user_id": user_id,
        "length": length,
        "offset": 0,
        "parts": 0,
        "filename": filename,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl),
        "writer_until": None,
        "completed_at": None,
    }
    try:
        async with catalog.engine.begin() as conn:
            await conn.execute(insert(schema.uploads).values(**row))
    except IntegrityError:
        raise Conflict("this video already has an upload") from None
    return _upload(row)


async def get(catalog: Catalog, upload_id: str) -> Upload | None:
    if not possible_id(upload_id):
        return None
    u = schema.uploads
    async with catalog.reader.connect() as conn:
        row = (await conn.execute(select(u).where(u.c.id == upload_id))).first()
    return None if row is None else _upload(row._asdict())


async def claim(catalog: Catalog, upload_id: str, offset: int, hold: float) -> bool:
    """Become the one writer of ``upload_id`` at ``offset`` for at most ``hold`` seconds."""
    u = schema.uploads
    now = _now()
    async with catalog.engine.begin() as conn:
        done = await conn.execute(
            update(u)
            .where(
                and_(
                    u.c.id == upload_id,
                    u.c.offset == offset,
                    u.c.completed_at.is_(None),
                    or_(u.c.writer_until.is_(None), u.c.writer_until < now),
                )
            )
            .values(writer_until=now + timedelta(seconds=hold))
        )
    return done.rowcount == 1


async def advance(catalog: Catalog, upload_id: str, offset: int, stored: int) -> None:
    """The claimed writer stored ``stored`` bytes at ``offset``: move on and let go."""
    u = schema.uploads
    values: dict[str, object] = {"writer_until": None}
    if stored:
        values.update(offset=offset + stored, parts=u.c.parts + 1)
    async with catalog.engine.begin() as conn:
        await conn.execute(
            update(u).where(and_(u.c.id == upload_id, u.c.offset == offset)).values(values)
        )


async def finish(catalog: Catalog, upload_id: str) -> None:
    u = schema.uploads
    async with catalog.engine.begin() as conn:
        await conn.execute(update(u).where(u.c.id == upload_id).values(completed_at=_now()))


async def remove(catalog: Catalog, upload_id: str) -> None:
    async with catalog.engine.begin() as conn:
        await conn.execute(delete(schema.uploads).where(schema.uploads.c.id == upload_id))


async def expired(catalog: Catalog, limit: int = 100) -> list[Upload]:
    """Unfinished uploads past their expiry, oldest first (for the cleaner)."""
    u = schema.uploads
    query = (
        select(u)
        .where(and_(u.c.expires_at < _now(), u.c.completed_at.is_(None)))
        .order_by(u.c.expires_at)
        .limit(limit)
    )
    async with catalog.reader.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [_upload(row._asdict()) for row in rows]


async def renew(catalog: Catalog, upload_id: str, offset: int, hold: float) -> None:
    """The writer at ``offset`` is still streaming: keep its claim for ``hold`` more seconds."""
    u = schema.uploads
    async with catalog.engine.begin() as conn:
        await conn.execute(
            update(u)
            .where(and_(u.c.id == upload_id, u.c.offset == offset, u.c.writer_until.is_not(None)))
            .values(writer_until=_now() + timedelta(seconds=hold))
        )


async def used_bytes(catalog: Catalog, user_id: str) -> int:
    """What ``user_id`` holds: stored originals plus the full length of unfinished uploads."""
    v, u = schema.videos, schema.uploads
    originals = select(func.coalesce(func.sum(v.c.original_size), 0)).where(v.c.owner_id == user_id)
    pending = select(func.coalesce(func.sum(u.c.length), 0)).where(
        and_(u.c.user_id == user_id, u.c.completed_at.is_(None))
    )
    async with catalog.reader.connect() as conn:
        stored = (await conn.execute(originals)).scalar_one()
        waiting = (await conn.execute(pending)).scalar_one()
    return int(stored) + int(waiting)
