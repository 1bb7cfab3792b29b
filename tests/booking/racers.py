"""Bookers for the concurrency tests, importable by spawned processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

from followup.core.scheduling import BookingWindow
from models import booking
from tests.booking.conftest import US_HOLIDAYS


class LookThenTake:
    """Wraps the slot taker so every booker has read the free slots before any takes one: the
    race is then for the same slot, not won by whoever happened to read first."""

    def __init__(self, barrier: Any, take: Callable[[Session, Sequence[Any]], Any]) -> None:
        self.barrier = barrier
        self.take = take
        self.local = threading.local()

    def __call__(self, session: Session, candidates: Sequence[Any]) -> Any:
        if not getattr(self.local, "waited", False):
            self.local.waited = True
            self.barrier.wait(timeout=120)
        return self.take(session, candidates)


def racing_engine(url: str, size: int) -> Engine:
    """An engine with a connection for every booker (the default pool holds 15)."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_size=size)
    engine = create_engine(url, pool_size=size, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _wait_for_the_lock(connection: Any, _record: Any) -> None:
        connection.execute("PRAGMA busy_timeout=30000")

    return engine


def book(
    engine: Engine, patient_id: int, provider_id: int, window: BookingWindow
) -> tuple[int, int]:
    """Book one follow-up in its own transaction: (provider id, slot id)."""
    with Session(engine, expire_on_commit=False) as session:
        result = booking.book_with_fallback(
            session=session,
            patient_id=patient_id,
            study_id=None,
            ordering_provider_id=provider_id,
            window=window,
            closed_days=US_HOLIDAYS,
        )
        session.commit()
    assert result.booked is not None, result.reason
    return result.booked.provider_id, result.booked.slot_id


def book_in_process(
    url: str, patient_id: int, provider_id: int, window: BookingWindow, barrier: Any, results: Any
) -> None:
    """Process entry point: the same booker, reporting through a queue."""
    booking._take_first = LookThenTake(barrier, booking._take_first)  # type: ignore[method-assign]
    engine = racing_engine(url, 1)
    try:
        results.put(book(engine, patient_id, provider_id, window))
    except Exception as error:  # the parent asserts on what every racer reported
        results.put(repr(error))
    finally:
        engine.dispose()
