"""End-to-end through a real Prefect API: stored message → flow run → decision, booking, SMS."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from sqlmodel import select

from followup.demo import restamp_for_today
from followup.intake import receive_message
from followup.scheduling import site_holidays
from followup.settings import Settings, get_settings
from models.db import session_scope
from models.seed import seed_demo_clinic
from models.tables import Appointment, OutboundMessage, Referral
from tests.conftest import SAMPLES

pytestmark = pytest.mark.prefect


@pytest.fixture
def settings(database_url: str, monkeypatch: pytest.MonkeyPatch, prefect_api: None) -> Settings:
    # The flow builds its own Settings from the environment, as it does under a worker.
    monkeypatch.setenv("DATABASE_URL", database_url)
    settings = get_settings()
    today = datetime.now(settings.site_zone).date()
    with session_scope(database_url) as session:
        seed_demo_clinic(
            session=session,
            zone=settings.site_zone,
            first_day=today,
            closed_days=site_holidays("US", None, (today.year, today.year + 1)),
        )
    return settings


def _run(settings: Settings, sample: str) -> dict[str, Any]:
    from flows.scan_completed import scan_completed

    raw = restamp_for_today(
        (SAMPLES / "hl7" / sample).read_bytes(), now=datetime.now(settings.site_zone)
    )
    with session_scope(settings.database_url) as session:
        receipt = receive_message(session=session, raw=raw, source="test", settings=settings)
    assert receipt.should_process
    return asyncio.run(scan_completed(inbox_id=receipt.inbox_id, accession=receipt.accession))


def test_routine_scan_books_in_window_with_referral_and_reminders(settings: Settings) -> None:
    summary = _run(settings, "spine_neurology_root_compression.hl7")

    assert summary["status"] == "processed"
    assert summary["decision"]["urgency"] == "routine"
    assert summary["decision"]["referrals"] == ["neurology"]
    assert [r["specialty"] for r in summary["referrals"]] == ["neurology"]
    assert all(r["status"] == "initiated" for r in summary["referrals"])
    start = datetime.fromisoformat(summary["appointment"]["start"]).astimezone(settings.site_zone)
    today = datetime.now(settings.site_zone).date()
    assert timedelta(days=7) <= start.date() - today <= timedelta(days=14)
    assert summary["appointment"]["provider_npi"] == "1000000001"
    kinds = [m["kind"] for m in summary["scheduled_messages"]]
    assert kinds[0] == "confirmation" and set(kinds) == {"confirmation", "reminder"}
    reminder = next(m for m in summary["scheduled_messages"] if m["kind"] == "reminder")
    assert "list of your current symptoms" in reminder["body"]
    assert "contact your doctor right away" in reminder["body"]
    assert "neuro" not in " ".join(m["body"].lower() for m in summary["scheduled_messages"])


def test_critical_finding_escalates_and_books_nothing(settings: Settings) -> None:
    summary = _run(settings, "spine_critical_cord_compression.hl7")

    assert summary["decision"]["critical"] is True
    assert summary["decision"]["urgency"] == "emergent"
    assert summary["appointment"] is None
    assert summary["scheduled_messages"] == []
    assert [(e["kind"], e["status"], e["target"]) for e in summary["escalations"]] == [
        ("critical_finding", "open", "1000000005")
    ]


def test_rerunning_the_flow_for_the_same_row_does_no_work_twice(settings: Settings) -> None:
    from flows.scan_completed import scan_completed

    first = _run(settings, "spine_pain_degenerative.hl7")
    again = asyncio.run(scan_completed(inbox_id=first["inbox_id"], accession="ACC2026000103"))

    assert again["appointment"] == first["appointment"]
    with session_scope(settings.database_url) as session:
        assert len(session.exec(select(Appointment)).all()) == 1
        assert len(session.exec(select(Referral)).all()) == 1
        assert len(session.exec(select(OutboundMessage)).all()) == len(first["scheduled_messages"])


def test_flow_run_is_named_by_accession_in_the_prefect_api(settings: Settings) -> None:
    _run(settings, "si_joint_rheumatology_sacroiliitis.hl7")

    async def runs() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["scan-ACC2026000104"]))
            )

    [run] = [r for r in asyncio.run(runs()) if r.state and r.state.is_completed()][-1:]
    assert run.name == "scan-ACC2026000104"
