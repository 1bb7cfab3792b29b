"""Run claims on inbox rows and the sweep's release of rows whose run died.

A flow run claims its row (received → processing, with the time); a row another run claimed
within the lease is refused, an older claim is taken over. The sweep gives rows stuck in
`processing` past the lease back to `received`, by a compare-and-set that only one of two
racing sweeps wins. On SQLite and PostgreSQL, racing with real threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from followup.services import intake, pipeline
from followup.settings import Settings, get_settings
from models import inbox_queries
from models.db import session_scope
from models.inbox_queries import Submission
from models.tables import AuditEvent, InboxMessage, InboxStatus
from models.types import utcnow
from tests.booking.racers import racing_engine
from tests.conftest import SAMPLES

HL7 = SAMPLES / "hl7"
LEASE = timedelta(seconds=600)
RACERS = 6


@pytest.fixture
def settings(database_url: str) -> Settings:
    return get_settings(database_url=database_url, processing_lease_seconds=600)


def received(settings: Settings, sample: str = "spine_normal.hl7") -> int:
    with session_scope(settings.database_url) as session:
        receipt = intake.receive_message(
            session=session, raw=(HL7 / sample).read_bytes(), source="test", settings=settings
        )
    assert receipt.should_process
    return receipt.inbox_id


def claimed(settings: Settings, inbox_id: int, *, ago: timedelta) -> datetime:
    """Mark the row as a run left it: processing, claimed `ago`."""
    at = utcnow() - ago
    with session_scope(settings.database_url) as session:
        row = session.get_one(InboxMessage, inbox_id)
        row.status, row.claimed_at = InboxStatus.PROCESSING, at
        session.add(row)
    with session_scope(settings.database_url) as session:
        stored = session.get_one(InboxMessage, inbox_id).claimed_at
    assert stored is not None
    return stored


def row(settings: Settings, inbox_id: int) -> InboxMessage:
    with session_scope(settings.database_url) as session:
        return session.get_one(InboxMessage, inbox_id)


def claim(settings: Settings, inbox_id: int, now: datetime) -> bool:
    with session_scope(settings.database_url) as session:
        return inbox_queries.claim_message(
            session=session, inbox_id=inbox_id, now=now, stale_before=now - LEASE
        )


def test_a_run_claims_a_received_row(settings: Settings) -> None:
    inbox_id = received(settings)
    now = utcnow()

    assert claim(settings, inbox_id, now)

    taken = row(settings, inbox_id)
    assert (taken.status, taken.claimed_at) == (InboxStatus.PROCESSING, now)


def test_a_live_claim_is_refused_and_a_dead_one_taken_over(settings: Settings) -> None:
    live = received(settings, "spine_normal.hl7")
    dead = received(settings, "spine_inconclusive.hl7")
    live_claim = claimed(settings, live, ago=LEASE - timedelta(seconds=30))
    claimed(settings, dead, ago=LEASE + timedelta(seconds=30))
    now = utcnow()

    assert not claim(settings, live, now)
    assert claim(settings, dead, now)

    assert row(settings, live).claimed_at == live_claim
    assert row(settings, dead).claimed_at == now


@pytest.mark.parametrize(
    ("status", "claimable"),
    [
        (InboxStatus.PROCESSED, False),
        (InboxStatus.HELD, False),
        (InboxStatus.DUPLICATE, False),
        (InboxStatus.ERROR, False),
        (InboxStatus.RETRY, True),
        (InboxStatus.NEEDS_ACTION, True),
    ],
)
def test_a_finished_row_is_never_claimed_again_a_failed_one_is(
    settings: Settings, status: InboxStatus, claimable: bool
) -> None:
    inbox_id = received(settings)
    with session_scope(settings.database_url) as session:
        done = session.get_one(InboxMessage, inbox_id)
        done.status = status
        session.add(done)

    assert claim(settings, inbox_id, utcnow()) is claimable
    assert row(settings, inbox_id).status == (InboxStatus.PROCESSING if claimable else status)


def test_load_scan_answers_a_finished_row_with_its_summary(settings: Settings) -> None:
    inbox_id = received(settings)
    with session_scope(settings.database_url) as session:
        done = session.get_one(InboxMessage, inbox_id)
        done.status, done.summary = InboxStatus.PROCESSED, {"status": "processed", "n": 1}
        session.add(done)

    with (
        pytest.raises(pipeline.InboxRowFinished) as refused,
        session_scope(settings.database_url) as session,
    ):
        pipeline.load_scan(session=session, inbox_id=inbox_id, settings=settings)

    assert refused.value.summary == {"status": "processed", "n": 1}
    assert row(settings, inbox_id).status == InboxStatus.PROCESSED


def test_load_scan_refuses_a_row_held_by_a_live_run_and_leaves_it_alone(
    settings: Settings,
) -> None:
    inbox_id = received(settings)
    claim_time = claimed(settings, inbox_id, ago=timedelta(seconds=5))

    with pytest.raises(pipeline.InboxRowClaimed), session_scope(settings.database_url) as session:
        pipeline.load_scan(session=session, inbox_id=inbox_id, settings=settings)
    with session_scope(settings.database_url) as session:
        outcome = pipeline.fail(
            session=session,
            inbox_id=inbox_id,
            error=pipeline.InboxRowClaimed("held elsewhere"),
            settings=settings,
        )

    assert outcome is None
    untouched = row(settings, inbox_id)
    assert (untouched.status, untouched.claimed_at, untouched.error) == (
        InboxStatus.PROCESSING,
        claim_time,
        None,
    )


def test_load_scan_takes_over_a_row_whose_run_died(settings: Settings) -> None:
    inbox_id = received(settings)
    claimed(settings, inbox_id, ago=LEASE * 2)
    now = utcnow()

    with session_scope(settings.database_url) as session:
        scan = pipeline.load_scan(session=session, inbox_id=inbox_id, settings=settings, now=now)

    assert scan.accession == "ACC2026000107"
    assert row(settings, inbox_id).claimed_at == now


def release(settings: Settings, engine: Engine | None = None) -> list[Submission]:
    cutoff = utcnow() - LEASE
    if engine is None:
        with session_scope(settings.database_url) as session:
            return inbox_queries.release_stale_claims(
                session=session, claimed_before=cutoff, limit=100
            )
    with Session(engine, expire_on_commit=False) as session:
        released = inbox_queries.release_stale_claims(
            session=session, claimed_before=cutoff, limit=100
        )
        session.commit()
        return released


def test_sweep_releases_only_rows_past_the_lease_and_once(settings: Settings) -> None:
    dead = received(settings, "spine_normal.hl7")
    live = received(settings, "spine_inconclusive.hl7")
    waiting = received(settings, "spine_pain_degenerative.hl7")
    dead_claim = claimed(settings, dead, ago=LEASE + timedelta(minutes=1))
    claimed(settings, live, ago=LEASE - timedelta(minutes=1))

    first = release(settings)
    second = release(settings)

    assert first == [Submission(dead, "ACC2026000107", dead_claim)]
    assert second == []
    given_back = row(settings, dead)
    # The dead claim stays on the row: the re-submission's event id is derived from it.
    assert (given_back.status, given_back.claimed_at) == (InboxStatus.RECEIVED, dead_claim)
    assert row(settings, live).status == InboxStatus.PROCESSING
    assert row(settings, waiting).status == InboxStatus.RECEIVED
    with session_scope(settings.database_url) as session:
        audits = session.exec(select(AuditEvent).where(AuditEvent.action == "inbox.released")).all()
        assert [(a.entity_id, a.actor) for a in audits] == [(dead, "sweep-inbox")]


def test_a_processing_row_from_before_claims_were_recorded_counts_from_arrival(
    settings: Settings,
) -> None:
    inbox_id = received(settings)
    with session_scope(settings.database_url) as session:
        old = session.get_one(InboxMessage, inbox_id)
        old.status, old.received_at = InboxStatus.PROCESSING, utcnow() - LEASE * 2
        session.add(old)

    assert release(settings) == [Submission(inbox_id, "ACC2026000107", None)]


def _hold_before_update(engine: Engine, barrier: threading.Barrier) -> None:
    """Every racer waits, after its reads, until all are about to write the same row."""
    local = threading.local()

    @event.listens_for(engine, "before_cursor_execute")
    def _wait(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE INBOX_MESSAGE") and not getattr(
            local, "waited", False
        ):
            local.waited = True
            barrier.wait(timeout=60)


def test_racing_sweeps_release_each_dead_row_once(settings: Settings) -> None:
    rows = [
        received(settings, sample)
        for sample in ("spine_normal.hl7", "spine_inconclusive.hl7", "spine_pain_degenerative.hl7")
    ]
    for inbox_id in rows:
        claimed(settings, inbox_id, ago=LEASE * 2)
    engine = racing_engine(settings.database_url, RACERS)
    _hold_before_update(engine, threading.Barrier(RACERS))

    with ThreadPoolExecutor(RACERS) as pool:
        results = list(pool.map(lambda _: release(settings, engine), range(RACERS)))
    engine.dispose()

    released = sorted(s.inbox_id for result in results for s in result)
    assert released == sorted(rows)
    assert {row(settings, inbox_id).status for inbox_id in rows} == {InboxStatus.RECEIVED}


def test_racing_runs_claim_a_row_once(settings: Settings) -> None:
    inbox_id = received(settings)
    engine = racing_engine(settings.database_url, RACERS)
    _hold_before_update(engine, threading.Barrier(RACERS))

    def race(_: int) -> bool:
        now = utcnow()
        with Session(engine) as session:
            won = inbox_queries.claim_message(
                session=session, inbox_id=inbox_id, now=now, stale_before=now - LEASE
            )
            session.commit()
            return won

    with ThreadPoolExecutor(RACERS) as pool:
        wins = list(pool.map(race, range(RACERS)))
    engine.dispose()

    assert wins.count(True) == 1
    with session_scope(settings.database_url) as session:
        assert (
            session.exec(select(InboxMessage.status).where(col(InboxMessage.id) == inbox_id)).one()
            == InboxStatus.PROCESSING
        )
