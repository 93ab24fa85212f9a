"""The first catalog schema: users, videos with renditions and tags, comments, likes, daily
view statistics, and full-text search over title, description and tags.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _when(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _video_fk() -> sa.Column[object]:
    return sa.Column(
        "video_id", sa.String(32), sa.ForeignKey("videos.id", ondelete="CASCADE"), nullable=False
    )


def _user_fk() -> sa.Column[object]:
    return sa.Column(
        "user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )


# SQLite: an external-content FTS5 table over videos, kept in step by triggers. The porter
# stemmer matches PostgreSQL's english configuration closely enough for one result shape.
_SQLITE_FTS = [
    """CREATE VIRTUAL TABLE videos_fts USING fts5(
        title, description, tags_text, content='videos', content_rowid='rowid',
        tokenize='porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER videos_fts_insert AFTER INSERT ON videos BEGIN
        INSERT INTO videos_fts(rowid, title, description, tags_text)
        VALUES (new.rowid, new.title, new.description, new.tags_text);
    END""",
    """CREATE TRIGGER videos_fts_delete AFTER DELETE ON videos BEGIN
        INSERT INTO videos_fts(videos_fts, rowid, title, description, tags_text)
        VALUES ('delete', old.rowid, old.title, old.description, old.tags_text);
    END""",
    """CREATE TRIGGER videos_fts_update AFTER UPDATE OF title, description, tags_text ON videos
    BEGIN
        INSERT INTO videos_fts(videos_fts, rowid, title, description, tags_text)
        VALUES ('delete', old.rowid, old.title, old.description, old.tags_text);
        INSERT INTO videos_fts(rowid, title, description, tags_text)
        VALUES (new.rowid, new.title, new.description, new.tags_text);
    END""",
]

# PostgreSQL: a generated, weighted tsvector (title > tags > description) with a GIN index.
_POSTGRES_FTS = [
    """ALTER TABLE videos ADD COLUMN search tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') ||
        setweight(to_tsvector('english', tags_text), 'B') ||
        setweight(to_tsvector('english', description), 'C')) STORED""",
    "CREATE INDEX ix_videos_search ON videos USING GIN (search)",
]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(255)),
        sa.Column("role", sa.String(16), nullable=False, server_default="user"),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        _when("created_at"),
        _when("updated_at"),
        sa.CheckConstraint("role IN ('user', 'admin')", name="ck_users_role"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "videos",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "owner_id",
            sa.String(32),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("tags_text", sa.Text, nullable=False, server_default=""),
        sa.Column("privacy", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("original_path", sa.String(1024)),
        sa.Column("original_size", sa.BigInteger),
        sa.Column("original_md5", sa.String(32)),
        sa.Column("views", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("likes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("comments", sa.BigInteger, nullable=False, server_default="0"),
        _when("created_at"),
        _when("updated_at"),
        sa.CheckConstraint(
            "privacy IN ('public', 'unlisted', 'private')", name="ck_videos_privacy"
        ),
        sa.CheckConstraint(
            "status IN ('uploading', 'uploaded', 'processing', 'playable', 'ready', 'failed')",
            name="ck_videos_status",
        ),
    )
    op.create_index("ix_videos_owner_id_created_at", "videos", ["owner_id", "created_at"])
    op.create_index(
        "ix_videos_privacy_status_created_at_id",
        "videos",
        ["privacy", "status", "created_at", "id"],
    )
    op.create_index(
        "ix_videos_privacy_status_views_id", "videos", ["privacy", "status", "views", "id"]
    )
    op.create_table(
        "renditions",
        _video_fk(),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("bandwidth", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.PrimaryKeyConstraint("video_id", "name", name="pk_renditions"),
    )
    op.create_table(
        "video_tags",
        _video_fk(),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("video_id", "tag", name="pk_video_tags"),
    )
    op.create_index("ix_video_tags_tag", "video_tags", ["tag"])
    op.create_table(
        "comments",
        sa.Column("id", sa.String(32), primary_key=True),
        _video_fk(),
        _user_fk(),
        sa.Column("body", sa.Text, nullable=False),
        _when("created_at"),
    )
    op.create_index(
        "ix_comments_video_id_created_at_id", "comments", ["video_id", "created_at", "id"]
    )
    op.create_table(
        "likes",
        _video_fk(),
        _user_fk(),
        _when("created_at"),
        sa.PrimaryKeyConstraint("video_id", "user_id", name="pk_likes"),
    )
    op.create_table(
        "view_days",
        _video_fk(),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("views", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("watch_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("completions", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("video_id", "day", name="pk_view_days"),
    )
    op.create_index("ix_view_days_day", "view_days", ["day"])
    statements = _SQLITE_FTS if op.get_bind().dialect.name == "sqlite" else _POSTGRES_FTS
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE videos_fts")
    for table in ("view_days", "likes", "comments", "video_tags", "renditions", "videos", "users"):
        op.drop_table(table)
