"""Comments and likes. Each write changes the row and the video's counter in one transaction,
so counts never drift from the rows they count."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from backends.catalog import schema
from backends.catalog.records import new_id
from backends.catalog.store import Catalog, aware
from backends.errors import NotFound


class Comment(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    video_id: str
    user_id: str
    body: str
    created_at: datetime


async def add_comment(catalog: Catalog, video_id: str, user_id: str, body: str) -> Comment:
    comment = Comment(
        id=new_id(), video_id=video_id, user_id=user_id, body=body, created_at=datetime.now(UTC)
    )
    v = schema.videos
    try:
        async with catalog.engine.begin() as conn:
            await conn.execute(insert(schema.comments).values(**msgspec.structs.asdict(comment)))
            await conn.execute(
                update(v).where(v.c.id == video_id).values(comments=v.c.comments + 1)
            )
    except IntegrityError:
        raise NotFound("no such video") from None
    return comment


async def get_comment(catalog: Catalog, comment_id: str) -> Comment | None:
    c = schema.comments
    async with catalog.reader.connect() as conn:
        row = (await conn.execute(select(c).where(c.c.id == comment_id))).first()
    if row is None:
        return None
    fields = row._asdict()
    return Comment(**{**fields, "created_at": aware(fields["created_at"])})


async def list_comments(
    catalog: Catalog, video_id: str, limit: int, after: tuple[Any, str] | None
) -> tuple[list[Comment], tuple[Any, str] | None]:
    """Newest first, by keyset pages."""
    c = schema.comments
    query = select(c).where(c.c.video_id == video_id)
    if after is not None:
        query = query.where(tuple_(c.c.created_at, c.c.id) < tuple_(*after))
    query = query.order_by(c.c.created_at.desc(), c.c.id.desc()).limit(limit + 1)
    async with catalog.reader.connect() as conn:
        rows = [r._asdict() for r in await conn.execute(query)]
    comments = [Comment(**{**r, "created_at": aware(r["created_at"])}) for r in rows[:limit]]
    if len(rows) <= limit or not comments:
        return comments, None
    return comments, (comments[-1].created_at, comments[-1].id)


async def delete_comment(catalog: Catalog, comment: Comment) -> None:
    c, v = schema.comments, schema.videos
    async with catalog.engine.begin() as conn:
        gone = await conn.execute(delete(c).where(c.c.id == comment.id))
        if gone.rowcount:
            await conn.execute(
                update(v).where(v.c.id == comment.video_id).values(comments=v.c.comments - 1)
            )


async def set_like(catalog: Catalog, video_id: str, user_id: str, liked: bool) -> int:
    """Like or unlike (each idempotent); the video's like count after it."""
    lk, v = schema.likes, schema.videos
    async with catalog.engine.begin() as conn:
        if liked:
            dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
            statement = (
                dialect.insert(lk)
                .values(video_id=video_id, user_id=user_id, created_at=datetime.now(UTC))
                .on_conflict_do_nothing()
            )
            try:
                changed = (await conn.execute(statement)).rowcount
            except IntegrityError:
                raise NotFound("no such video") from None
            step = 1
        else:
            where = (lk.c.video_id == video_id) & (lk.c.user_id == user_id)
            changed = (await conn.execute(delete(lk).where(where))).rowcount
            step = -1
        if changed:
            await conn.execute(update(v).where(v.c.id == video_id).values(likes=v.c.likes + step))
        count = (await conn.execute(select(v.c.likes).where(v.c.id == video_id))).scalar()
    if count is None:
        raise NotFound("no such video")
    return int(count)


async def liked_by(catalog: Catalog, video_id: str, user_id: str) -> bool:
    lk = schema.likes
    where = (lk.c.video_id == video_id) & (lk.c.user_id == user_id)
    async with catalog.reader.connect() as conn:
        return (await conn.execute(select(lk.c.video_id).where(where))).first() is not None
