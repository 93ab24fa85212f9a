"""Alembic environment: runs on the connection the caller hands over (``backends.catalog.migrate``),
so migrations use the same engine settings (driver, schema search path) as the gateway."""

from __future__ import annotations

from alembic import context

from backends.catalog.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `clipsync db upgrade`, not the alembic command")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by table copy
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
