"""Schema migrations (Alembic), run in code on the catalog's own engine.

``upgrade`` brings a database to the newest revision (``clipsync db upgrade``); ``check`` is
what the gateway runs at start-up: it refuses a schema that is behind or ahead of this code
with a message saying what to do, never a stack trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from backends.errors import ClipSyncError


class CatalogOutdated(ClipSyncError):
    """The database's schema is not the one this code expects."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None  # None: an empty database
    head: str

    @property
    def ready(self) -> bool:
        return self.current == self.head


def _config() -> Config:
    config = Config()
    location = resources.files("backends.catalog").joinpath("migrations")
    config.set_main_option("script_location", str(location))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def revisions() -> frozenset[str]:
    """Every revision this code ships: a database at any other is newer than this code."""
    return frozenset(s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions())


async def state(engine: AsyncEngine) -> SchemaState:
    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return SchemaState(await connection.run_sync(current), head())


async def _migrate(engine: AsyncEngine, revision: str, down: bool) -> SchemaState:
    def run(connection: Connection) -> None:
        config = _config()
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)
    return await state(engine)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> SchemaState:
    return await _migrate(engine, revision, down=False)


async def downgrade(engine: AsyncEngine, revision: str) -> SchemaState:
    """Undo migrations down to ``revision`` ('base': an empty schema). For development."""
    return await _migrate(engine, revision, down=True)


async def check(engine: AsyncEngine) -> SchemaState:
    found = await state(engine)
    if found.ready:
        return found
    known = revisions()
    if found.current is None:
        raise CatalogOutdated("the catalog database is empty: run `clipsync db upgrade`")
    if found.current not in known:
        raise CatalogOutdated(
            f"the catalog schema is at revision {found.current}, which this version of "
            f"ClipSync does not know (newest here: {found.head}): upgrade ClipSync"
        )
    raise CatalogOutdated(
        f"the catalog schema is at revision {found.current}, behind {found.head}: "
        "run `clipsync db upgrade`"
    )


async def prepare(engine: AsyncEngine, create_if_empty: bool) -> SchemaState:
    """What the gateway runs at start-up: an empty embedded database gets the schema (nothing
    can be lost), anything else must already be at the newest revision (``check``)."""
    if create_if_empty and (await state(engine)).current is None:
        return await upgrade(engine)
    return await check(engine)
