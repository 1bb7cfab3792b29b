"""The ris.scan.completed event and the sweep-inbox flow, against a real Prefect API."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventIDFilter
from prefect.states import Cancelled, Scheduled, State
from sqlmodel import select

from flows.events import EVENT, emit_for_inbox, event_id
from flows.sweep_inbox import sweep_inbox
from followup import intake
from followup.ris import hl7v2
from followup.settings import get_settings
from models import inbox_queries
from models.db import session_scope
from models.tables import AuditEvent, InboxMessage, InboxStatus
from models.types import utcnow
from tests.conftest import SAMPLES

HL7 = SAMPLES / "hl7"


def test_event_id_is_derived_from_the_inbox_row() -> None:
    assert event_id(41, "ACC1") == event_id(41, "ACC1")
    assert event_id(41, "ACC1") != event_id(42, "ACC1")
    # Another site's database (or a rebuilt one) on the same Prefect server reuses row ids.
    assert event_id(41, "ACC1") != event_id(41, "ACC2")
    assert event_id(41, "ACC1").version == 5


def receive(database_url: str, sample: str, *, age: timedelta) -> int:
    settings = get_settings(database_url=database_url)
    with session_scope(database_url) as session:
        receipt = intake.receive_message(
            session=session, raw=(HL7 / sample).read_bytes(), source="test", settings=settings
        )
        row = session.get(InboxMessage, receipt.inbox_id)
        assert row is not None and receipt.should_process
        row.received_at = utcnow() - age
        session.add(row)
    return receipt.inbox_id


def stored_events(ids: list[UUID], *, expected: int, timeout: float = 30) -> list[Any]:
    """Events with these ids as the server stored them (waits for `expected` of them)."""

    async def read() -> list[Any]:
        async with get_client() as client:
            # limit: the client defaults to 100, over the server's maximum of 50.
            page = await client.read_events(filter=EventFilter(id=EventIDFilter(id=ids)), limit=50)
            return list(page.events)

    deadline = time.monotonic() + timeout
    events = asyncio.run(read())
    while len(events) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        events = asyncio.run(read())
    return events


@pytest.mark.prefect
def test_emitted_event_reaches_prefect(prefect_api: None) -> None:
    assert emit_for_inbox(inbox_id=900001, accession="ACC-EVENT-1")

    [event] = stored_events([event_id(900001, "ACC-EVENT-1")], expected=1)

    assert event.event == EVENT
    assert event.resource.id == "ris.study.ACC-EVENT-1"
    assert event.payload == {"inbox_id": 900001, "accession": "ACC-EVENT-1"}


def sweep(older_than_seconds: int) -> tuple[int, UUID]:
    """One sweep-inbox run in-process: the count it emitted and its flow run's id."""

    async def run() -> State[int]:
        return await sweep_inbox(older_than_seconds=older_than_seconds, return_state=True)

    state = asyncio.run(run())
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    return state.result(), run_id


