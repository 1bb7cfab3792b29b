"""Cases a clinic expects handled: an unknown ordering provider, a report after its window."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from followup.cli import app
from followup.core.demo import restamp_for_today
from followup.services.intake import receive_message
from followup.settings import get_settings
from models.db import session_scope
from models.tables import AuditEvent, Escalation, OutboundMessage
from models.types import utcnow
from tests.conftest import SAMPLES, run_scan, seed_clinic

UNKNOWN = (b"1000000001^Okafor^Adaeze", b"1999999999^Vance^Iris")


def process(
    database_url: str,
    sample: str = "spine_neurology_root_compression.hl7",
    *,
    replacing: tuple[bytes, bytes] | None = None,
    result_days_ago: int = 0,
) -> dict[str, Any]:
    settings = get_settings(database_url=database_url)
    raw = (SAMPLES / "hl7" / sample).read_bytes()
    if replacing is not None:
        raw = raw.replace(*replacing)
    now = datetime.now(settings.site_zone) - timedelta(days=result_days_ago)
    with session_scope(database_url) as session:
        receipt = receive_message(
            session=session, raw=restamp_for_today(raw, now=now), source="test", settings=settings
        )
    assert receipt.run_inbox_id is not None
    return run_scan(receipt.run_inbox_id)


@pytest.fixture
def clinic(flow_database_url: str) -> str:
    """The seeded clinic the scan-completed flow itself runs against."""
    seed_clinic(flow_database_url)
    return flow_database_url


def test_the_sample_orders_through_the_provider_the_unknown_case_replaces() -> None:
    raw = (SAMPLES / "hl7" / "spine_neurology_root_compression.hl7").read_bytes()
    assert UNKNOWN[0] in raw


def test_an_unknown_ordering_provider_falls_to_the_on_call_provider_with_a_task(
    clinic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOLLOWUP_ON_CALL_PROVIDER_NPI", "1000000005")
    summary = process(clinic, replacing=UNKNOWN)

    assert summary["appointment"]["provider_npi"] in {"1000000004", "1000000005"}
    [task] = [e for e in summary["escalations"] if e["kind"] == "unknown_provider"]
    with session_scope(clinic) as session:
        reason = session.get_one(Escalation, task["id"]).reason
    assert reason.startswith("ordering provider 1999999999 not in the directory: booked with ")
    assert "on-call Dr. Brennan (NPI 1000000005)" in reason


def test_a_critical_finding_of_an_unknown_provider_goes_to_the_on_call_provider(
    clinic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOLLOWUP_ON_CALL_PROVIDER_NPI", "1000000001")
    summary = process(
        clinic,
        "spine_critical_cord_compression.hl7",
        replacing=(b"1000000005^Brennan^Siobhan", b"1999999999^Vance^Iris"),
    )

    [critical] = [e for e in summary["escalations"] if e["kind"] == "critical_finding"]
    assert (critical["target"], critical["target_name"]) == (
        "1000000001",
        "Dr. Okafor (NPI 1000000001)",
    )


def test_a_later_provider_import_books_the_scans_waiting_for_that_provider(
    clinic: str, tmp_path: Path
) -> None:
    summary = process(clinic, replacing=UNKNOWN)
    assert summary["appointment"] is None
    [waiting] = [e for e in summary["escalations"] if e["kind"] == "unbookable"]

    providers = tmp_path / "providers.csv"
    providers.write_text(
        "npi,family_name,given_name,practice,timezone,covering_npi,slot_minutes,hours\n"
        "1999999999,Vance,Iris,Riverside Primary Care,America/New_York,,30,"
        "Mon-Fri 09:00-12:00\n"
    )
    result = CliRunner().invoke(app, ["providers", "import", str(providers), "--days", "21"])
    assert result.exit_code == 0, result.output
    [appointment_id] = json.loads(result.stdout)["waiting_scans_booked"]

    with session_scope(clinic) as session:
        closed = session.get_one(Escalation, waiting["id"])
        assert (closed.status, closed.acknowledged_by) == ("acknowledged", "provider-import")
        kinds = session.exec(
            select(OutboundMessage.kind).where(OutboundMessage.appointment_id == appointment_id)
        ).all()
    assert kinds[0] == "confirmation"


def test_a_late_report_books_the_earliest_slot_from_now_within_the_tiers_length(
    clinic: str,
) -> None:
    summary = process(clinic, result_days_ago=20)  # the routine window was days 7-14

    start = datetime.fromisoformat(summary["appointment"]["start"])
    now = utcnow()
    assert now < start < now + timedelta(days=7)
    with session_scope(clinic) as session:
        [said] = session.exec(
            select(AuditEvent).where(AuditEvent.action == "booking.window_passed")
        ).all()
    assert said.detail["passed"].startswith("routine window ")
    assert said.detail["searching"].startswith("routine window ")


def test_the_first_message_about_a_visit_is_always_its_confirmation(clinic: str) -> None:
    summary = process(clinic)  # booked; its confirmation is queued, not yet sent
    first = summary["appointment"]["id"]
    runner = CliRunner()

    moved = runner.invoke(app, ["appointments", "reschedule", str(first)])
    assert moved.exit_code == 0, moved.output
    second = json.loads(moved.stdout)
    cancelled = runner.invoke(app, ["appointments", "cancel", str(second["appointment"])])
    assert cancelled.exit_code == 0, cancelled.output

    with session_scope(clinic) as session:
        [notice] = session.exec(
            select(OutboundMessage).where(OutboundMessage.id == second["notice_message"])
        ).all()
        assert notice.kind == "confirmation"  # of the new time, never "is now"
        texts = session.exec(
            select(OutboundMessage.kind, OutboundMessage.status).where(
                OutboundMessage.appointment_id == second["appointment"]
            )
        ).all()
    assert json.loads(cancelled.stdout)["notice_message"] is None  # nothing: never told
    assert {status for _, status in texts} == {"cancelled"}


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """`followup ARGS` in-process through the console script's entry point; its exit code."""
    from followup.cli import main

    monkeypatch.setattr("sys.argv", ["followup", *args])
    with pytest.raises(SystemExit) as ended:
        main()
    return int(ended.value.code or 0)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("appointments", "cancel", "99999"), "followup: appointment 99999 does not exist\n"),
        (
            ("escalations", "ack", "99999", "--by", "sam"),
            "escalation 99999 does not exist\n",
        ),
        (
            ("providers", "block", "1000000001", "next tuesday", "2026-12-20T10:00"),
            "followup: Invalid isoformat string: 'next tuesday'\n",
        ),
    ],
)
def test_ordinary_cli_mistakes_end_in_one_line_and_a_non_zero_exit(
    clinic: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    said: str,
) -> None:
    assert run_main(monkeypatch, *args) == 1
    assert capsys.readouterr().err == said


