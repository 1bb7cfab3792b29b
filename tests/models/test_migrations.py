"""The Alembic migrations build the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from models.db import alembic_config, get_engine, migrate


def test_migrations_upgrade_an_empty_database_and_match_the_models(
    empty_database_url: str,
) -> None:
    migrate(empty_database_url)

    # `alembic check` raises when autogenerate finds any difference from the models.
    command.check(alembic_config(empty_database_url))
    tables = set(inspect(get_engine(empty_database_url)).get_table_names())
    assert {
        "inbox_message",
        "patient",
        "provider",
        "slot",
        "imaging_study",
        "decision",
        "finding",
        "appointment",
        "referral",
        "outbound_message",
        "escalation",
        "audit_event",
    } <= tables
    inbox_indexes = {
        tuple(index["column_names"])
        for index in inspect(get_engine(empty_database_url)).get_indexes("inbox_message")
    }
    # The HL7 idempotency lookup (sender, MSH-10); its prefix serves sender alone.
    assert ("sender", "control_id") in inbox_indexes
    assert ("sender",) not in inbox_indexes


def test_migrations_downgrade_to_empty_and_upgrade_again(empty_database_url: str) -> None:
    migrate(empty_database_url)
    command.downgrade(alembic_config(empty_database_url), "base")
    assert set(inspect(get_engine(empty_database_url)).get_table_names()) == {"alembic_version"}
    migrate(empty_database_url)
    command.check(alembic_config(empty_database_url))
