"""Cancel, move and block from deployment forms: the CLI's services, audited as `by`."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from sqlmodel import select

from followup.settings import Settings
from models.db import session_scope
from models.tables import Appointment, AuditEvent
from tests.flows.conftest import run_sample

pytestmark = pytest.mark.prefect


def test_a_visit_is_moved_then_cancelled_and_a_provider_blocked_each_audited_as_by(
    settings: Settings,
) -> None:
    from flows.visit_actions import block_provider_time, cancel_visit, move_visit

    summary = run_sample(settings, "spine_neurology_root_compression.hl7")
    first = summary["appointment"]["id"]

    with pytest.raises(ValueError, match="say who acts"):
        asyncio.run(cancel_visit(appointment_id=first, by=" "))
    moved = asyncio.run(move_visit(appointment_id=first, by="sam.lee", reason="patient asked"))
    assert moved.startswith(f"appointment {first} moved by sam.lee to appointment ")
    with session_scope(settings.database_url) as session:
        [now_booked] = session.exec(select(Appointment).where(Appointment.status == "booked"))
        second = now_booked.id
    assert second is not None
    cancelled = asyncio.run(cancel_visit(appointment_id=second, by="sam.lee"))
    assert cancelled == f"appointment {second} cancelled by sam.lee"

    start = datetime.fromisoformat(summary["appointment"]["start"]) + timedelta(days=1)
    blocked = asyncio.run(
        block_provider_time(
            npi="1000000001", start=start, end=start + timedelta(hours=2), by="kim.ortiz"
        )
    )
    assert blocked.startswith("Dr. Okafor (NPI 1000000001) blocked by kim.ortiz ")

    with session_scope(settings.database_url) as session:
        trail = session.exec(
            select(AuditEvent.action, AuditEvent.actor, AuditEvent.detail).where(
                AuditEvent.action.startswith("ui.")  # type: ignore[attr-defined]
            )
        ).all()
    assert [(action, actor, detail["via"]) for action, actor, detail in trail] == [
        ("ui.visit_moved", "sam.lee", "prefect-ui"),
        ("ui.visit_cancelled", "sam.lee", "prefect-ui"),
        ("ui.provider_time_blocked", "kim.ortiz", "prefect-ui"),
    ]
