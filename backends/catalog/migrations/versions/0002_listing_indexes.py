"""Partial indexes for the public listings: their order straight from an index.

The listings filter on privacy = 'public' and status IN ('playable', 'ready'); an IN on a column
of a composite index ends the index's usable order, so both engines scanned and sorted every
row (56 ms per page at 100k videos on PostgreSQL). Partial indexes over exactly that set, in
listing order, make every page an index range read.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LISTED = "privacy = 'public' AND status IN ('playable', 'ready')"


def upgrade() -> None:
    op.drop_index("ix_videos_privacy_status_created_at_id", "videos")
    op.drop_index("ix_videos_privacy_status_views_id", "videos")
    for name, column in (("newest", "created_at"), ("most_viewed", "views")):
        op.create_index(
            f"ix_videos_listed_{name}",
            "videos",
            [sa.text(f"{column} DESC"), sa.text("id DESC")],
            postgresql_where=sa.text(LISTED),
            sqlite_where=sa.text(LISTED),
        )


def downgrade() -> None:
    op.drop_index("ix_videos_listed_newest", "videos")
    op.drop_index("ix_videos_listed_most_viewed", "videos")
    op.create_index(
        "ix_videos_privacy_status_created_at_id",
        "videos",
        ["privacy", "status", "created_at", "id"],
    )
    op.create_index(
        "ix_videos_privacy_status_views_id", "videos", ["privacy", "status", "views", "id"]
    )
