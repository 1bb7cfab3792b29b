"""The booking commands of `followup`, run in-process against the test database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from followup.cli import app
from followup.core.scheduling import BookingWindow
from followup.services import visits
from followup.settings import get_settings
from models import queries
from models.db import session_scope
from models.tables import Appointment, Escalation, OutboundMessage, OutboundStatus, Provider, Slot
from models.types import utcnow
from tests.booking.conftest import NY, Clinic
from tests.booking.test_calendars import FHIR_EXAMPLES

runner = CliRunner()


@pytest.fixture
def cli(clinic: Clinic, monkeypatch: pytest.MonkeyPatch) -> Clinic:
    monkeypatch.setenv("DATABASE_URL", clinic.url)
    return clinic


def _run(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if code == 0 else result.output


def test_providers_import_reads_csv_and_fhir_and_reports_what_it_skipped(
    cli: Clinic, tmp_path: Path
) -> None:
    providers = tmp_path / "providers.csv"
    providers.write_text(
        "npi,family_name,given_name,practice,timezone,covering_npi,slot_minutes,hours\n"
        "3000000001,Okafor,Ada,Riverside,America/New_York,3000000002,30,Mon-Fri 09:00-12:00\n"
        "3000000002,Lindqvist,Erik,Riverside,America/New_York,,30,Mon-Fri 13:00-17:00\n"
    )
    schedule = str(FHIR_EXAMPLES / "Schedule-exampleloc1.json")

    first = _run("providers", "import", str(providers), schedule, "--days", "14")
    again = _run("providers", "import", str(providers), schedule, "--days", "14")

    assert (first["providers_created"], first["providers_updated"]) == (2, 0)
    assert first["slots_created"] >= 8 * 6 + 8 * 8  # at least 8 business days in 14
    assert first["skipped"] == ["Schedule/exampleloc1: Practitioner/1 carries no NPI identifier"]
    assert (again["providers_created"], again["slots_created"]) == (0, 0)
    with session_scope(cli.url) as session:
        okafor = session.exec(select(Provider).where(Provider.npi == "3000000001")).one()
        assert okafor.covering_provider_id is not None
    assert _run("providers", "slots", "--days", "14") == {
        "providers": 2,
        "created": 0,
        "blocked": 0,
        "reopened": 0,
    }


def test_providers_import_refuses_a_broken_file_without_touching_the_database(
    cli: Clinic, tmp_path: Path
) -> None:
    broken = tmp_path / "providers.csv"
    broken.write_text("npi,when\n1,now\n")
    output = _run("providers", "import", str(broken), code=1)
    assert "import refused" in output and "unknown CSV header" in output


def test_block_close_cancel_and_reschedule_from_the_command_line(cli: Clinic) -> None:
    doctor = cli.provider()
    tomorrow = datetime.now(NY).date() + timedelta(days=1)
    cli.lay_slots(doctor, first_day=tomorrow, days=21, closed=())
    with session_scope(cli.url) as session:
        npi = session.get_one(Provider, doctor).npi
        first = session.exec(
            select(Slot).where(Slot.provider_id == doctor).order_by(col(Slot.start))
        ).first()
        assert first is not None
        local = first.start.astimezone(NY)

    blocked = _run(
        "providers", "block", npi, local.isoformat(), (local + timedelta(hours=1)).isoformat()
    )
    assert blocked == {"slots_blocked": 2, "conflicts": [], "moved": [], "worklist": []}
    closed = _run("providers", "close", (local + timedelta(days=1)).date().isoformat())
    assert closed["conflicts"] == []
    assert _run("providers", "close", (local + timedelta(days=1)).date().isoformat()) == {
        "already_closed": True
    }

    booked = _booked_visit(cli, doctor, tomorrow)

    moved = _run("appointments", "reschedule", str(booked.appointment_id))

    assert moved["previous"] == booked.appointment_id and moved["appointment"] is not None
    assert moved["task"] is None
    assert datetime.fromisoformat(moved["start"]) > booked.start
    old_texts, new_texts = _texts(cli, booked.appointment_id), _texts(cli, moved["appointment"])
    assert {(m.id, m.status) for m in old_texts} == {
        (booked.texts.notice, "dry_run"),
        *((i, "cancelled") for i in booked.texts.reminders),
    }
    assert {m.id for m in new_texts} == {moved["notice_message"], *moved["reminder_messages"]}
    assert {m.status for m in new_texts} == {"scheduled"}
    assert [m.kind for m in new_texts if m.id == moved["notice_message"]] == ["reschedule"]

    cancelled = _run("appointments", "cancel", str(moved["appointment"]), "--reason", "flu")

    assert cancelled == {
        "appointment": moved["appointment"],
        "status": "cancelled",
        "messages_cancelled": len(new_texts),
        "notice_message": cancelled["notice_message"],
        "offer": None,
        "offer_messages": [],
    }
    [notice] = [m for m in _texts(cli, moved["appointment"]) if m.status == "scheduled"]
    assert (notice.id, notice.kind) == (cancelled["notice_message"], "cancellation")
    with session_scope(cli.url) as session:
        assert session.get_one(Appointment, moved["appointment"]).cancel_reason == "flu"
        assert session.get_one(Appointment, booked.appointment_id).status == "cancelled"
    assert _run("waitlist", "expire") == {"new_offers": [], "offer_messages": []}


class BookedVisit(NamedTuple):
    appointment_id: int
    start: datetime
    npi: str  # the provider's
    texts: visits.Texts


def _booked_visit(cli: Clinic, doctor: int, first_day: Any) -> BookedVisit:
    """A follow-up booked in the first slot of a two-week window from `first_day`, with its
    texts planned and its confirmation sent (dry run): the patient knows the time, so a move
    tells them with a reschedule notice."""
    patient = cli.patient()
    study, _ = cli.study(patient, doctor)
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=NY)
    booked = cli.book(
        patient,
        doctor,
        study_id=study,
        window=BookingWindow(start, start + timedelta(days=14), "routine"),
    ).booked
    assert booked is not None
    with session_scope(cli.url) as session:
        texts = visits.plan_visit_texts(
            session=session,
            appointment_id=booked.appointment_id,
            settings=get_settings(),
            now=utcnow(),
        )
        session.get_one(OutboundMessage, texts.notice).status = OutboundStatus.DRY_RUN
        npi = session.get_one(Provider, doctor).npi
    return BookedVisit(booked.appointment_id, booked.start, npi, texts)


def test_blocking_a_booked_time_moves_the_visit_and_texts_the_patient(cli: Clinic) -> None:
    doctor = cli.provider()
    tomorrow = datetime.now(NY).date() + timedelta(days=1)
    cli.lay_slots(doctor, first_day=tomorrow, days=21, closed=())
    visit, start, npi, _ = _booked_visit(cli, doctor, tomorrow)
    local = start.astimezone(NY)

    blocked = _run(
        "providers", "block", npi, local.isoformat(), (local + timedelta(minutes=30)).isoformat()
    )

    [moved] = blocked["moved"]
    assert (blocked["slots_blocked"], blocked["conflicts"], blocked["worklist"]) == (0, [visit], [])
    assert (moved["previous"], moved["task"]) == (visit, None)
    assert datetime.fromisoformat(moved["start"]) == start + timedelta(minutes=30)
    with session_scope(cli.url) as session:
        old = session.get_one(Appointment, visit)
        new = session.get_one(Appointment, moved["appointment"])
    assert (old.status, old.replaced_by_id) == ("cancelled", new.id)
    assert (new.provider_id, new.study_id, new.status) == (doctor, old.study_id, "booked")
    # Its confirmation had gone out (a visit a day away has no reminders left to cancel).
    assert {m.status for m in _texts(cli, visit)} == {"dry_run"}
    with session_scope(cli.url) as session:  # the old slot lies in the blocked time
        assert session.get_one(Slot, old.slot_id).status == "blocked"
    new_texts = _texts(cli, new.id or 0)
    assert {m.id for m in new_texts} == {moved["notice_message"], *moved["reminder_messages"]}
    assert [m.kind for m in new_texts if m.id == moved["notice_message"]] == ["reschedule"]


def test_blocking_a_booked_time_nothing_fits_puts_the_visit_on_the_worklist(cli: Clinic) -> None:
    doctor = cli.provider()
    tomorrow = datetime.now(NY).date() + timedelta(days=1)
    cli.lay_slots(doctor, first_day=tomorrow, days=21, closed=())
    visit, start, npi, _ = _booked_visit(cli, doctor, tomorrow)
    local = start.astimezone(NY)
    until = local + timedelta(days=15)

    blocked = _run(
        "providers", "block", npi, local.isoformat(), until.isoformat(), "--reason", "leave"
    )

    [held] = blocked["worklist"]
    assert (blocked["conflicts"], blocked["moved"]) == ([visit], [])
    assert held["appointment"] == visit
    with session_scope(cli.url) as session:
        task = session.get_one(Escalation, held["task"])
        kept = session.get_one(Appointment, visit)
    assert (task.kind, task.status, task.reason) == ("visit_conflict", "open", held["reason"])
    assert held["reason"].startswith(
        f"provider {doctor} blocked {local.isoformat()} to {until.isoformat()} (leave): "
        f"appointment {visit} of {local:%a %Y-%m-%d %H:%M %Z} could not be moved (ordering "
        "provider"
    )
    assert held["reason"].endswith("call the patient to move or cancel it")
    assert kept.status == "booked"
    assert {m.status for m in _texts(cli, visit)} == {"dry_run"}  # its confirmation, untouched


def test_closing_the_site_for_a_day_moves_its_visits_and_texts_the_patients(cli: Clinic) -> None:
    doctor = cli.provider()
    tomorrow = datetime.now(NY).date() + timedelta(days=1)
    cli.lay_slots(doctor, first_day=tomorrow, days=21, closed=())
    visit, start, _, _ = _booked_visit(cli, doctor, tomorrow)
    day = start.astimezone(NY).date()

    closed = _run("providers", "close", day.isoformat(), "--reason", "snow")

    [moved] = closed["moved"]
    assert (closed["conflicts"], closed["worklist"]) == ([visit], [])
    assert (moved["previous"], moved["task"]) == (visit, None)
    assert datetime.fromisoformat(moved["start"]).astimezone(NY).date() > day
    with session_scope(cli.url) as session:
        old = session.get_one(Appointment, visit)
        new = session.get_one(Appointment, moved["appointment"])
        assert session.get_one(Slot, old.slot_id).status == "blocked"
    assert (old.status, old.replaced_by_id, new.status) == ("cancelled", new.id, "booked")
    new_texts = _texts(cli, new.id or 0)
    assert [m.kind for m in new_texts if m.id == moved["notice_message"]] == ["reschedule"]


def test_an_imported_busy_period_over_a_booked_visit_moves_it(cli: Clinic, tmp_path: Path) -> None:
    doctor = cli.provider()
    tomorrow = datetime.now(NY).date() + timedelta(days=1)
    cli.lay_slots(doctor, first_day=tomorrow, days=21, closed=())
    visit, start, npi, _ = _booked_visit(cli, doctor, tomorrow)
    busy = tmp_path / "availability.csv"
    busy.write_text(
        "npi,start,end,status,comment\n"
        f"{npi},{start.isoformat()},{(start + timedelta(hours=2)).isoformat()},busy,meeting\n"
    )

    imported = _run("providers", "import", str(busy), "--days", "21")

    [moved] = imported["moved"]
    assert (imported["conflicts"], imported["worklist"]) == ([visit], [])
    assert moved["previous"] == visit
    assert datetime.fromisoformat(moved["start"]) >= start + timedelta(hours=2)
    with session_scope(cli.url) as session:
        assert session.get_one(Appointment, visit).status == "cancelled"
        assert session.get_one(Appointment, moved["appointment"]).status == "booked"


def _texts(clinic: Clinic, appointment_id: int) -> list[OutboundMessage]:
    with session_scope(clinic.url) as session:
        return queries.messages_for_appointment(session=session, appointment_id=appointment_id)


def test_referral_moves_are_checked_and_overdue_ones_listed(cli: Clinic) -> None:
    referral = cli.referral(opened=datetime.now(NY) - timedelta(days=20))

    assert _run("referrals", "move", str(referral), "sent", "--reason", "faxed") == {
        "referral": referral,
        "status": "sent",
    }
    refused = _run("referrals", "move", str(referral), "completed", code=1)
    assert "refused" in refused and "from sent to completed" in refused
    [overdue] = _run("referrals", "overdue")
    assert (overdue["referral"], overdue["status"]) == (referral, "sent")
