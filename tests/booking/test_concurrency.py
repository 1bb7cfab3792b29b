"""No double booking: 20 bookers race for one last slot, as threads and as processes.

Every booker first reads the last slot as free (a barrier holds them until all have), then
tries to take it: exactly one gets it, the other nineteen fall back to the covering provider,
and no slot ever holds two active appointments.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date, time

import pytest
from sqlalchemy import func
from sqlmodel import col, select

from followup.core.scheduling import WorkingSession
from models import booking
from models.db import session_scope
from models.tables import ACTIVE_APPOINTMENT_STATUSES, Appointment
from tests.booking.conftest import ROUTINE, Clinic
from tests.booking.racers import LookThenTake, book, book_in_process, racing_engine

RACERS = 20


def _one_last_slot(clinic: Clinic) -> tuple[int, int, list[int]]:
    """An ordering provider with one slot in the window (Mon 8 March 09:00), a covering
    provider with plenty, and the racing patients: (ordering, covering, patients)."""
    covering = clinic.provider(practice="Harbor")
    ordering = clinic.provider(
        covering=covering, sessions=[WorkingSession(0, time(9), time(9, 30))]
    )
    clinic.lay_slots(ordering, first_day=date(2027, 3, 8), days=1)
    clinic.lay_slots(covering)
    return ordering, covering, [clinic.patient() for _ in range(RACERS)]


def _check(clinic: Clinic, results: list[tuple[int, int]], ordering: int, covering: int) -> None:
    assert Counter(provider for provider, _ in results) == {ordering: 1, covering: RACERS - 1}
    assert len({slot for _, slot in results}) == RACERS
    with session_scope(clinic.url) as session:
        per_slot = session.exec(
            select(Appointment.slot_id, func.count())
            .where(col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES))
            .group_by(col(Appointment.slot_id))
        ).all()
    assert len(per_slot) == RACERS
    assert {count for _, count in per_slot} == {1}


def test_threads_racing_for_the_last_slot_book_it_once(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    ordering, covering, patients = _one_last_slot(clinic)
    monkeypatch.setattr(
        booking, "_take_first", LookThenTake(threading.Barrier(RACERS), booking._take_first)
    )
    engine = racing_engine(clinic.url, RACERS)
    try:
        with ThreadPoolExecutor(max_workers=RACERS) as pool:
            results = list(pool.map(lambda p: book(engine, p, ordering, ROUTINE), patients))
    finally:
        engine.dispose()
    _check(clinic, results, ordering, covering)


def test_processes_racing_for_the_last_slot_book_it_once(clinic: Clinic) -> None:
    ordering, covering, patients = _one_last_slot(clinic)
    # Fresh interpreters, not forks of this one (which holds engines and threads); the fork
    # server imports the booker once, so twenty of them start in seconds, not minutes.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.booking.racers"])
    barrier, queue = context.Barrier(RACERS), context.Queue()
    racers = [
        context.Process(
            target=book_in_process, args=(clinic.url, patient, ordering, ROUTINE, barrier, queue)
        )
        for patient in patients
    ]
    for racer in racers:
        racer.start()
    results = [queue.get(timeout=180) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
    assert all(isinstance(result, tuple) for result in results), results
    _check(clinic, results, ordering, covering)
