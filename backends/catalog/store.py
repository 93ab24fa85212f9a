"""The catalog store: users and videos over SQLAlchemy Core, the same code on SQLite and
PostgreSQL. Every write runs in one transaction; a failed write changes no row."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    bindparam,
    delete,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import TextClause

from backends.catalog import schema
from backends.catalog.records import (
    NewVideo,
    Rendition,
    Role,
    User,
    Video,
    VideoChanges,
    new_id,
)
from backends.errors import Conflict

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def possible_id(value: str) -> bool:
    """Whether ``value`` could be one of our ids (``new_id``): anything else is unknown without
    asking the database, which could not even take some strings (PostgreSQL refuses NUL)."""
    return _ID.fullmatch(value) is not None


def _now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes: they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def normalise_tags(tags: Sequence[str]) -> list[str]:
    """Trimmed, without empties or case-insensitive repeats, in the order given."""
    seen: set[str] = set()
    out = []
    for tag in tags:
        clean = " ".join(tag.split())
        if clean and clean.casefold() not in seen:
            seen.add(clean.casefold())
            out.append(clean)
    return out


def _tag_rows(video_id: str, tags: list[str]) -> list[dict[str, str]]:
    return [{"video_id": video_id, "tag": tag.casefold()} for tag in tags]


Sort = Literal["newest", "most_viewed"]
PLAYABLE = ("playable", "ready")


class _RenditionsJson(ColumnElement[str]):
    """The renditions of the row's video as one JSON array, so a video (or a page of them) is
    one query: a second query per request cost as much Python as the first."""

    inherit_cache = True
    type = String()


_RENDITION_FIELDS = (
    "'name', r.name, 'path', r.path, 'bandwidth', r.bandwidth, 'width', r.width, 'height', r.height"
)


@compiles(_RenditionsJson, "postgresql")
def _renditions_postgresql(element: _RenditionsJson, compiler: SQLCompiler, **kw: Any) -> str:
    return (
        f"(SELECT json_agg(json_build_object({_RENDITION_FIELDS}))::text"  # noqa: S608 - constants
        " FROM renditions r WHERE r.video_id = videos.id)"
    )


@compiles(_RenditionsJson, "sqlite")
def _renditions_sqlite(element: _RenditionsJson, compiler: SQLCompiler, **kw: Any) -> str:
    return (
        f"(SELECT json_group_array(json_object({_RENDITION_FIELDS}))"  # noqa: S608 - constants
        " FROM renditions r WHERE r.video_id = videos.id)"
    )


# What a Video is read from: every column but the text the search index is built from and the
# processing lease, and its renditions.
_HIDDEN = ("tags_text", "job_owner", "job_until")
_VIDEO_COLUMNS = [
    *(c for c in schema.videos.c if c.name not in _HIDDEN),
    _RenditionsJson().label("renditions"),
]
# Built once: SQLAlchemy then reuses their cache keys and compiled forms.
_BY_ID = select(*_VIDEO_COLUMNS).where(schema.videos.c.id == bindparam("video_id"))
_BY_IDS = select(*_VIDEO_COLUMNS).where(schema.videos.c.id.in_(bindparam("ids", expanding=True)))
_RENDITIONS = msgspec.json.Decoder(list[Rendition])


# What a User is read from (never the password hash or the session epoch).
_USER_COLUMNS = [schema.users.c[name] for name in User.__struct_fields__]


def _video_of(row: Any) -> Video:
    fields = row._asdict()
    renditions = _RENDITIONS.decode(fields.pop("renditions") or "[]")
    renditions.sort(key=lambda r: (-r.bandwidth, r.name))
    fields["created_at"] = aware(fields["created_at"])
    fields["updated_at"] = aware(fields["updated_at"])
    return Video(**fields, renditions=renditions)


class Catalog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # writes: engine.begin(), one transaction each
        # Reads are single statements: autocommit spares each one a BEGIN and a ROLLBACK.
        self.reader = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def close(self) -> None:
        await self.engine.dispose()

    # Users ----------------------------------------------------------------------------------

    async def create_user(
        self, email: str, password_hash: str | None = None, role: Role = "user"
    ) -> User:
        now = _now()
        row: dict[str, Any] = {
            "id": new_id(),
            "email": email,
            "password_hash": password_hash,
            "role": role,
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(schema.users).values(**row))
        except IntegrityError:
            raise Conflict("a user with this email exists") from None
        return User(id=row["id"], email=email, role=role, disabled=False, created_at=now)

    async def get_user(self, user_id: str) -> User | None:
        if not possible_id(user_id):
            return None
        query = select(*_USER_COLUMNS).where(schema.users.c.id == user_id)
        async with self.reader.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return User(**{**row, "created_at": aware(row["created_at"])})

    async def set_notify_ready(self, user_id: str, notify_ready: bool) -> User | None:
        """Whether the user is emailed when a video of theirs is ready or failed; the user
        after, or None when there is no such user."""
        if not possible_id(user_id):
            return None
        t = schema.users
        async with self.engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        update(t)
                        .where(t.c.id == user_id)
                        .values(notify_ready=notify_ready, updated_at=_now())
                        .returning(*_USER_COLUMNS)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return User(**{**row, "created_at": aware(row["created_at"])})

    async def list_users(
        self, limit: int, after: tuple[Any, str] | None = None
    ) -> tuple[list[User], tuple[Any, str] | None]:
        """Every user, newest first (admin listing), and where the next page starts."""
        t = schema.users
        query = select(*_USER_COLUMNS)
        if after is not None:
            query = query.where(tuple_(t.c.created_at, t.c.id) < tuple_(*after))
        query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        users = [User(**{**row, "created_at": aware(row["created_at"])}) for row in rows[:limit]]
        if len(rows) <= limit or not users:
            return users, None
        return users, (users[-1].created_at, users[-1].id)

    # Videos ---------------------------------------------------------------------------------

    async def create_video(self, owner_id: str, new: NewVideo) -> Video:
        now = _now()
        tags = normalise_tags(new.tags)
        video_id = new_id()
        row: dict[str, Any] = {
            "id": video_id,
            "owner_id": owner_id,
            "title": new.title,
            "description": new.description,
            "tags": tags,
            "tags_text": " ".join(tags),
            "privacy": new.privacy,
            "status": new.status,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(schema.videos).values(**row))
                if tags:
                    await conn.execute(insert(schema.video_tags), _tag_rows(video_id, tags))
        except IntegrityError:
            raise Conflict("the owner of this video does not exist") from None
        video = await self.get_video(video_id)
        assert video is not None
        return video

    async def get_video(self, video_id: str) -> Video | None:
        if not possible_id(video_id):
            return None
        async with self.reader.connect() as conn:
            return await self._video(conn, video_id)

    async def get_videos(self, ids: Sequence[str]) -> list[Video]:
        """The videos of ``ids`` that exist, in the order given."""
        ids = [i for i in ids if possible_id(i)]
        if not ids:
            return []
        async with self.reader.connect() as conn:
            rows = await conn.execute(_BY_IDS, {"ids": list(ids)})
            found = {video.id: video for video in map(_video_of, rows)}
        return [found[i] for i in ids if i in found]

    async def _video(self, conn: AsyncConnection, video_id: str) -> Video | None:
        row = (await conn.execute(_BY_ID, {"video_id": video_id})).first()
        return None if row is None else _video_of(row)

    async def update_video(self, video_id: str, changes: VideoChanges) -> Video | None:
        values: dict[str, Any] = msgspec.structs.asdict(changes)
        values = {k: v for k, v in values.items() if v is not msgspec.UNSET}
        tags = None
        if "tags" in values:
            tags = normalise_tags(values["tags"])
            values["tags"] = tags
            values["tags_text"] = " ".join(tags)
        values["updated_at"] = _now()
        v = schema.videos
        async with self.engine.begin() as conn:
            done = await conn.execute(update(v).where(v.c.id == video_id).values(**values))
            if done.rowcount == 0:
                return None
            if tags is not None:
                t = schema.video_tags
                await conn.execute(delete(t).where(t.c.video_id == video_id))
                if tags:
                    await conn.execute(insert(t), _tag_rows(video_id, tags))
            return await self._video(conn, video_id)

    async def set_renditions(self, video_id: str, renditions: Sequence[Rendition]) -> None:
        r = schema.renditions
        rows = [{"video_id": video_id, **msgspec.structs.asdict(x)} for x in renditions]
        async with self.engine.begin() as conn:
            await conn.execute(delete(r).where(r.c.video_id == video_id))
            if rows:
                await conn.execute(insert(r), rows)

    # Listings: keyset pagination, so a page costs the same at any depth ---------------------

    def _listing(
        self, where: ColumnElement[bool] | TextClause, sort: Sort
    ) -> tuple[Select[Any], list[Any]]:
        v = schema.videos
        key = [v.c.created_at if sort == "newest" else v.c.views, v.c.id]
        return select(*_VIDEO_COLUMNS).where(where).order_by(*(k.desc() for k in key)), key

    async def _page(
        self,
        where: ColumnElement[bool] | TextClause,
        sort: Sort,
        limit: int,
        after: tuple[Any, str] | None,
    ) -> tuple[list[Video], tuple[Any, str] | None]:
        query, key = self._listing(where, sort)
        if after is not None:
            query = query.where(tuple_(*key) < tuple_(*after))
        async with self.reader.connect() as conn:
            rows = list(await conn.execute(query.limit(limit + 1)))
        videos = [_video_of(row) for row in rows[:limit]]
        if len(rows) <= limit or not videos:
            return videos, None
        last = videos[-1]
        return videos, ((last.created_at if sort == "newest" else last.views), last.id)

    async def list_public(
        self, sort: Sort, limit: int, after: tuple[Any, str] | None = None
    ) -> tuple[list[Video], tuple[Any, str] | None]:
        """Public videos that play (playable or ready), and where the next page starts."""
        # Literally the partial indexes' condition: a bound-parameter version would not match it.
        return await self._page(text(schema.LISTED), sort, limit, after)

    async def list_owned(
        self, owner_id: str, limit: int, after: tuple[Any, str] | None = None
    ) -> tuple[list[Video], tuple[Any, str] | None]:
        """Every video of ``owner_id``, newest first, whatever its status or privacy."""
        return await self._page(schema.videos.c.owner_id == owner_id, "newest", limit, after)

    async def delete_video(self, video_id: str) -> Video | None:
        """Removes the video and everything hanging off it; returns what was removed."""
        v = schema.videos
        async with self.engine.begin() as conn:
            video = await self._video(conn, video_id)
            if video is not None:
                await conn.execute(delete(v).where(v.c.id == video_id))
        return video
