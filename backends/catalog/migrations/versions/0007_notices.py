"""Owner notices: the emails sent about a video (ready, failed), one row per video and event.

The row is written before the email is sent and removed again if sending fails, so an event
announced twice — a job delivered twice, two processes racing — is mailed at most once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notices_sent",
        sa.Column(
            "video_id",
            sa.String(32),
            sa.ForeignKey("videos.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("video_id", "event", name="pk_notices_sent"),
    )


def downgrade() -> None:
    op.drop_table("notices_sent")
