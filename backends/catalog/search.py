"""Ranked full-text search over title, description and tags, the same on both engines.

A query is reduced to its words (letters and digits, any script) before it reaches the database:
FTS5's and tsquery's own syntax never sees user input, so quotes, operators and SQL
metacharacters are just text. All words must match (as with PostgreSQL's plainto_tsquery);
ranking is BM25 with title > tags > description on SQLite, ts_rank_cd over the weighted vector on
PostgreSQL.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import text

from backends.catalog.records import Video
from backends.catalog.store import PLAYABLE, Catalog

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_WORDS = 16

_SQLITE = f"""
SELECT v.id FROM videos_fts JOIN videos v ON v.rowid = videos_fts.rowid
WHERE videos_fts MATCH :q AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
ORDER BY bm25(videos_fts, 10.0, 2.0, 5.0), v.id LIMIT :limit OFFSET :offset
"""  # noqa: S608 - PLAYABLE is our own constant
_POSTGRES = f"""
SELECT v.id FROM videos v, plainto_tsquery('english', :q) query
WHERE v.search @@ query AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
ORDER BY ts_rank_cd(v.search, query) DESC, v.id LIMIT :limit OFFSET :offset
"""  # noqa: S608


def words(query: str) -> list[str]:
    """The searchable words of ``query`` (lower-cased, at most MAX_WORDS, no repeats)."""
    out: list[str] = []
    for word in _WORD.findall(query.casefold()):
        if word not in out:
            out.append(word)
    return out[:MAX_WORDS]


async def search(catalog: Catalog, query: str, limit: int, offset: int) -> list[Video]:
    found = words(query)
    if not found:
        return []
    sqlite = catalog.engine.dialect.name == "sqlite"
    # FTS5: each word a quoted string (implicit AND); tsquery: plain words.
    q = " ".join(f'"{w}"' for w in found) if sqlite else " ".join(found)
    params: dict[str, Any] = {"q": q, "limit": limit, "offset": offset}
    async with catalog.engine.connect() as conn:
        ids = [row[0] for row in await conn.execute(text(_SQLITE if sqlite else _POSTGRES), params)]
    return await catalog.get_videos(ids)


_TAG_NEIGHBOURS = f"""
SELECT t2.video_id FROM video_tags t1
JOIN video_tags t2 ON t2.tag = t1.tag AND t2.video_id <> t1.video_id
JOIN videos v ON v.id = t2.video_id
WHERE t1.video_id = :id AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
GROUP BY t2.video_id, v.views ORDER BY count(*) DESC, v.views DESC, t2.video_id LIMIT :limit
"""  # noqa: S608
_SQLITE_ANY = f"""
SELECT v.id FROM videos_fts JOIN videos v ON v.rowid = videos_fts.rowid
WHERE videos_fts MATCH :q AND v.id <> :id AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
ORDER BY bm25(videos_fts, 10.0, 2.0, 5.0), v.id LIMIT :limit
"""  # noqa: S608
_POSTGRES_ANY = f"""
SELECT v.id FROM videos v, websearch_to_tsquery('english', :q) query
WHERE v.search @@ query AND v.id <> :id AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
ORDER BY ts_rank_cd(v.search, query) DESC, v.id LIMIT :limit
"""  # noqa: S608


async def related(catalog: Catalog, video: Video, limit: int) -> list[Video]:
    """Recommendations for ``video``: public playable videos sharing the most tags, then those
    whose text best matches its title and tags (any word)."""
    params: dict[str, Any] = {"id": video.id, "limit": limit}
    async with catalog.engine.connect() as conn:
        ids = [row[0] for row in await conn.execute(text(_TAG_NEIGHBOURS), params)]
        found = words(" ".join([video.title, *video.tags]))
        if len(ids) < limit and found:
            sqlite = catalog.engine.dialect.name == "sqlite"
            q = " OR ".join(f'"{w}"' for w in found) if sqlite else " or ".join(found)
            more = await conn.execute(
                text(_SQLITE_ANY if sqlite else _POSTGRES_ANY), {**params, "q": q}
            )
            ids += [row[0] for row in more if row[0] not in ids]
    return await catalog.get_videos(ids[:limit])
