"""inbox: (sender, control_id) index and run claims; escalation: one open per study and kind

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inbox_message", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("claimed_at", models.types.UTCDateTime(timezone=True), nullable=True)
        )
        # The composite index serves sender-only lookups too.
        batch_op.drop_index(batch_op.f("ix_inbox_message_sender"))
        batch_op.create_index(
            "ix_inbox_message_sender_control_id", ["sender", "control_id"], unique=False
        )

    # An acknowledged escalation stays as history; a new one of the same kind may open beside it.
    with op.batch_alter_table("escalation", schema=None) as batch_op:
        batch_op.drop_constraint("uq_escalation_study_kind", type_="unique")
        batch_op.create_index(
            "uq_escalation_open_study_kind",
            ["study_id", "kind"],
            unique=True,
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        )


def downgrade() -> None:
    # Fails while a study holds two escalations of one kind: going back would lose history.
    with op.batch_alter_table("escalation", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_escalation_open_study_kind",
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        )
        batch_op.create_unique_constraint("uq_escalation_study_kind", ["study_id", "kind"])

    with op.batch_alter_table("inbox_message", schema=None) as batch_op:
        batch_op.drop_index("ix_inbox_message_sender_control_id")
        batch_op.create_index(batch_op.f("ix_inbox_message_sender"), ["sender"], unique=False)
        batch_op.drop_column("claimed_at")
