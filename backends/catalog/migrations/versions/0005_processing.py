"""Processing: progress of the job working on a video, a lease so one worker at a time does it,
and the owner's wish to be emailed when a video is ready.

``job_until``/``job_owner`` make a re-delivered or re-submitted job wait while another worker
is still alive on the same video (its lease renewed while it works); a dead worker's lease
simply runs out.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("videos") as videos:
        videos.add_column(
            sa.Column("progress", sa.SmallInteger(), nullable=False, server_default="0")
        )
        videos.add_column(sa.Column("job_owner", sa.String(64), nullable=True))
        videos.add_column(sa.Column("job_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("users") as users:
        users.add_column(
            sa.Column("notify_ready", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.drop_column("notify_ready")
    with op.batch_alter_table("videos") as videos:
        videos.drop_column("job_until")
        videos.drop_column("job_owner")
        videos.drop_column("progress")
