"""The catalog's tables as SQLAlchemy Core objects: what queries are written against.

Migrations (``migrations/versions``) create and change these tables; this module must always
describe the schema at the newest revision. Full-text search lives outside these objects because
it is dialect-specific: an FTS5 table kept in step by triggers on SQLite, a generated
``tsvector`` column with a GIN index on PostgreSQL (see the first migration).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

PRIVACY: Final = ("public", "unlisted", "private")
STATUS: Final = ("uploading", "uploaded", "processing", "playable", "ready", "failed")
ROLES: Final = ("user", "admin")
# The videos the public listings show: every listing query states exactly this condition, so
# the planner can use the partial indexes below.
LISTED: Final = "privacy = 'public' AND status IN ('playable', 'ready')"

# Constraint names are fixed so migrations can name what they change on every dialect.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _when(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def _owner(name: str = "user_id") -> Column[object]:
    return Column(name, String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False)


users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),  # normalised by the caller
    Column("password_hash", String(255)),
    Column("role", String(16), nullable=False, server_default="user"),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    _when("created_at"),
    _when("updated_at"),
    # Access tokens carry the epoch they were issued in: raising it ends every session.
    Column("session_epoch", Integer, nullable=False, server_default="0"),
    # The owner asked to be emailed when a video of theirs is ready (or failed).
    Column("notify_ready", Boolean, nullable=False, server_default="0"),
    CheckConstraint("role IN ('user', 'admin')", name="role"),
)

# Refresh tokens by SHA-256 digest; one family per login, rotated on every use.
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("digest", String(64), primary_key=True),
    _owner(),
    Column("family", String(32), nullable=False, index=True),
    _when("created_at"),
    _when("expires_at"),
    _when("used_at", nullable=True),
    Column("revoked", Boolean, nullable=False, server_default="0"),
    Index("ix_refresh_tokens_user_id", "user_id"),
)

# Logged-out access tokens, until they would have expired anyway.
revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    _when("expires_at", nullable=False),
    Index("ix_revoked_tokens_expires_at", "expires_at"),
)

# Failed sign-ins per email digest (registered or not): the lockout's memory.
login_failures = Table(
    "login_failures",
    metadata,
    Column("email_digest", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),
    _when("first_at"),
    _when("locked_until", nullable=True),
)

password_resets = Table(
    "password_resets",
    metadata,
    Column("digest", String(64), primary_key=True),
    _owner(),
    _when("created_at"),
    _when("expires_at"),
    _when("used_at", nullable=True),
    Index("ix_password_resets_user_id", "user_id"),
)

videos = Table(
    "videos",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("tags", JSON, nullable=False),  # list of strings, as given
    Column("tags_text", Text, nullable=False, server_default=""),  # what search indexes
    Column("privacy", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("failure_reason", Text),
    Column("duration_ms", BigInteger),
    Column("width", Integer),
    Column("height", Integer),
    Column("original_path", String(1024)),
    Column("original_size", BigInteger),
    Column("original_md5", String(32)),
    Column("views", BigInteger, nullable=False, server_default="0"),
    Column("likes", BigInteger, nullable=False, server_default="0"),
    Column("comments", BigInteger, nullable=False, server_default="0"),
    _when("created_at"),
    _when("updated_at"),
    Column("progress", SmallInteger, nullable=False, server_default="0"),  # percent processed
    # The worker processing the video holds it until then (renewed while it works).
    Column("job_owner", String(64)),
    _when("job_until", nullable=True),
    CheckConstraint("privacy IN ('public', 'unlisted', 'private')", name="privacy"),
    CheckConstraint(
        "status IN ('uploading', 'uploaded', 'processing', 'playable', 'ready', 'failed')",
        name="status",
    ),
    Index(None, "owner_id", "created_at"),
    # The public listings read these partial indexes in order (migration 0002).
    Index(
        "ix_videos_listed_newest",
        text("created_at DESC"),
        text("id DESC"),
        postgresql_where=text(LISTED),
        sqlite_where=text(LISTED),
    ),
    Index(
        "ix_videos_listed_most_viewed",
        text("views DESC"),
        text("id DESC"),
        postgresql_where=text(LISTED),
        sqlite_where=text(LISTED),
    ),
)

renditions = Table(
    "renditions",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(32), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("bandwidth", Integer, nullable=False),
    Column("width", Integer),
    Column("height", Integer),
    PrimaryKeyConstraint("video_id", "name"),
)

video_tags = Table(
    "video_tags",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
    Column("tag", String(64), nullable=False),  # lower-cased: related videos match on it
    PrimaryKeyConstraint("video_id", "tag"),
    Index(None, "tag"),
)

comments = Table(
    "comments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("body", Text, nullable=False),
    _when("created_at"),
    Index(None, "video_id", "created_at", "id"),
)

likes = Table(
    "likes",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    _when("created_at"),
    PrimaryKeyConstraint("video_id", "user_id"),
)

view_days = Table(
    "view_days",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
    Column("day", Date, nullable=False),
    Column("views", BigInteger, nullable=False, server_default="0"),
    Column("watch_ms", BigInteger, nullable=False, server_default="0"),
    Column("completions", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("video_id", "day"),
    Index(None, "day"),
)


# One row per resumable upload (the bytes are part objects in storage, see gateway.uploads).
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "video_id",
        String(32),
        ForeignKey("videos.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    _owner(),
    Column("length", BigInteger, nullable=False),
    Column("offset", BigInteger, nullable=False, server_default="0"),
    Column("parts", Integer, nullable=False, server_default="0"),
    Column("filename", String(255), nullable=False),
    _when("created_at"),
    _when("expires_at"),
    _when("writer_until", nullable=True),  # a PATCH is appending until then
    _when("completed_at", nullable=True),
    Index("ix_uploads_expires_at", "expires_at"),
)


# Each user's webhook endpoints; the secret signs every delivery (so it is kept as given).
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(32), primary_key=True),
    _owner(),
    Column("url", String(2048), nullable=False),
    Column("events", JSON, nullable=False),  # list of event names
    Column("secret", String(128), nullable=False),
    _when("created_at"),
    Index("ix_webhooks_user_id", "user_id"),
)

# One row per event and endpoint: the delivery log, and the senders' work queue (pending rows
# whose next_attempt_at has come; claiming one moves next_attempt_at past the attempt).
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("webhook_id", String(32), ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", String(32), nullable=False),  # Webhook-Id: the same on every attempt
    Column("event", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # the exact body signed and sent
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_status", Integer),  # HTTP status of the last answer
    Column("last_error", String(500)),
    Column("sender", String(64)),  # the process holding the current attempt
    _when("created_at"),
    _when("last_attempt_at", nullable=True),
    _when("next_attempt_at", nullable=True),
    _when("delivered_at", nullable=True),
    CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
    UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_event"),
    Index("ix_webhook_deliveries_log", "webhook_id", "created_at"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
)

# The emails sent to a video's owner (gateway.notices): one row per video and event, written
# before the email goes out, so an event announced twice (a job run twice) is mailed once.
notices_sent = Table(
    "notices_sent",
    metadata,
    Column("video_id", String(32), ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
    Column("event", String(32), nullable=False),
    _when("sent_at"),
    PrimaryKeyConstraint("video_id", "event"),
)
