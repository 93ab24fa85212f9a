"""The catalog store on SQLite and PostgreSQL: migrations from an empty database, users and
videos, and what a failed write leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from backends.catalog import (
    Catalog,
    CatalogOutdated,
    Conflict,
    NewVideo,
    Rendition,
    VideoChanges,
    check,
    downgrade,
    schema,
    search,
    state,
    upgrade,
)
from backends.catalog import engine as engines
from backends.catalog.store import normalise_tags
from gateway.cli import main
from tests.catalog_fixtures import POSTGRES_URL
from tests.serving import free_port

pytestmark = pytest.mark.anyio

TABLES = {
    "users",
    "videos",
    "renditions",
    "video_tags",
    "comments",
    "likes",
    "view_days",
    "refresh_tokens",
    "revoked_tokens",
    "password_resets",
    "login_failures",
    "uploads",
}


async def _tables(engine: AsyncEngine) -> set[str]:
    def names(conn: object) -> set[str]:
        from sqlalchemy import inspect

        return set(inspect(conn).get_table_names())

    async with engine.connect() as conn:
        return await conn.run_sync(names)


async def test_migrations_from_an_empty_database(empty_catalog: AsyncEngine) -> None:
    before = await state(empty_catalog)
    assert before.current is None
    with pytest.raises(CatalogOutdated, match="empty: run `clipsync db upgrade`"):
        await check(empty_catalog)
    after = await upgrade(empty_catalog)
    assert after.ready
    assert await _tables(empty_catalog) >= TABLES
    assert (await check(empty_catalog)).current == after.head
    # Down to nothing and up again: every migration can be undone.
    await downgrade(empty_catalog, "base")
    assert not (TABLES & await _tables(empty_catalog))
    assert (await upgrade(empty_catalog)).ready


async def test_a_schema_from_a_newer_release_is_refused(catalog: Catalog) -> None:
    async with catalog.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'fffffffff'"))
    with pytest.raises(CatalogOutdated, match=r"does not know .*upgrade ClipSync"):
        await check(catalog.engine)


async def test_users_have_unique_emails(catalog: Catalog) -> None:
    user = await catalog.create_user("ada@example.com")
    with pytest.raises(Conflict):
        await catalog.create_user("ada@example.com")
    assert await catalog.get_user(user.id) == user
    assert await catalog.get_user("nobody") is None


async def test_video_round_trip(catalog: Catalog) -> None:
    owner = await catalog.create_user("owner@example.com")
    video = await catalog.create_video(
        owner.id,
        NewVideo(
            title="Robert'); DROP TABLE videos;--",
            description="ünïcödé ✓ 🎬",
            tags=[" Cats ", "cats", "", "dogs  and   birds"],
            privacy="unlisted",
        ),
    )
    assert len(video.id) == 16
    assert video.tags == ["Cats", "dogs and birds"]
    assert video.status == "uploading"
    assert video.created_at.tzinfo is not None
    assert await catalog.get_video(video.id) == video

    await catalog.set_renditions(
        video.id,
        [
            Rendition(name="360p", path=f"videos/{video.id}/360p.mp4", bandwidth=800_000),
            Rendition(name="720p", path=f"videos/{video.id}/720p.mp4", bandwidth=3_000_000),
        ],
    )
    changed = await catalog.update_video(
        video.id, VideoChanges(title="New title", tags=["birds"], status="ready", width=1280)
    )
    assert changed is not None
    assert changed.title == "New title"
    assert changed.tags == ["birds"]
    assert changed.description == video.description  # untouched
    assert [r.name for r in changed.renditions] == ["720p", "360p"]  # by bandwidth
    assert changed.updated_at >= video.updated_at
    assert await catalog.update_video("missing", VideoChanges(title="x")) is None

    removed = await catalog.delete_video(video.id)
    assert removed is not None
    assert removed.id == video.id
    assert await catalog.get_video(video.id) is None
    async with catalog.engine.connect() as conn:
        for table in ("renditions", "video_tags"):
            left = await conn.execute(text(f"SELECT count(*) FROM {table}"))  # noqa: S608
            assert left.scalar() == 0, table


async def test_a_video_needs_an_existing_owner(catalog: Catalog) -> None:
    with pytest.raises(Conflict):
        await catalog.create_video("no-such-user", NewVideo(title="orphan"))
    async with catalog.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM videos"))).scalar() == 0


async def test_full_text_index_follows_every_write(catalog: Catalog) -> None:
    owner = await catalog.create_user("fts@example.com")
    video = await catalog.create_video(
        owner.id, NewVideo(title="Sailing boats", description="A calm harbour", tags=["sea"])
    )

    async def found(word: str) -> bool:
        if catalog.engine.dialect.name == "sqlite":
            query = (
                "SELECT v.id FROM videos_fts JOIN videos v ON v.rowid = videos_fts.rowid "
                "WHERE videos_fts MATCH :q"
            )
        else:
            query = "SELECT id FROM videos WHERE search @@ plainto_tsquery('english', :q)"
        async with catalog.engine.connect() as conn:
            ids = [row[0] for row in await conn.execute(text(query), {"q": word})]
        return video.id in ids

    assert await found("boat")  # stemmed on both engines
    assert await found("harbour")
    assert await found("sea")
    await catalog.update_video(video.id, VideoChanges(title="Mountain hikes", tags=["alps"]))
    assert not await found("boat")
    assert await found("hike")
    assert await found("alps")
    await catalog.delete_video(video.id)
    assert not await found("hike")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (["a", "A", " a "], ["a"]),
        (["", "  ", "x"], ["x"]),
        (["Deep  Sea", "deep sea"], ["Deep Sea"]),
        (["ß", "SS"], ["ß"]),  # casefold: the same tag
    ],
)
def test_tags_are_normalised(given: list[str], kept: list[str]) -> None:
    assert normalise_tags(given) == kept


def test_clipsync_db_upgrade_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/db/catalog.sqlite3"
    assert main(["db", "status", "--catalog", url]) == 0
    assert "schema empty" in capsys.readouterr().out
    assert main(["db", "upgrade", "--catalog", url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "upgrade", "--catalog", url]) == 0  # a second run changes nothing
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("mysql://u@h/db", 2, "scheme 'mysql' is not supported"),
        ("sqlite://", 2, "must name a SQLite file"),
        ("not a url", 2, "not a database URL"),
        (f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db", 1, "cannot reach it"),
    ],
)
def test_clipsync_db_refuses_bad_urls(
    url: str, code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade", "--catalog", url]) == code
    err = capsys.readouterr().err
    assert message in err
    assert "hunter2" not in err


def test_serve_refuses_a_catalog_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path}/catalog.sqlite3"
    assert main(["db", "upgrade", "--catalog", url]) == 0
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as db:
        db.execute("UPDATE alembic_version SET version_num = 'fffffffff'")
    env = {"CLIPSYNC_CATALOG__URL": url}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert main(["serve", "--library", str(tmp_path), "--port", "1"]) == 2
        assert "does not know" in capsys.readouterr().err
        patch.setenv("CLIPSYNC_CATALOG__URL", f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x")
        assert main(["serve", "--library", str(tmp_path), "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert "cannot reach it" in err
        assert "hunter2" not in err
        patch.setenv("CLIPSYNC_CATALOG__URL", url)
        patch.setenv("CLIPSYNC_AUTH__JWT_SECRET", "short")
        assert main(["serve", "--library", str(tmp_path), "--port", "1"]) == 2
        assert "auth.jwt_secret must be at least 32 bytes" in capsys.readouterr().err


@pytest.mark.parametrize("sort", ["newest", "most_viewed"])
async def test_public_listings_can_read_their_index(catalog: Catalog, sort: str) -> None:
    """The listing's condition matches its partial index, so pages are index range reads."""
    from sqlalchemy.dialects import postgresql, sqlite

    query, _ = catalog._listing(text(schema.LISTED), sort)  # type: ignore[arg-type]  # sort: str
    sqlite_dialect = catalog.engine.dialect.name == "sqlite"
    dialect = sqlite.dialect() if sqlite_dialect else postgresql.dialect()
    sql = str(query.limit(21).compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    async with catalog.engine.connect() as conn:
        if sqlite_dialect:
            plan = " ".join(
                str(r[-1]) for r in await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))
            )
        else:
            await conn.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table
            plan = " ".join(r[0] for r in await conn.execute(text(f"EXPLAIN {sql}")))
    assert f"ix_videos_listed_{sort}" in plan, plan
    assert "TEMP B-TREE" not in plan  # SQLite: no sort step


