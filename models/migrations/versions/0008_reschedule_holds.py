"""reschedule holds: slots on other days held for a patient who replied R

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 17:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reschedule_hold",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("appointment_id", sa.Integer(), nullable=False),
        sa.Column("slot_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("inbound_sid", sa.String(length=64), nullable=False),
        sa.Column("held_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["appointment_id"], ["appointment.id"]),
        sa.ForeignKeyConstraint(["slot_id"], ["slot.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reschedule_hold", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reschedule_hold_appointment_id"), ["appointment_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_reschedule_hold_slot_id"), ["slot_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_reschedule_hold_status"), ["status"], unique=False)
        batch_op.create_index(
            "uq_reschedule_hold_held_slot",
            ["slot_id"],
            unique=True,
            sqlite_where=sa.text("status = 'held'"),
            postgresql_where=sa.text("status = 'held'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("reschedule_hold", schema=None) as batch_op:
        batch_op.drop_index("uq_reschedule_hold_held_slot")
        batch_op.drop_index(batch_op.f("ix_reschedule_hold_status"))
        batch_op.drop_index(batch_op.f("ix_reschedule_hold_slot_id"))
        batch_op.drop_index(batch_op.f("ix_reschedule_hold_appointment_id"))
    op.drop_table("reschedule_hold")
