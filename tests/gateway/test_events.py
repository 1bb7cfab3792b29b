"""The ris.scan.completed event and the sweep-inbox flow, against a real Prefect API."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventIDFilter
from prefect.states import Cancelled
from sqlmodel import select

from flows.events import EVENT, TASK_OPENED_EVENT, emit_for_inbox, emit_tasks_opened, event_id
from flows.sweep_inbox import sweep_inbox
from followup.ris import hl7v2
from followup.services import intake
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


def emitted_before_are_stored() -> None:
    """Return once an event emitted now is stored: the events emitted before it (same sender,
    in order) have been handled by then, so a second copy of one would be stored already."""
    marker = uuid4()
    emit_event(event="test.marker", resource={"prefect.resource.id": f"test.{marker}"}, id=marker)
    assert len(stored_events([marker], expected=1)) == 1


@pytest.mark.prefect
def test_emitted_event_reaches_prefect(prefect_api: None) -> None:
    assert emit_for_inbox(inbox_id=900001, accession="ACC-EVENT-1")

    [event] = stored_events([event_id(900001, "ACC-EVENT-1")], expected=1)

    assert event.event == EVENT
    assert event.resource.id == "ris.study.ACC-EVENT-1"
    assert event.payload == {"inbox_id": 900001, "accession": "ACC-EVENT-1"}


def sweep(older_than_seconds: int) -> int:
    """One sweep-inbox run in-process; the count of runs it submitted."""
    return asyncio.run(sweep_inbox(older_than_seconds=older_than_seconds))


def scan_runs(deployment_id: UUID) -> list[tuple[str, int, str, str]]:
    """(name, inbox id, accession, state) of the deployment's runs, oldest first."""

    async def read() -> list[FlowRun]:
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )

    return [
        (
            run.name,
            run.parameters["inbox_id"],
            run.parameters["accession"],
            str(run.state_type.value if run.state_type else None),
        )
        for run in asyncio.run(read())
    ]


@pytest.mark.prefect
def test_a_task_opened_by_a_text_reaches_prefect_as_the_worklist_s_trigger(
    prefect_api: None,
) -> None:
    [emitted] = emit_tasks_opened([900002])

    [event] = stored_events([emitted], expected=1)

    # What prefect.yaml's daily-worklist trigger matches and expects.
    assert event.event == TASK_OPENED_EVENT
    assert event.resource.id == "followup.escalation.900002"
    assert event.payload == {"escalation_id": 900002}


@pytest.mark.prefect
def test_sweep_submits_an_old_unclaimed_row_once_while_its_run_is_live(
    scan_deployment: UUID, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No run holds the row (its event was lost, or its trigger failed to create the run):
    the sweep creates one; the next sweep leaves the row to it."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    old = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=5))
    receive(database_url, "spine_inconclusive.hl7", age=timedelta(seconds=5))

    first, again = sweep(120), sweep(120)

    assert (first, again) == (1, 0)
    assert scan_runs(scan_deployment) == [("scan-ACC2026000107", old, "ACC2026000107", "SCHEDULED")]


@pytest.mark.prefect
def test_sweep_submits_a_row_again_once_the_run_that_held_it_ended_without_it(
    scan_deployment: UUID, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run waiting for a worker (as its trigger created it) holds its row; once that run
    ended without claiming it (cancelled), the next sweep gives the row a new run."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    waiting = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=5))

    async def trigger_run() -> UUID:
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(
                scan_deployment, parameters={"inbox_id": waiting, "accession": "ACC2026000107"}
            )
            return run.id

    async def cancel(run_id: UUID) -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Cancelled(), force=True)

    triggered = asyncio.run(trigger_run())
    held = sweep(120)
    asyncio.run(cancel(triggered))
    submitted = sweep(120)

    assert (held, submitted) == (0, 1)
    assert [(inbox, state) for _, inbox, _, state in scan_runs(scan_deployment)] == [
        (waiting, "CANCELLED"),
        (waiting, "SCHEDULED"),
    ]


def row_event_id(database_url: str, inbox_id: int, claim: datetime | None = None) -> UUID:
    with session_scope(database_url) as session:
        accession = session.get_one(InboxMessage, inbox_id).accession
    assert accession is not None
    return event_id(inbox_id, accession, claim)


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
    scan_deployment: UUID, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.scan_completed import scan_completed

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("FOLLOWUP_PROCESSING_LEASE_SECONDS", "600")
    dead = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=30))
    live = receive(database_url, "spine_inconclusive.hl7", age=timedelta(minutes=30))
    claimed(database_url, dead, ago=timedelta(minutes=20))
    live_claim = claimed(database_url, live, ago=timedelta(minutes=1))

    first, again = sweep(120), sweep(120)

    assert (first, again) == (1, 0)
    assert [inbox for _, inbox, _, _ in scan_runs(scan_deployment)] == [dead]
    with session_scope(database_url) as session:
        released = session.exec(
            select(AuditEvent.entity_id).where(AuditEvent.action == "inbox.released")
        ).all()
        assert released == [dead]

    summary = asyncio.run(scan_completed(inbox_id=dead, accession="ACC2026000107"))
    duplicate = asyncio.run(scan_completed(inbox_id=live, accession="ACC2026000108"))

    assert summary["status"] == InboxStatus.PROCESSED
    assert duplicate == {"inbox_id": live, "duplicate_run": True}
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
    scan_deployment: UUID, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    stranded_copy = store_unjudged(database_url, "spine_normal.hl7", age=timedelta(minutes=5))
    resend = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=4))
    claimed(database_url, resend, ago=timedelta(minutes=1))  # a run is processing the resend
    lone = store_unjudged(database_url, "spine_inconclusive.hl7", age=timedelta(minutes=5))

    submitted = sweep(120)

    assert submitted == 1
    with session_scope(database_url) as session:
        copy_row, lone_row = (session.get_one(InboxMessage, i) for i in (stranded_copy, lone))
        assert (copy_row.status, copy_row.duplicate_of_id) == (InboxStatus.DUPLICATE, resend)
        assert (lone_row.status, lone_row.accession) == (InboxStatus.RECEIVED, "ACC2026000108")
    assert [inbox for _, inbox, _, _ in scan_runs(scan_deployment)] == [lone]
