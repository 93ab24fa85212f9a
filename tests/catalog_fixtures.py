"""Catalog databases for tests: a SQLite file, and PostgreSQL (127.0.0.1:5432, database
``test``; one fresh schema per test, dropped afterwards). Both start empty: the tests migrate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from backends.catalog import Catalog, engines, upgrade

POSTGRES_URL = os.environ.get("CLIPSYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
HOW = "start PostgreSQL on 127.0.0.1:5432 with a database `test` (or set CLIPSYNC_TEST_POSTGRES)"


async def _postgres_reachable() -> bool:
    probe = engines.create(POSTGRES_URL)
    try:
        async with probe.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        await probe.dispose()


async def require_postgres() -> None:
    """Fail in CI, skip elsewhere (saying how to enable), when PostgreSQL is not there."""
    if await _postgres_reachable():
        return
    if os.environ.get("CI"):
        pytest.fail(f"no PostgreSQL at {engines.display(POSTGRES_URL)}: CI must run these")
    pytest.skip(f"no PostgreSQL at {engines.display(POSTGRES_URL)}: {HOW}")


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards: for a gateway process,
    which cannot be told a schema. (Synchronous: for module-scoped fixtures.)"""
    asyncio.run(require_postgres())
    name = f"clipsync_test_{uuid.uuid4().hex[:12]}"

    async def run(statement: str) -> None:
        engine = engines.create(POSTGRES_URL)
        try:
            async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_catalog(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database of each kind."""
    if request.param == "sqlite":
        engine = engines.create(f"sqlite:///{tmp_path}/catalog.sqlite3")
        yield engine
        await engine.dispose()
        return
    await require_postgres()
    schema = f"clipsync_test_{uuid.uuid4().hex[:12]}"
    admin = engines.create(POSTGRES_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = engines.create(POSTGRES_URL, schema=schema)
    try:
        yield engine
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture
async def catalog(empty_catalog: AsyncEngine) -> Catalog:
    await upgrade(empty_catalog)
    return Catalog(empty_catalog)