def test_the_worklist_reads_at_80_columns_with_every_reason_whole(
    clinic: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    process(clinic, replacing=UNKNOWN)
    monkeypatch.setenv("COLUMNS", "80")

    assert run_main(monkeypatch, "worklist") == 0

    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 80
    with session_scope(clinic) as session:
        reasons = session.exec(select(Escalation.reason)).all()
    flowing = " ".join(printed.split())
    assert reasons and all(" ".join(reason.split()) in flowing for reason in reasons)
    assert "- what to do: answer the form of run review-ACC2026000101, or call" in printed


def test_a_late_report_with_no_free_slot_waits_on_the_waitlist_instead_of_lapsing(
    clinic: str,
) -> None:
    from sqlalchemy import update

    from models import booking
    from models.tables import Slot, SlotStatus, WaitlistEntry

    with session_scope(clinic) as session:
        session.execute(update(Slot).values(status=SlotStatus.BLOCKED))
    summary = process(clinic, result_days_ago=20)
    assert summary["appointment"] is None

    with session_scope(clinic) as session:
        booking.expire_offers(session=session, timing=get_settings().offer_timing, now=utcnow())
    with session_scope(clinic) as session:
        [entry] = session.exec(select(WaitlistEntry)).all()
        assert entry.resolved_at is None
        assert entry.window_end > utcnow() + timedelta(days=6)
