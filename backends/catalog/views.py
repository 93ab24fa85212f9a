"""View analytics: player beacons counted in memory and written in batches.

A beacon costs no database write: the aggregator adds it to per-(video, day) totals in memory,
and a flush every few seconds (and at shutdown) upserts each total once. A viewer session
counts one view and at most one completion per video, however many beacons it sends; the
deduplication is in process, or in Redis when configured so replicas agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from backends.cache.memory import ByteBudgetLRU
from backends.cache.redis_tier import RedisTier
from backends.catalog import schema
from backends.catalog.store import PLAYABLE, Catalog

log = logging.getLogger("clipsync.views")
Event = Literal["start", "progress", "complete"]
SESSION_TTL = 6 * 3600.0  # a session seen again after this counts a new view
MAX_WATCH_MS = 3_600_000  # one beacon may report at most an hour watched


@dataclass
class _Totals:
    views: int = 0
    watch_ms: int = 0
    completions: int = 0


class Seen:
    """Which (video, session, event) have been counted: in process, with a bounded memory."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self._lru: ByteBudgetLRU[bool] = ByteBudgetLRU(capacity)

    async def first(self, key: str) -> bool:
        if self._lru.get(key):
            return False
        self._lru.put(key, True, 1, ttl=SESSION_TTL)
        return True


class SharedSeen(Seen):
    """Deduplication every replica agrees on (Redis SET NX with a TTL); in process while Redis
    cannot answer."""

    def __init__(self, redis: RedisTier) -> None:
        super().__init__()
        self.redis = redis

    async def first(self, key: str) -> bool:
        claimed = await self.redis.claim(f"seen:{key}", SESSION_TTL)
        if isinstance(claimed, bool):
            return claimed
        return await super().first(key)


@dataclass
class ViewAggregator:
    catalog: Catalog
    seen: Seen = field(default_factory=Seen)
    interval: float = 5.0
    pending: dict[tuple[str, date], _Totals] = field(default_factory=dict)
    beacons: int = 0
    flushes: int = 0
    _task: asyncio.Task[None] | None = None

    async def beacon(self, video_id: str, session: str, event: Event, watched_ms: int) -> None:
        self.beacons += 1
        totals = self.pending.setdefault((video_id, datetime.now(UTC).date()), _Totals())
        if await self.seen.first(f"{video_id}\x00{session}\x00start"):
            totals.views += 1
        totals.watch_ms += max(0, min(watched_ms, MAX_WATCH_MS))
        if event == "complete" and await self.seen.first(f"{video_id}\x00{session}\x00complete"):
            totals.completions += 1
        self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:  # the totals stay pending: the next flush retries
                log.warning("view statistics not written yet (%s); retrying", type(exc).__name__)

    async def flush(self) -> int:
        """Write what is pending, one upsert per (video, day); returns how many."""
        batch, self.pending = self.pending, {}
        if not batch:
            return 0
        try:
            await _write(self.catalog, batch)
        except BaseException:
            for key, totals in batch.items():  # merge back: nothing counted is lost
                into = self.pending.setdefault(key, _Totals())
                into.views += totals.views
                into.watch_ms += totals.watch_ms
                into.completions += totals.completions
            raise
        self.flushes += 1
        return len(batch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()


async def _write(catalog: Catalog, batch: dict[tuple[str, date], _Totals]) -> None:
    d, v = schema.view_days, schema.videos
    async with catalog.engine.begin() as conn:
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        existing = set(
            (await conn.execute(select(v.c.id).where(v.c.id.in_({k[0] for k in batch})))).scalars()
        )
        for (video_id, day), t in batch.items():
            if video_id not in existing:
                continue  # deleted since: its beacons go with it
            statement = dialect.insert(d).values(
                video_id=video_id, day=day, views=t.views, watch_ms=t.watch_ms,
                completions=t.completions,
            )  # fmt: skip
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[d.c.video_id, d.c.day],
                    set_={
                        "views": d.c.views + statement.excluded.views,
                        "watch_ms": d.c.watch_ms + statement.excluded.watch_ms,
                        "completions": d.c.completions + statement.excluded.completions,
                    },
                )
            )
            if t.views:
                await conn.execute(
                    update(v).where(v.c.id == video_id).values(views=v.c.views + t.views)
                )


class DayStats(msgspec.Struct, frozen=True, kw_only=True):
    day: date
    views: int
    watch_ms: int
    completions: int


async def daily(catalog: Catalog, video_id: str, days: int) -> list[DayStats]:
    d = schema.view_days
    since = datetime.now(UTC).date() - timedelta(days=days - 1)
    query = (
        select(d.c.day, d.c.views, d.c.watch_ms, d.c.completions)
        .where((d.c.video_id == video_id) & (d.c.day >= since))
        .order_by(d.c.day)
    )
    async with catalog.reader.connect() as conn:
        return [DayStats(**row._asdict()) for row in await conn.execute(query)]


async def trending(catalog: Catalog, days: int, limit: int) -> list[str]:
    """Ids of public playable videos with the most views over the last ``days`` days."""
    d, v = schema.view_days, schema.videos
    since = datetime.now(UTC).date() - timedelta(days=days - 1)
    total = func.sum(d.c.views).label("recent")
    query: Any = (
        select(d.c.video_id, total)
        .join(v, v.c.id == d.c.video_id)
        .where((d.c.day >= since) & (v.c.privacy == "public") & v.c.status.in_(PLAYABLE))
        .group_by(d.c.video_id)
        .order_by(total.desc(), d.c.video_id)
        .limit(limit)
    )
    async with catalog.reader.connect() as conn:
        return [row[0] for row in await conn.execute(query)]
