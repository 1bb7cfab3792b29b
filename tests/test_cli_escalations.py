"""`followup escalations ack`, run in-process against the test database (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from followup.cli import app
from models import messaging_queries as mq
from models.db import session_scope
from models.tables import AuditEvent, Escalation

runner = CliRunner()


@pytest.fixture
def escalation_id(database_url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("DATABASE_URL", database_url)
    with session_scope(database_url) as session:
        task = mq.open_task(
            session=session,
            kind="patient_reply",
            reason="patient 1 replied with text the engine cannot act on: read it.",
            target="scheduler-queue",
            study_id=None,
        )
        assert task.id is not None
        return task.id


def test_ack_closes_the_escalation_and_audits_who_did_it(
    database_url: str, escalation_id: int
) -> None:
    result = runner.invoke(app, ["escalations", "ack", str(escalation_id), "--by", "jsmith"])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        f"escalation {escalation_id} (patient_reply) acknowledged by jsmith at "
    )
    with session_scope(database_url) as session:
        escalation = session.get_one(Escalation, escalation_id)
        [audit] = session.exec(
            select(AuditEvent).where(AuditEvent.action == "escalation.acknowledged")
        ).all()
    assert (escalation.status, escalation.acknowledged_by) == ("acknowledged", "jsmith")
    assert (audit.actor, audit.entity_id, audit.detail["via"]) == ("jsmith", escalation_id, "cli")


def test_a_second_ack_keeps_the_first(database_url: str, escalation_id: int) -> None:
    first = runner.invoke(app, ["escalations", "ack", str(escalation_id), "--by", "jsmith"])
    second = runner.invoke(app, ["escalations", "ack", str(escalation_id), "--by", "other"])

    assert (first.exit_code, second.exit_code) == (0, 0)
    assert second.stdout == first.stdout  # same person, same time: the first one's
    with session_scope(database_url) as session:
        assert session.get_one(Escalation, escalation_id).acknowledged_by == "jsmith"
        audits = session.exec(
            select(AuditEvent).where(AuditEvent.action == "escalation.acknowledged")
        ).all()
    assert len(audits) == 1


def test_an_unknown_id_fails_with_exit_code_1_and_says_which(
    database_url: str, escalation_id: int
) -> None:
    unknown = escalation_id + 1000

    result = runner.invoke(app, ["escalations", "ack", str(unknown), "--by", "jsmith"])

    assert result.exit_code == 1
    assert f"escalation {unknown} does not exist" in result.stderr
    assert result.stdout == ""
    with session_scope(database_url) as session:
        assert session.get_one(Escalation, escalation_id).status == "open"
