"""Which escalations are due a re-notice, and how one is counted (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from followup.core.worklist import CRITICAL_KINDS
from models import worklist
from models.db import session_scope
from models.tables import AuditEvent, Escalation

CREATED = datetime(2026, 12, 8, 14, 0, tzinfo=UTC)
EVERY = timedelta(minutes=15)


def _escalation(database_url: str, kind: str = "critical_finding") -> int:
    with session_scope(database_url) as session:
        escalation = Escalation(kind=kind, reason="x", target="npi:1", created_at=CREATED)
        session.add(escalation)
        session.flush()
        assert escalation.id is not None
        return escalation.id


def _due_ids(database_url: str, now: datetime) -> list[int]:
    with session_scope(database_url) as session:
        due = worklist.due_notices(
            session=session, kinds=CRITICAL_KINDS, due_before=now - EVERY, now=now
        )
    return [notice.escalation_id for notice in due]


def _record(database_url: str, escalation_id: int, now: datetime) -> bool:
    with session_scope(database_url) as session:
        return worklist.record_notice(
            session=session,
            escalation_id=escalation_id,
            due_before=now - EVERY,
            now=now,
            channel="custom-webhook/critical",
        )


def test_first_notice_falls_due_n_minutes_after_creation(database_url: str) -> None:
    critical = _escalation(database_url)
    _escalation(database_url, kind="unbookable")  # a scheduler's task: never re-notified

    assert _due_ids(database_url, CREATED + EVERY - timedelta(seconds=1)) == []
    assert _due_ids(database_url, CREATED + EVERY) == [critical]


def test_a_counted_notice_makes_the_next_due_n_minutes_later(database_url: str) -> None:
    escalation_id = _escalation(database_url)
    first = CREATED + timedelta(minutes=20)

    assert _record(database_url, escalation_id, first) is True
    assert _record(database_url, escalation_id, first) is False  # counted once per period

    assert _due_ids(database_url, first + EVERY - timedelta(seconds=1)) == []
    with session_scope(database_url) as session:
        [notice] = worklist.due_notices(
            session=session, kinds=CRITICAL_KINDS, due_before=first, now=first + EVERY
        )
        stored = session.get(Escalation, escalation_id)
        audit = session.exec(select(AuditEvent)).all()
    assert stored is not None
    assert (stored.notified_at, stored.notify_count) == (first, 1)
    assert (notice.notice, notice.waiting_minutes, notice.accession) == (2, 35, "-")
    assert [(a.action, a.entity_id, a.detail) for a in audit] == [
        ("escalation.renotified", escalation_id, {"channel": "custom-webhook/critical"})
    ]


def test_an_acknowledged_escalation_is_neither_due_nor_counted(database_url: str) -> None:
    escalation_id = _escalation(database_url)
    later = CREATED + timedelta(hours=2)
    with session_scope(database_url) as session:
        worklist.acknowledge_escalation(
            session=session, escalation_id=escalation_id, by="dr.brennan", now=later
        )

    assert _due_ids(database_url, later) == []
    assert _record(database_url, escalation_id, later) is False


@pytest.mark.parametrize("waited", [timedelta(minutes=15), timedelta(days=3)])
def test_notice_text_names_ids_not_the_patient(waited: timedelta, database_url: str) -> None:
    escalation_id = _escalation(database_url)
    with session_scope(database_url) as session:
        [notice] = worklist.due_notices(
            session=session,
            kinds=CRITICAL_KINDS,
            due_before=CREATED + waited - EVERY,
            now=CREATED + waited,
        )
    subject, body = notice.message()

    assert subject == "Critical finding not acknowledged: -"
    assert f"Escalation {escalation_id} " in body
    assert f"waited {int(waited.total_seconds() // 60)} min" in body
    assert f"POST /escalations/{escalation_id}/ack" in body
