"""inbound texts on their task: each patient text points at the task it was shown with

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("twilio_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("escalation_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_twilio_event_escalation_id"), ["escalation_id"], unique=False
        )
        batch_op.create_foreign_key(
            "fk_twilio_event_escalation_id", "escalation", ["escalation_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("twilio_event", schema=None) as batch_op:
        batch_op.drop_constraint("fk_twilio_event_escalation_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_twilio_event_escalation_id"))
        batch_op.drop_column("escalation_id")
