"""The catalog: videos, users and their activity in SQLite (default) or PostgreSQL."""

from __future__ import annotations

from backends.catalog import engine as engines
from backends.catalog import processing, search, social
from backends.catalog.engine import CatalogURLError
from backends.catalog.migrate import (
    CatalogOutdated,
    SchemaState,
    check,
    downgrade,
    prepare,
    state,
    upgrade,
)
from backends.catalog.records import NewVideo, Rendition, User, Video, VideoChanges
from backends.catalog.store import Catalog
from backends.errors import Conflict

__all__ = [
    "Catalog",
    "CatalogOutdated",
    "CatalogURLError",
    "Conflict",
    "NewVideo",
    "Rendition",
    "SchemaState",
    "User",
    "Video",
    "VideoChanges",
    "check",
    "downgrade",
    "engines",
    "prepare",
    "processing",
    "search",
    "social",
    "state",
    "upgrade",
]