@pytest.mark.parametrize("empty_catalog", ["postgresql"], indirect=True)  # SQLite: no connections
async def test_reads_survive_the_database_dropping_every_connection(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restart (or a proxy's idle timeout) kills every pooled connection: the next
    reads must not fail. Connections idle for over IDLE_PING_AFTER are pinged at checkout."""
    owner = await catalog.create_user("restart@example.com")
    video = await catalog.create_video(owner.id, NewVideo(title="still here"))
    # Hold five pooled connections at once, note their server pids, give them back, kill them.
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(catalog.reader.connect()) for _ in range(5)]
        pids = [(await c.execute(text("SELECT pg_backend_pid()"))).scalar_one() for c in conns]
    killer = engines.create(POSTGRES_URL)
    try:
        async with killer.connect() as conn:
            killed = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM unnest(CAST(:pids AS int[])) AS p"
                        " WHERE pg_terminate_backend(p)"
                    ),
                    {"pids": pids},
                )
            ).scalar_one()
    finally:
        await killer.dispose()
    assert killed == 5
    monkeypatch.setattr(engines, "IDLE_PING_AFTER", 0.0)
    found = await asyncio.gather(*(catalog.get_video(video.id) for _ in range(5)))
    assert [v.title if v else None for v in found] == ["still here"] * 5
    # Writes too: the pool now holds live connections only.
    assert await catalog.update_video(video.id, VideoChanges(title="renamed")) is not None


async def test_common_words_rank_the_newest_matches(catalog: Catalog) -> None:
    """A query matching more than MAX_RESULTS videos ranks the newest MAX_RESULTS of them (so
    its cost is bounded), and a rare one ranks every match."""
    owner = await catalog.create_user("many@example.com")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for n in range(search.MAX_RESULTS + 10):
        # The oldest video is the best match for "common"; the newest is the second best.
        title = "common common common" if n in (0, search.MAX_RESULTS + 9) else f"common {n}"
        rows.append(
            {
                "id": f"bulk{n:06d}",
                "owner_id": owner.id,
                "title": title,
                "description": "rare" if n == 0 else "",
                "tags": [],
                "tags_text": "",
                "privacy": "public",
                "status": "ready",
                "created_at": start + timedelta(minutes=n),
                "updated_at": start,
            }
        )
    async with catalog.engine.begin() as conn:
        await conn.execute(insert(schema.videos), rows)
    found = await search.search(catalog, "common", limit=5, offset=0)
    assert found[0].id == f"bulk{search.MAX_RESULTS + 9:06d}"
    assert "bulk000000" not in {v.id for v in found}
    # Pages end after MAX_RESULTS: the oldest ten matches are beyond them.
    tail = await search.search(catalog, "common", limit=20, offset=search.MAX_RESULTS - 5)
    assert len(tail) == 5
    assert min(v.id for v in tail) >= "bulk000010"
    assert [v.id for v in await search.search(catalog, "rare common", 5, 0)] == ["bulk000000"]


async def test_schema_module_matches_the_migrations(empty_catalog: AsyncEngine) -> None:
    """schema.py is what queries are written against; the migrations are what databases get.
    Alembic's comparison of the two must find nothing but what schema.py leaves out on purpose:
    the dialect-specific full-text objects (and, on SQLite, the DESC listing indexes, which
    Alembic cannot compare there)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    await upgrade(empty_catalog)
    sqlite = empty_catalog.dialect.name == "sqlite"

    def outside(obj: object, name: str | None, kind: str, *_: object) -> bool:
        if kind == "table" and (name or "").startswith("videos_fts"):
            return True
        if kind == "column" and name == "search":
            return True
        if kind == "index" and name == "ix_videos_search":
            return True
        return sqlite and kind == "index" and (name or "").startswith("ix_videos_listed_")

    def differences(conn: object) -> list[object]:
        context = MigrationContext.configure(
            conn,  # type: ignore[arg-type]
            opts={
                "compare_type": True,
                "include_object": lambda *args: not outside(*args),
            },
        )
        return list(compare_metadata(context, schema.metadata))

    async with empty_catalog.connect() as conn:
        assert await conn.run_sync(differences) == []
