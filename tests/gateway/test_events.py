"""The ris.scan.completed event and the sweep-inbox flow, against a real Prefect API."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventIDFilter

from flows.events import EVENT, emit_for_inbox, event_id
from flows.sweep_inbox import sweep_inbox
from followup import intake
from followup.settings import get_settings
from models.db import session_scope
from models.tables import InboxMessage
from models.types import utcnow
from tests.conftest import SAMPLES

HL7 = SAMPLES / "hl7"


def test_event_id_is_derived_from_the_inbox_row() -> None:
    assert event_id(41) == event_id(41)
    assert event_id(41) != event_id(42)
    assert event_id(41).version == 5


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

    [event] = stored_events([event_id(900001)], expected=1)

    assert event.event == EVENT
    assert event.resource.id == "ris.study.ACC-EVENT-1"
    assert event.payload == {"inbox_id": 900001, "accession": "ACC-EVENT-1"}


@pytest.mark.prefect
def test_sweep_re_emits_only_old_unclaimed_rows_and_prefect_keeps_one_event(
    prefect_api: None, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    old = receive(database_url, "spine_normal.hl7", age=timedelta(minutes=5))
    recent = receive(database_url, "spine_inconclusive.hl7", age=timedelta(seconds=5))

    first = asyncio.run(sweep_inbox(older_than_seconds=120))
    again = asyncio.run(sweep_inbox(older_than_seconds=120))

    assert (first, again) == (1, 1)
    events = stored_events([event_id(old), event_id(recent)], expected=1)
    time.sleep(2)  # room for a second copy to (wrongly) arrive
    events = stored_events([event_id(old), event_id(recent)], expected=1)
    assert [(e.id, e.payload["inbox_id"]) for e in events] == [(event_id(old), old)]
    assert events[0].resource.id == "ris.study.ACC2026000107"