@pytest.mark.prefect
def test_sweep_re_emits_old_unclaimed_rows_under_an_id_of_each_sweep(
    prefect_api: None, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No run holds the row (its trigger never created one): every sweep re-emits it, each
    under its own id, since Prefect drops an id it saw in the last 30 minutes."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    old = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=5))
    recent = receive(database_url, "spine_inconclusive.hl7", age=timedelta(seconds=5))

    (first, first_sweep), (again, second_sweep) = sweep(120), sweep(120)

    assert (first, again) == (1, 1)
    candidates = [
        row_event_id(database_url, row, sweep_run=run)
        for row in (old, recent)
        for run in (first_sweep, second_sweep)
    ]
    events = stored_events(candidates, expected=2)
    assert sorted((e.id, e.payload["inbox_id"]) for e in events) == sorted(
        [(candidates[0], old), (candidates[1], old)]
    )
    assert {e.resource.id for e in events} == {"ris.study.ACC2026000107"}


@pytest.mark.prefect
def test_sweep_leaves_a_row_to_the_live_run_that_holds_it(
    prefect_api: None, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run waiting for a worker holds its row: not re-emitted, so a backlog is not
    submitted twice; once that run ended without claiming it (cancelled), the row is."""
    from flows.scan_completed import scan_completed

    monkeypatch.setenv("DATABASE_URL", database_url)
    waiting = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=5))

    async def schedule_run() -> UUID:
        async with get_client() as client:
            run = await client.create_flow_run(
                scan_completed,
                parameters={"inbox_id": waiting, "accession": "ACC2026000107"},
                state=Scheduled(scheduled_time=utcnow() + timedelta(days=1)),
            )
            return run.id

    async def cancel(run_id: UUID) -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Cancelled(), force=True)

    run_id = asyncio.run(schedule_run())
    try:
        held, _ = sweep(120)
    finally:
        asyncio.run(cancel(run_id))
    emitted, after_cancel = sweep(120)

    assert (held, emitted) == (0, 1)
    [event] = stored_events(
        [row_event_id(database_url, waiting, sweep_run=after_cancel)], expected=1
    )
    assert event.payload["inbox_id"] == waiting


def row_event_id(
    database_url: str,
    inbox_id: int,
    claim: datetime | None = None,
    *,
    sweep_run: UUID | None = None,
) -> UUID:
    with session_scope(database_url) as session:
        accession = session.get_one(InboxMessage, inbox_id).accession
    assert accession is not None
    return event_id(inbox_id, accession, claim, sweep_run=sweep_run)


def test_a_resubmission_gets_its_own_event_id_per_dead_claim() -> None:
    claim = datetime(2026, 11, 5, 14, 0, tzinfo=UTC)

    later = claim + timedelta(minutes=1)
    in_new_york = claim.astimezone(ZoneInfo("America/New_York"))
    assert event_id(41, "A", claim) == event_id(41, "A", in_new_york)
    assert len({event_id(41, "A"), event_id(41, "A", claim), event_id(41, "A", later)}) == 3


def claimed(database_url: str, inbox_id: int, *, ago: timedelta) -> datetime:
    with session_scope(database_url) as session:
        row = session.get_one(InboxMessage, inbox_id)
        row.status, row.claimed_at = InboxStatus.PROCESSING, utcnow() - ago
        session.add(row)
    with session_scope(database_url) as session:
        claim = session.get_one(InboxMessage, inbox_id).claimed_at
    assert claim is not None
    return claim


@pytest.mark.prefect
def test_sweep_resubmits_a_row_whose_run_died_once_and_the_new_run_takes_it(
    prefect_api: None, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.scan_completed import scan_completed
    from followup.pipeline import InboxRowClaimed

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FOLLOWUP_PROCESSING_LEASE_SECONDS", "600")
    dead = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=30))
    live = receive(database_url, "spine_inconclusive.hl7", age=timedelta(minutes=30))
    dead_claim = claimed(database_url, dead, ago=timedelta(minutes=20))
    live_claim = claimed(database_url, live, ago=timedelta(minutes=1))

    emitted, sweep_run = sweep(120)

    assert emitted == 1
    resubmitted = row_event_id(database_url, dead, dead_claim, sweep_run=sweep_run)
    candidates = [resubmitted, row_event_id(database_url, live, live_claim, sweep_run=sweep_run)]
    stored_events(candidates, expected=1)
    time.sleep(2)  # room for a second copy to (wrongly) arrive
    events = stored_events(candidates, expected=1)
    assert [(e.id, e.payload["inbox_id"]) for e in events] == [(resubmitted, dead)]
    with session_scope(database_url) as session:
        released = session.exec(
            select(AuditEvent.entity_id).where(AuditEvent.action == "inbox.released")
        ).all()
        assert released == [dead]

    summary = asyncio.run(scan_completed(inbox_id=dead, accession="ACC2026000107"))
    with pytest.raises(InboxRowClaimed):
        asyncio.run(scan_completed(inbox_id=live, accession="ACC2026000108"))

    assert summary["status"] == InboxStatus.PROCESSED
    with session_scope(database_url) as session:
        held = session.get_one(InboxMessage, live)
        assert (held.status, held.claimed_at, held.error) == (
            InboxStatus.PROCESSING,
            live_claim,
            None,
        )


def store_unjudged(database_url: str, sample: str, *, age: timedelta) -> int:
    """A message stored as the gateway stores it before judging, by a gateway that then died."""
    raw = (HL7 / sample).read_bytes()
    header = hl7v2.message_header(hl7v2.parse_message(hl7v2.decode_message(raw)))
    with session_scope(database_url) as session:
        row = inbox_queries.store_message(
            session=session,
            raw=raw,
            source="test",
            peer=None,
            content_type="hl7v2",
            sender=f"{header.sending_application}|{header.sending_facility}",
            control_id=header.control_id,
            message_type=header.message_type,
            content_digest=intake.content_digest(hl7v2.decode_message(raw)),
        )
        row.received_at = utcnow() - age
        session.add(row)
        assert row.id is not None
        return row.id


@pytest.mark.prefect
def test_sweep_judges_stranded_rows_and_submits_only_what_the_gateway_would_have(
    prefect_api: None, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    stranded_copy = store_unjudged(database_url, "spine_normal.hl7", age=timedelta(minutes=5))
    resend = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=4))
    claimed(database_url, resend, ago=timedelta(minutes=1))  # a run is processing the resend
    lone = store_unjudged(database_url, "spine_inconclusive.hl7", age=timedelta(minutes=5))

    emitted, sweep_run = sweep(120)

    assert emitted == 1
    with session_scope(database_url) as session:
        copy_row, lone_row = (session.get_one(InboxMessage, i) for i in (stranded_copy, lone))
        assert (copy_row.status, copy_row.duplicate_of_id) == (InboxStatus.DUPLICATE, resend)
        assert (lone_row.status, lone_row.accession) == (InboxStatus.RECEIVED, "ACC2026000108")
    [event] = stored_events([row_event_id(database_url, lone, sweep_run=sweep_run)], expected=1)
    assert event.payload["inbox_id"] == lone
