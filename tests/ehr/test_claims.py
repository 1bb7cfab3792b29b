"""The outbox claim: its limit holds on both databases, a subject's later message waits for
the earlier one, and a row is claimed once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from models.db import session_scope
from models.ehr_outbox import VisitChange, claim_due, record_visit_change
from models.tables import Appointment, Patient, Provider, Slot

START = datetime(2026, 12, 14, 14, 0, tzinfo=UTC)


def book_visits(database_url: str, count: int) -> list[int]:
    """`count` visits, each booked through the hook; their appointment ids."""
    ids = []
    with session_scope(database_url) as session:
        provider = Provider(npi="1", family_name="Claim", practice="P", timezone="UTC")
        session.add(provider)
        session.flush()
        assert provider.id is not None
        for number in range(count):
            start = START + timedelta(hours=number)
            patient = Patient(mrn=f"C{number}")
            slot = Slot(provider_id=provider.id, start=start, end=start + timedelta(minutes=30))
            session.add_all([patient, slot])
            session.flush()
            assert patient.id is not None and slot.id is not None
            visit = Appointment(
                patient_id=patient.id, provider_id=provider.id, slot_id=slot.id, start=start
            )
            session.add(visit)
            session.flush()
            record_visit_change(session=session, appointment=visit, change=VisitChange.BOOKED)
            assert visit.id is not None
            ids.append(visit.id)
    return ids


def test_a_claim_takes_no_more_than_its_limit_and_each_row_once(database_url: str) -> None:
    book_visits(database_url, 30)
    later = datetime.now(UTC) + timedelta(minutes=1)

    with session_scope(database_url) as session:
        first = claim_due(session=session, now=later, limit=10)
    with session_scope(database_url) as session:
        second = claim_due(session=session, now=later, limit=100)

    assert len(first) == 10 and len(second) == 20
    assert not set(first) & set(second)


def test_a_subjects_next_message_waits_for_the_one_before(database_url: str) -> None:
    [visit_id] = book_visits(database_url, 1)
    later = datetime.now(UTC) + timedelta(minutes=1)
    with session_scope(database_url) as session:
        assert len(claim_due(session=session, now=later, limit=10)) == 1  # the S12, in flight
    with session_scope(database_url) as session:
        visit = session.get_one(Appointment, visit_id)
        cancel = record_visit_change(
            session=session, appointment=visit, change=VisitChange.CANCELLED
        )
        assert cancel is not None and cancel.trigger == "S15"

    with session_scope(database_url) as session:
        assert claim_due(session=session, now=later, limit=10) == []
