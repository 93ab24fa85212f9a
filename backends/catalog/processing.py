"""Processing state in the catalog: one worker at a time per video, and its progress.

A worker *claims* a video for ``ttl`` seconds (a conditional update: a second worker handed the
same job — a re-delivery, a second submission — finds it held and waits), renews the claim
while it works, and lets go when done. A worker that dies holds the video until the claim
runs out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select, update

from backends.catalog import schema
from backends.catalog.store import Catalog

UNFINISHED = ("uploaded", "processing", "playable")


def _now() -> datetime:
    return datetime.now(UTC)


async def claim(catalog: Catalog, video_id: str, owner: str, ttl: float) -> bool:
    """Hold ``video_id`` for ``ttl`` seconds unless another owner holds it now."""
    v = schema.videos
    now = _now()
    free = or_(v.c.job_until.is_(None), v.c.job_until < now, v.c.job_owner == owner)
    async with catalog.engine.begin() as conn:
        done = await conn.execute(
            update(v)
            .where(and_(v.c.id == video_id, free))
            .values(job_owner=owner, job_until=now + timedelta(seconds=ttl))
        )
    return done.rowcount == 1


async def renew(catalog: Catalog, video_id: str, owner: str, ttl: float) -> bool:
    """Extend our hold; False when we lost it (it ran out and someone else took it)."""
    v = schema.videos
    async with catalog.engine.begin() as conn:
        done = await conn.execute(
            update(v)
            .where(and_(v.c.id == video_id, v.c.job_owner == owner))
            .values(job_until=_now() + timedelta(seconds=ttl))
        )
    return done.rowcount == 1


async def release(catalog: Catalog, video_id: str, owner: str) -> None:
    v = schema.videos
    async with catalog.engine.begin() as conn:
        await conn.execute(
            update(v)
            .where(and_(v.c.id == video_id, v.c.job_owner == owner))
            .values(job_owner=None, job_until=None)
        )


async def set_progress(catalog: Catalog, video_id: str, percent: int) -> None:
    """Record progress (0-100) without touching ``updated_at``: it is not an edit."""
    v = schema.videos
    async with catalog.engine.begin() as conn:
        await conn.execute(
            update(v).where(v.c.id == video_id).values(progress=max(0, min(100, percent)))
        )


async def unfinished(catalog: Catalog, older_than: float = 0.0, limit: int = 1000) -> list[str]:
    """Videos whose processing has not ended and nobody holds, untouched for ``older_than``
    seconds: the jobs a restart (or a lost submission) left behind."""
    v = schema.videos
    now = _now()
    query = (
        select(v.c.id)
        .where(
            v.c.status.in_(UNFINISHED),
            or_(v.c.job_until.is_(None), v.c.job_until < now),
            v.c.updated_at <= now - timedelta(seconds=older_than),
        )
        .order_by(v.c.updated_at)
        .limit(limit)
    )
    async with catalog.reader.connect() as conn:
        return [str(row[0]) for row in await conn.execute(query)]


async def touch(catalog: Catalog, video_id: str) -> None:
    """Mark ``video_id`` as just looked at (so a sweep submits it once per period)."""
    v = schema.videos
    async with catalog.engine.begin() as conn:
        await conn.execute(update(v).where(v.c.id == video_id).values(updated_at=_now()))
