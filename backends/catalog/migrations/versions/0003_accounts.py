"""Accounts: refresh-token families, revoked access tokens, password resets, login lockout.

Refresh tokens and reset tokens are stored as SHA-256 digests only: a leaked table cannot be
replayed. Access tokens carry their user's ``session_epoch``; raising it (password change) refuses
every token issued before; ``revoked_tokens`` refuses one token (logout) until it would expire.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _user_fk() -> sa.Column[object]:
    return sa.Column(
        "user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.add_column(
            sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "refresh_tokens",
        sa.Column("digest", sa.String(64), primary_key=True),
        _user_fk(),
        sa.Column("family", sa.String(32), nullable=False),
        _when("created_at"),
        _when("expires_at"),
        _when("used_at", nullable=True),  # rotated: presenting it again revokes the family
        sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family"])
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"])
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        _when("expires_at"),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])
    op.create_table(
        "password_resets",
        sa.Column("digest", sa.String(64), primary_key=True),
        _user_fk(),
        _when("created_at"),
        _when("expires_at"),
        _when("used_at", nullable=True),
    )
    op.create_index("ix_password_resets_user_id", "password_resets", ["user_id"])
    # Keyed by the email's digest whether or not an account has it, so a locked-out address
    # tells nothing about who is registered.
    op.create_table(
        "login_failures",
        sa.Column("email_digest", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        _when("first_at"),
        _when("locked_until", nullable=True),
    )


def downgrade() -> None:
    op.drop_table("login_failures")
    op.drop_table("password_resets")
    op.drop_table("revoked_tokens")
    op.drop_table("refresh_tokens")
    with op.batch_alter_table("users") as users:
        users.drop_column("session_epoch")
