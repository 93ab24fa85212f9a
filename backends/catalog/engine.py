"""From a catalog URL to an async SQLAlchemy engine: aiosqlite for SQLite, asyncpg for
PostgreSQL. The ``Any`` of driver options stays here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class CatalogURLError(ValueError):
    """A catalog URL this gateway cannot use; the message never shows the password."""


def parse(url: str) -> URL:
    """``sqlite:///path/file.db`` (a file; created with its folder) or
    ``postgresql://user:password@host:5432/db`` (``?options`` as asyncpg takes them)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CatalogURLError("catalog.url is not a database URL") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise CatalogURLError(
            f"catalog.url scheme {parsed.drivername!r} is not supported: use sqlite:///file "
            "or postgresql://user@host/db"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        raise CatalogURLError("catalog.url must name a SQLite file (sqlite:///path/catalog.db)")
    return parsed


def embedded(url: str) -> bool:
    return parse(url).drivername.startswith("sqlite")


def make_folder(url: str) -> None:
    """Create the folder of a SQLite file (nothing for a server database)."""
    parsed = parse(url)
    if parsed.drivername.startswith("sqlite") and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def display(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a URL)"


def create(url: str, pool_size: int = 10, schema: str | None = None) -> AsyncEngine:
    """The engine for ``url``. ``schema``: PostgreSQL schema to work in (tests isolate runs)."""
    parsed = parse(url)
    if parsed.drivername.startswith("sqlite"):
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    options: dict[str, Any] = {}
    if schema:
        options["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = create_async_engine(parsed, pool_size=pool_size, max_overflow=pool_size, **options)
    _ping_when_idle(engine)
    return engine


IDLE_PING_AFTER = 1.0  # seconds a pooled connection may sit unused before it is pinged


def _ping_when_idle(engine: AsyncEngine) -> None:
    """SQLAlchemy's ``pool_pre_ping`` is a round trip before every checkout: under load, a
    quarter of a catalog read's CPU. A connection that was in use a moment ago is alive, so only
    one idle for over a second is pinged (after a database restart, that is every one of them);
    a dead one is replaced before the request uses it."""
    dialect = engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _used(_dbapi: Any, record: Any) -> None:
        record.info["used"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _check(dbapi: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("used", 0.0) <= IDLE_PING_AFTER:
            return
        try:
            dialect.do_ping(dbapi)
        except Exception as exc:  # the pool retries the checkout with a new connection
            raise DisconnectionError(f"idle catalog connection is gone: {exc}") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the writer; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "foreign_keys=ON",
        "busy_timeout=5000",
        "synchronous=NORMAL",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
