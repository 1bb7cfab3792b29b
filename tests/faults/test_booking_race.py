"""Fault: 20 bookings for the one free slot at once, on PostgreSQL.

Each booking runs in its own thread with its own connection and transaction, so PostgreSQL sees
20 concurrent transactions, as from 20 workers (tests/booking/test_concurrency.py races
processes too). A barrier holds every booker until all have read the slot as free, so the race
is for the same slot; the ordering provider has no covering provider and no colleague, so
nobody can fall back to another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, time

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from followup.core.scheduling import WorkingSession
from models import booking
from models.db import migrate, session_scope
from models.tables import ACTIVE_APPOINTMENT_STATUSES, Appointment, Slot
from tests.booking.conftest import ROUTINE, US_HOLIDAYS, Clinic
from tests.booking.racers import LookThenTake, racing_engine
from tests.conftest import POSTGRES_URL, _postgres_schema_url
from tests.faults.counting import check_counts, tally

BOOKERS = 20


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("FOLLOWUP_TEST_POSTGRES_URL not set")
    for url in _postgres_schema_url(POSTGRES_URL):
        migrate(url)
        yield url


def book(engine: Engine, patient_id: int, provider_id: int) -> str:
    """One booking in its own transaction: "booked", or "unbooked" when no slot was left."""
    with Session(engine) as session:
        result = booking.book_with_fallback(
            session=session,
            patient_id=patient_id,
            study_id=None,
            ordering_provider_id=provider_id,
            window=ROUTINE,
            closed_days=US_HOLIDAYS,
        )
        session.commit()
    return "booked" if result.booked else "unbooked"


@pytest.mark.postgres
def test_twenty_bookings_racing_for_one_slot_book_it_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault: 20 bookings for 20 patients race for the single free slot of the ordering
    provider (Mon 8 March 2027, 09:00), each in its own connection and transaction.
    Expected: exactly one booked and 19 unbooked (no slot left, no fallback), no error; the
    slot holds one active appointment and the database no other."""
    clinic = Clinic(postgres_url)
    ordering = clinic.provider(sessions=[WorkingSession(0, time(9), time(9, 30))])
    clinic.lay_slots(ordering, first_day=date(2027, 3, 8), days=1)
    patients = [clinic.patient() for _ in range(BOOKERS)]
    monkeypatch.setattr(
        booking, "_take_first", LookThenTake(threading.Barrier(BOOKERS), booking._take_first)
    )
    engine = racing_engine(postgres_url, BOOKERS)
    try:
        with ThreadPoolExecutor(max_workers=BOOKERS) as pool:
            futures = [pool.submit(book, engine, patient, ordering) for patient in patients]
        outcomes = [
            repr(future.exception()) if future.exception() else future.result()
            for future in futures
        ]
    finally:
        engine.dispose()

    with session_scope(postgres_url) as session:
        slots = session.exec(select(Slot.status).where(Slot.provider_id == ordering)).all()
        per_slot = session.exec(
            select(Appointment.slot_id, func.count())
            .where(col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES))
            .group_by(col(Appointment.slot_id))
        ).all()
    check_counts(
        "6 20 bookings for 1 slot (PostgreSQL)",
        {
            "bookings": tally(outcomes),
            "slots": tally(slots),
            "active_appointments_per_slot": tally(count for _, count in per_slot),
        },
        {
            "bookings": {"booked": 1, "unbooked": BOOKERS - 1},
            "slots": {"booked": 1},
            "active_appointments_per_slot": {"1": 1},
        },
    )
