"""inbox life cycle: retry with backoff, or held for a person; content digest of HL7 messages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbox_message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("next_attempt_at", models.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("content_digest", sa.String(length=64), nullable=True))
    # Accepted results whose run failed used to end in `error`, beside the messages refused at
    # intake; they were answered AA, so a person must now act on them.
    op.execute(
        "UPDATE inbox_message SET status = 'needs_action' "
        "WHERE status = 'error' AND content_hash LIKE 'report:%'"
    )


def downgrade() -> None:
    op.execute("UPDATE inbox_message SET status = 'error' WHERE status = 'needs_action'")
    op.execute("UPDATE inbox_message SET status = 'received' WHERE status = 'retry'")
    with op.batch_alter_table("inbox_message", schema=None) as batch_op:
        batch_op.drop_column("content_digest")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("attempts")
