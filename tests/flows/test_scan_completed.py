"""End-to-end through a real Prefect API: stored message → flow run → decision, booking, SMS."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from sqlmodel import select

from followup.settings import Settings
from models.db import session_scope
from models.tables import Appointment, OutboundMessage, Referral
from tests.conftest import SAMPLES, days_after_result
from tests.flows.conftest import run_sample

pytestmark = pytest.mark.prefect


def test_routine_scan_books_in_window_with_referral_and_reminders(settings: Settings) -> None:
    summary = run_sample(settings, "spine_neurology_root_compression.hl7")

    assert summary["status"] == "processed"
    assert summary["decision"]["urgency"] == "routine"
    assert summary["decision"]["referrals"] == ["neurology"]
    assert [r["specialty"] for r in summary["referrals"]] == ["neurology"]
    assert all(r["status"] == "initiated" for r in summary["referrals"])
    assert 7 <= days_after_result(settings, summary) <= 14
    assert summary["appointment"]["provider_npi"] == "1000000001"
    kinds = [m["kind"] for m in summary["scheduled_messages"]]
    assert kinds[0] == "confirmation" and set(kinds) == {"confirmation", "reminder"}
    reminder = next(m for m in summary["scheduled_messages"] if m["kind"] == "reminder")
    assert "list of your current symptoms" in reminder["body"]
    assert "contact your doctor right away" in reminder["body"]
    assert "neuro" not in " ".join(m["body"].lower() for m in summary["scheduled_messages"])


def test_critical_finding_escalates_and_books_nothing(settings: Settings) -> None:
    summary = run_sample(settings, "spine_critical_cord_compression.hl7")

    assert summary["decision"]["critical"] is True
    assert summary["decision"]["urgency"] == "emergent"
    assert summary["appointment"] is None
    assert summary["scheduled_messages"] == []
    assert [(e["kind"], e["status"], e["target"]) for e in summary["escalations"]] == [
        ("critical_finding", "open", "1000000005")
    ]


def test_rerunning_the_flow_for_the_same_row_does_no_work_twice(settings: Settings) -> None:
    from flows.scan_completed import scan_completed

    first = run_sample(settings, "spine_pain_degenerative.hl7")
    again = asyncio.run(scan_completed(inbox_id=first["inbox_id"], accession="ACC2026000103"))

    assert again["appointment"] == first["appointment"]
    with session_scope(settings.database_url) as session:
        assert len(session.exec(select(Appointment)).all()) == 1
        assert len(session.exec(select(Referral)).all()) == 1
        assert len(session.exec(select(OutboundMessage)).all()) == len(first["scheduled_messages"])


def test_flow_run_is_named_by_accession_in_the_prefect_api(settings: Settings) -> None:
    summary = run_sample(settings, "si_joint_rheumatology_sacroiliitis.hl7")

    run = _read_run("scan-ACC2026000104")
    assert run.name == "scan-ACC2026000104"
    assert run.state.is_completed()
    assert summary["decision"]["referrals"] == ["rheumatology"]


def _read_run(name: str) -> Any:
    async def runs() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )

    return asyncio.run(runs())[0]


def test_run_is_tagged_with_route_urgency_and_site(settings: Settings) -> None:
    run_sample(settings, "spine_orthopedics_spondylolisthesis.hl7")

    run = _read_run("scan-ACC2026000102")
    assert {"route:orthopedics", "urgency:routine", f"site:{settings.site_code}"} <= set(run.tags)


def test_a_failing_run_marks_the_row_and_lands_in_needs_attention(settings: Settings) -> None:
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from flows.scan_completed import scan_completed
    from models.queries import get_inbox_message, store_inbox_message

    with session_scope(settings.database_url) as session:
        row = store_inbox_message(
            session=session,
            raw=(SAMPLES / "hl7" / "bad_no_mrn.hl7").read_bytes(),
            source="test",
        )
        row.accession = "ACC2026000111"  # as if intake had let it through
        session.add(row)
        inbox_id = row.id
    assert inbox_id is not None

    with pytest.raises(Exception, match="PID-3"):
        asyncio.run(scan_completed(inbox_id=inbox_id, accession="ACC2026000111"))

    with session_scope(settings.database_url) as session:
        failed = get_inbox_message(session=session, inbox_id=inbox_id)
        # The stored message itself cannot be read: retrying cannot help, a person must act.
        assert (failed.status, failed.error_location) == ("needs_action", "PID-3")

    async def artifact() -> Any:
        async with get_client() as client:
            return await client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(
                    key=ArtifactCollectionFilterKey(any_=["needs-attention"])
                )
            )

    [latest] = asyncio.run(artifact())
    assert "ACC2026000111" in str(latest.data)
    assert "PID-3" in str(latest.data)


def test_fhir_report_runs_through_the_same_flow(settings: Settings) -> None:
    import json

    from flows.scan_completed import scan_completed
    from followup.services.intake import receive_fhir

    report = json.loads((SAMPLES / "fhir" / "diagnosticreport_contained.json").read_text())
    now = datetime.now(settings.site_zone)
    report["effectiveDateTime"] = (now - timedelta(hours=2)).isoformat(timespec="seconds")
    report["issued"] = (now - timedelta(minutes=30)).isoformat(timespec="seconds")
    with session_scope(settings.database_url) as session:
        receipt = receive_fhir(
            session=session, raw=json.dumps(report).encode(), source="test", settings=settings
        )
    assert receipt.should_process and receipt.accession == "ACC2026200103"

    summary = asyncio.run(scan_completed(inbox_id=receipt.inbox_id, accession=receipt.accession))

    assert summary["status"] == "processed"
    assert summary["accession"] == "ACC2026200103"
    assert summary["appointment"]["provider_npi"] == "1000000003"
    assert 7 <= days_after_result(settings, summary) <= 14


def test_corrected_report_runs_again_and_moves_the_follow_up(settings: Settings) -> None:
    from flows.scan_completed import scan_completed
    from followup.core.demo import restamp_for_today
    from followup.services.intake import receive_message

    first = run_sample(settings, "spine_neurology_root_compression.hl7")
    corrected = restamp_for_today(
        (SAMPLES / "hl7" / "spine_corrected.hl7")
        .read_bytes()
        .replace(
            b"2. Mild L4-5 disc bulge without stenosis.",
            b"2. Marrow-replacing lesion in the L3 vertebral body, concerning for metastasis.",
        ),
        now=datetime.now(settings.site_zone),
    )
    with session_scope(settings.database_url) as session:
        receipt = receive_message(session=session, raw=corrected, source="test", settings=settings)

    summary = asyncio.run(scan_completed(inbox_id=receipt.inbox_id, accession="ACC2026000101"))

    assert summary["decision"]["urgency"] == "urgent"
    assert summary["appointment"]["id"] != first["appointment"]["id"]
    # The first visit's confirmation never went out: the patient hears of the new time first.
    kinds = {m["kind"] for m in summary["scheduled_messages"]}
    assert "confirmation" in kinds and "reschedule" not in kinds
    with session_scope(settings.database_url) as session:
        old = session.get(Appointment, first["appointment"]["id"])
        assert old is not None and old.status == "cancelled"
    runs = asyncio.run(_runs_named("scan-ACC2026000101"))
    corrected_run = next(r for r in runs if "result:corrected" in r.tags)
    assert {"urgency:urgent", "route:orthopedics"} <= set(corrected_run.tags)


async def _runs_named(name: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
