"""Ranked full-text search over title, description and tags, the same on both engines.

A query is reduced to its words (letters and digits, any script) before it reaches the database:
FTS5's and tsquery's own syntax never sees user input, so quotes, operators and SQL
metacharacters are just text. All words must match (as with PostgreSQL's plainto_tsquery);
ranking is BM25 with title > tags > description on SQLite, ts_rank_cd over the weighted vector on
PostgreSQL.

Ranking reads every candidate row, so a query matching half the catalog would cost a scan of
half of it (80 ms for a word in 48,000 of 100,000 videos). Candidates are therefore the
MAX_RESULTS most recently added matches, ranked among themselves: a rare query ranks all its
matches; a very common one ranks the newest thousand (about 4 ms for that same word). Pages
end at MAX_RESULTS either way.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import String, bindparam, text

from backends.catalog.records import Video
from backends.catalog.store import PLAYABLE, Catalog

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_WORDS = 16
MAX_RESULTS = 1000  # candidates ranked per query, and where search pages end

# SQLite: FTS5 rowids follow insertion, so the newest candidates are the highest rowids, read
# straight off the index; bm25 is computed for those only.
_SQLITE = f"""
SELECT id FROM (
  SELECT v.id, bm25(videos_fts, 10.0, 2.0, 5.0) AS score
  FROM videos_fts JOIN videos v ON v.rowid = videos_fts.rowid
  WHERE videos_fts MATCH :q AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
  ORDER BY videos_fts.rowid DESC LIMIT {MAX_RESULTS}
) ORDER BY score, id LIMIT :limit OFFSET :offset
"""  # noqa: S608 - PLAYABLE and MAX_RESULTS are our own constants
_POSTGRES = f"""
SELECT c.id FROM (
  SELECT v.id, v.search FROM videos v, plainto_tsquery('english', :q) query
  WHERE v.search @@ query AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
  ORDER BY v.created_at DESC LIMIT {MAX_RESULTS}
) c, plainto_tsquery('english', :q) query
ORDER BY ts_rank_cd(c.search, query) DESC, c.id LIMIT :limit OFFSET :offset
"""  # noqa: S608


def words(query: str) -> list[str]:
    """The searchable words of ``query`` (lower-cased, at most MAX_WORDS, no repeats)."""
    out: list[str] = []
    for word in _WORD.findall(query.casefold()):
        if word not in out:
            out.append(word)
    return out[:MAX_WORDS]


# PostgreSQL gets the words as a literal (they are letters and digits only, see ``words``): a
# bound parameter lets it reuse one generic plan for every query, which scans all matches of a
# common word (90 ms) where the plan for that word walks the newest-first index (4 ms).
_PG_QUERY = text(_POSTGRES).bindparams(bindparam("q", type_=String(), literal_execute=True))
_SQLITE_QUERY = text(_SQLITE)


async def search(catalog: Catalog, query: str, limit: int, offset: int) -> list[Video]:
    found = words(query)
    if not found:
        return []
    sqlite = catalog.engine.dialect.name == "sqlite"
    # FTS5: each word a quoted string (implicit AND); tsquery: plain words.
    q = " ".join(f'"{w}"' for w in found) if sqlite else " ".join(found)
    params: dict[str, Any] = {"q": q, "limit": limit, "offset": offset}
    async with catalog.reader.connect() as conn:
        ids = [row[0] for row in await conn.execute(_SQLITE_QUERY if sqlite else _PG_QUERY, params)]
    return await catalog.get_videos(ids)


_TAG_NEIGHBOURS = f"""
SELECT t2.video_id FROM video_tags t1
JOIN video_tags t2 ON t2.tag = t1.tag AND t2.video_id <> t1.video_id
JOIN videos v ON v.id = t2.video_id
WHERE t1.video_id = :id AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
GROUP BY t2.video_id, v.views ORDER BY count(*) DESC, v.views DESC, t2.video_id LIMIT :limit
"""  # noqa: S608
_SQLITE_ANY = f"""
SELECT id FROM (
  SELECT v.id, bm25(videos_fts, 10.0, 2.0, 5.0) AS score
  FROM videos_fts JOIN videos v ON v.rowid = videos_fts.rowid
  WHERE videos_fts MATCH :q AND v.id <> :id AND v.privacy = 'public'
    AND v.status IN {PLAYABLE!r}
  ORDER BY videos_fts.rowid DESC LIMIT {MAX_RESULTS}
) ORDER BY score, id LIMIT :limit
"""  # noqa: S608
_POSTGRES_ANY = f"""
SELECT c.id FROM (
  SELECT v.id, v.search FROM videos v, websearch_to_tsquery('english', :q) query
  WHERE v.search @@ query AND v.id <> :id AND v.privacy = 'public' AND v.status IN {PLAYABLE!r}
  ORDER BY v.created_at DESC LIMIT {MAX_RESULTS}
) c, websearch_to_tsquery('english', :q) query
ORDER BY ts_rank_cd(c.search, query) DESC, c.id LIMIT :limit
"""  # noqa: S608


_PG_ANY_QUERY = text(_POSTGRES_ANY).bindparams(bindparam("q", type_=String(), literal_execute=True))
_SQLITE_ANY_QUERY = text(_SQLITE_ANY)


async def related(catalog: Catalog, video: Video, limit: int) -> list[Video]:
    """Recommendations for ``video``: public playable videos sharing the most tags, then those
    whose text best matches its title and tags (any word)."""
    params: dict[str, Any] = {"id": video.id, "limit": limit}
    async with catalog.reader.connect() as conn:
        ids = [row[0] for row in await conn.execute(text(_TAG_NEIGHBOURS), params)]
        found = words(" ".join([video.title, *video.tags]))
        if len(ids) < limit and found:
            sqlite = catalog.engine.dialect.name == "sqlite"
            q = " OR ".join(f'"{w}"' for w in found) if sqlite else " or ".join(found)
            more = await conn.execute(
                _SQLITE_ANY_QUERY if sqlite else _PG_ANY_QUERY, {**params, "q": q}
            )
            ids += [row[0] for row in more if row[0] not in ids]
    return await catalog.get_videos(ids[:limit])
