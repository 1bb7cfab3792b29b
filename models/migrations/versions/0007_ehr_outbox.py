"""EHR outbox: SIU and REF messages to the EHR and the specialists, in order per subject

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ehr_outbox_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("appointment_id", sa.Integer(), nullable=True),
        sa.Column("referral_id", sa.Integer(), nullable=True),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("trigger", sa.String(length=8), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=True),
        sa.Column("control_id", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("ack_code", sa.String(length=8), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", models.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", models.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["appointment_id"], ["appointment.id"]),
        sa.ForeignKeyConstraint(["referral_id"], ["referral.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["imaging_study.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_ehr_outbox_message_due", "ehr_outbox_message", ["status", "next_attempt_at"]
    )
    op.create_index(
        "ix_ehr_outbox_message_subject", "ehr_outbox_message", ["subject", "subject_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_ehr_outbox_message_subject", table_name="ehr_outbox_message")
    op.drop_index("ix_ehr_outbox_message_due", table_name="ehr_outbox_message")
    op.drop_table("ehr_outbox_message")
