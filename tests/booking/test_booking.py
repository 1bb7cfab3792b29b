"""Booking in a real database: the window, the fallback chain, calendars, cancel, reschedule."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from followup.core.calendars import read_calendar_files
from followup.core.scheduling import BookingWindow, DayPart, Preferences, WorkingSession
from followup.services import calendar_import, moves
from followup.services.pipeline import BookingOutcome, RecordedStudy, book_follow_up
from followup.settings import get_settings
from models import booking, calendar_queries
from models.db import session_scope
from models.tables import (
    Appointment,
    AuditEvent,
    Escalation,
    OutboundMessage,
    Provider,
    Slot,
    WaitlistEntry,
)
from tests.booking.conftest import NY, OFFER_TIMING, REPORT_DAY, ROUTINE, US_HOLIDAYS, Clinic

MORNINGS = tuple(WorkingSession(day, time(9), time(12)) for day in range(5))


def _audit(clinic: Clinic, action: str) -> list[AuditEvent]:
    with session_scope(clinic.url) as session:
        return list(
            session.exec(
                select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.id))
            )
        )


def _appointment(clinic: Clinic, appointment_id: int) -> Appointment:
    with session_scope(clinic.url) as session:
        appointment = session.get(Appointment, appointment_id)
        assert appointment is not None
        return appointment


def test_books_the_ordering_providers_first_free_slot_in_the_window(clinic: Clinic) -> None:
    doctor = clinic.provider(family_name="Okafor")
    clinic.lay_slots(doctor)

    result = clinic.book(clinic.patient(), doctor)

    assert result.booked is not None
    assert result.booked.provider_id == doctor
    assert result.booked.start == datetime(2027, 3, 8, 9, tzinfo=NY)
    appointment = _appointment(clinic, result.booked.appointment_id)
    assert (appointment.window_start, appointment.window_end, appointment.tier) == (
        ROUTINE.earliest,
        ROUTINE.latest,
        "routine",
    )
    assert result.reason == (
        "booked with the ordering provider Dr. Okafor in the routine window 2027-03-08–2027-03-15"
    )
    [event] = _audit(clinic, "appointment.booked")
    assert event.entity_id == result.booked.appointment_id
    assert event.detail["step"] == "ordering provider"
    with session_scope(clinic.url) as session:
        slot = session.get(Slot, result.booked.slot_id)
        assert slot is not None and slot.status == "booked"


@pytest.mark.parametrize(
    ("free", "step"),
    [("covering", "covering provider"), ("colleague", "practice")],
)
def test_falls_back_along_the_chain_and_records_each_step(
    clinic: Clinic, free: str, step: str
) -> None:
    colleague = clinic.provider(family_name="Ramanathan")
    covering = clinic.provider(family_name="Lindqvist", practice="Harbor")
    ordering = clinic.provider(family_name="Okafor", covering=covering)
    clinic.lay_slots(ordering, first_day=date(2027, 4, 1))  # nothing in the March window
    clinic.lay_slots({"covering": covering, "colleague": colleague}[free])

    result = clinic.book(clinic.patient(), ordering)

    assert result.booked is not None
    assert result.booked.provider_id == {"covering": covering, "colleague": colleague}[free]
    no_slot = "no free slot in the routine window 2027-03-08–2027-03-15"
    expected = [f"ordering provider Dr. Okafor: {no_slot}"]
    if free == "colleague":
        expected.append(f"covering provider Dr. Lindqvist: {no_slot}")
    assert list(result.fallbacks) == expected
    assert result.reason.startswith(f"booked with the {step} ")
    assert result.reason.endswith("after: " + "; ".join(expected))
    assert [e.detail["reason"] for e in _audit(clinic, "booking.fallback")] == expected
    [booked] = _audit(clinic, "appointment.booked")
    assert booked.detail["step"] == step


def test_patient_preferences_are_honoured_or_the_step_fails_saying_so(clinic: Clinic) -> None:
    covering = clinic.provider(family_name="Lindqvist", practice="Harbor")
    ordering = clinic.provider(family_name="Okafor", covering=covering, sessions=MORNINGS)
    clinic.lay_slots(ordering)
    clinic.lay_slots(covering)
    thursday_afternoons = Preferences(day_part=DayPart.AFTERNOON, weekdays=frozenset({3}))

    result = clinic.book(clinic.patient(), ordering, preferences=thursday_afternoons)

    assert result.booked is not None
    assert result.booked.provider_id == covering
    assert result.booked.start == datetime(2027, 3, 11, 13, tzinfo=NY)
    assert result.fallbacks == (
        "ordering provider Dr. Okafor: no free slot in the routine window 2027-03-08–2027-03-15"
        " matching the patient's preferences (afternoons, Thu)",
    )


def test_holidays_known_only_at_booking_time_are_still_never_booked(clinic: Clinic) -> None:
    doctor = clinic.provider()
    # Slots laid before the holiday calendar was set up.
    clinic.lay_slots(doctor, first_day=date(2027, 5, 31), days=2, closed=())

    # Memorial Day (Monday 31 May) has slots, yet the booking takes Tuesday's first one.
    result = clinic.book(clinic.patient(), doctor, window=_day(date(2027, 5, 31), days=2))

    assert result.booked is not None
    assert result.booked.start == datetime(2027, 6, 1, 9, tzinfo=NY)


def test_site_closure_and_blocked_period_close_free_slots_and_name_the_conflicts(
    clinic: Clinic,
) -> None:
    doctor = clinic.provider()
    clinic.lay_slots(doctor)
    booked = clinic.book(clinic.patient(), doctor).booked  # Mon 8 March 09:00
    assert booked is not None

    with session_scope(clinic.url) as session:
        vacation = calendar_queries.add_blocked_period(
            session=session,
            provider_id=doctor,
            start=datetime(2027, 3, 8, tzinfo=NY),
            end=datetime(2027, 3, 10, tzinfo=NY),
            reason="vacation",
        )
        closure = calendar_queries.add_site_closure(
            session=session, day=date(2027, 3, 10), reason="snow day", zone=NY
        )
        again = calendar_queries.add_site_closure(
            session=session, day=date(2027, 3, 10), reason="", zone=NY
        )

    assert vacation.conflicts == (booked.appointment_id,)
    assert vacation.blocked_slots == 2 * 14 - 1
    assert closure is not None and closure.blocked_slots == 14 and closure.conflicts == ()
    assert again is None
    result = clinic.book(clinic.patient(), doctor)
    assert result.booked is not None
    assert result.booked.start == datetime(2027, 3, 11, 9, tzinfo=NY)
    with session_scope(clinic.url) as session:
        closed = calendar_queries.site_closed_days(
            session=session, settings=get_settings(), years=[2027]
        )
    assert date(2027, 3, 10) in closed and date(2027, 7, 5) in closed


def test_laying_slots_is_idempotent_and_follows_changed_hours_without_overlap(
    clinic: Clinic,
) -> None:
    doctor = clinic.provider()
    first = clinic.lay_slots(doctor, days=7)
    assert first.created == 5 * 14
    assert clinic.lay_slots(doctor, days=7) == calendar_queries.SlotSync(
        created=0, blocked=0, reopened=0
    )
    booked = clinic.book(clinic.patient(), doctor, window=_day(date(2027, 3, 1))).booked
    assert booked is not None and booked.start == datetime(2027, 3, 1, 9, tzinfo=NY)

    with session_scope(clinic.url) as session:
        calendar_queries.set_working_hours(
            session=session,
            provider_id=doctor,
            sessions=[WorkingSession(day, time(9), time(11)) for day in range(5)],
        )
        session.get_one(Provider, doctor).slot_minutes = 20
    changed = clinic.lay_slots(doctor, days=7)

    with session_scope(clinic.url) as session:
        monday = session.exec(
            select(Slot)
            .where(
                Slot.provider_id == doctor,
                Slot.status != "blocked",
                Slot.start < datetime(2027, 3, 2, tzinfo=NY),
            )
            .order_by(col(Slot.start))
        ).all()
    # 09:00–09:30 stays booked; 20-minute slots fill the rest of 09–11 without overlapping it.
    assert [(s.start.astimezone(NY).time(), s.status) for s in monday] == [
        (time(9), "booked"),
        (time(9, 40), "free"),
        (time(10), "free"),
        (time(10, 20), "free"),
        (time(10, 40), "free"),
    ]
    assert changed.blocked == 5 * 14 - 1
    assert changed.created == 4 + 4 * 6


def _day(day: date, days: int = 1) -> BookingWindow:
    start = datetime.combine(day, time.min, tzinfo=NY)
    return BookingWindow(start, start + timedelta(days=days), "urgent")


def test_pipeline_waitlists_and_escalates_when_nobody_can_book(clinic: Clinic) -> None:
    doctor = clinic.provider(family_name="Okafor")
    patient = clinic.patient()
    study, decision = clinic.study(patient, doctor)
    recorded = RecordedStudy(
        study_id=study,
        patient_id=patient,
        decision_id=decision,
        ordering_provider_id=doctor,
        urgency="routine",
        critical=False,
        held=False,
    )
    settings = get_settings(DATABASE_URL=clinic.url)

    with session_scope(clinic.url) as session:
        first = book_follow_up(session=session, recorded=recorded, settings=settings)
    with session_scope(clinic.url) as session:
        again = book_follow_up(session=session, recorded=recorded, settings=settings)

    reason = (
        "ordering provider Dr. Okafor: no free slot in the routine window 2027-03-08–2027-03-15;"
        " waitlisted for a freed slot"
    )
    assert first == BookingOutcome(None, first.escalation_id, reason)
    assert again.escalation_id == first.escalation_id
    with session_scope(clinic.url) as session:
        escalation = session.get(Escalation, first.escalation_id)
        assert escalation is not None
        assert (escalation.kind, escalation.target, escalation.reason) == (
            "unbookable",
            "scheduler-queue",
            reason,
        )
        [entry] = session.exec(select(WaitlistEntry)).all()
    assert (entry.study_id, entry.urgency, entry.status) == (study, "routine", "waiting")
    assert (entry.window_start, entry.window_end) == (ROUTINE.earliest, ROUTINE.latest)


def test_cancel_frees_the_slot_and_cancels_only_unsent_messages(clinic: Clinic) -> None:
    doctor = clinic.provider()
    clinic.lay_slots(doctor)
    patient = clinic.patient()
    appointment = clinic.book(patient, doctor).booked
    assert appointment is not None
    with session_scope(clinic.url) as session:
        for kind, status in (("confirmation", "sent"), ("reminder", "scheduled")):
            session.add(
                OutboundMessage(
                    idempotency_key=f"appt:{appointment.appointment_id}:{kind}",
                    patient_id=patient,
                    appointment_id=appointment.appointment_id,
                    kind=kind,
                    template=kind,
                    body="...",
                    encoding="GSM-7",
                    segments=1,
                    scheduled_for=appointment.start - timedelta(days=1),
                    status=status,
                )
            )

    with session_scope(clinic.url) as session:
        result = booking.cancel_appointment(
            session=session,
            timing=OFFER_TIMING,
            appointment_id=appointment.appointment_id,
            reason="patient cancelled",
            now=datetime(2027, 3, 2, tzinfo=NY),
        )
    with session_scope(clinic.url) as session:
        repeat = booking.cancel_appointment(
            session=session,
            timing=OFFER_TIMING,
            appointment_id=appointment.appointment_id,
            reason="again",
        )
        statuses = sorted((m.kind, m.status) for m in session.exec(select(OutboundMessage)).all())
        slot = session.get(Slot, appointment.slot_id)

    assert (result.appointment.status, result.messages_cancelled, result.offer) == (
        "cancelled",
        1,
        None,
    )
    assert result.appointment.cancel_reason == "patient cancelled"
    assert repeat.messages_cancelled == 0
    assert statuses == [("confirmation", "sent"), ("reminder", "cancelled")]
    assert slot is not None and slot.status == "free"
    rebooked = clinic.book(clinic.patient(), doctor).booked
    assert rebooked is not None and rebooked.slot_id == appointment.slot_id


def test_a_move_books_the_next_slot_or_keeps_the_visit_with_a_task_to_move_it(
    clinic: Clinic,
) -> None:
    doctor = clinic.provider()
    clinic.lay_slots(doctor)
    patient = clinic.patient()
    study, _ = clinic.study(patient, doctor)
    first = clinic.book(patient, doctor, study_id=study).booked
    other = clinic.book(clinic.patient(), doctor).booked  # takes 09:30, the next one
    assert first is not None and other is not None
    settings = get_settings(DATABASE_URL=clinic.url)
    now = datetime(2027, 3, 3, tzinfo=NY)

    with session_scope(clinic.url) as session:
        moved = moves.move_appointment(
            session=session,
            appointment_id=first.appointment_id,
            reason="RESCHEDULE",
            policy=moves.NothingFits.KEEP,
            settings=settings,
            now=now,
            actor="test",
            after=first.start,
        )
    assert moved.appointment is not None and moved.task_id is None
    assert moved.appointment.start == datetime(2027, 3, 8, 10, tzinfo=NY)
    assert moved.appointment.study_id == study
    assert _appointment(clinic, first.appointment_id).status == "cancelled"
    assert _appointment(clinic, first.appointment_id).replaced_by_id == moved.appointment.id
    assert [e.detail["from_appointment_id"] for e in _audit(clinic, "appointment.moved")] == [
        first.appointment_id
    ]

    # Block the rest of the window: the next move cannot book; the patient keeps the visit.
    with session_scope(clinic.url) as session:
        calendar_queries.add_blocked_period(
            session=session,
            provider_id=doctor,
            start=datetime(2027, 3, 8, 10, 30, tzinfo=NY),
            end=datetime(2027, 3, 16, tzinfo=NY),
            reason="conference",
        )
    assert moved.appointment.id is not None
    with session_scope(clinic.url) as session:
        stuck = moves.move_appointment(
            session=session,
            appointment_id=moved.appointment.id,
            reason="RESCHEDULE",
            policy=moves.NothingFits.KEEP,
            settings=settings,
            now=now,
            actor="test",
            after=moved.appointment.start,
        )
        task = session.get(Escalation, stuck.task_id)
    assert stuck.appointment is None
    assert task is not None and (task.kind, task.study_id) == ("reschedule", study)
    assert task.reason == stuck.reason
    assert stuck.reason.startswith(
        f"RESCHEDULE: appointment {moved.appointment.id} could not be moved (ordering provider"
    )
    assert stuck.reason.endswith(
        "the patient keeps the visit of Mon 2027-03-08 10:00 EST: move it by hand"
    )
    assert _appointment(clinic, moved.appointment.id).status == "booked"


def test_import_report_is_stored_and_the_same_import_twice_changes_nothing(
    clinic: Clinic, tmp_path: Path
) -> None:
    folder = tmp_path
    (folder / "providers.csv").write_text(
        "npi,family_name,given_name,practice,timezone,covering_npi,slot_minutes,hours\n"
        "2000000001,Okafor,Ada,Riverside,America/New_York,2000000002,30,Mon-Fri 09:00-12:00\n"
        '2000000002,Lindqvist,Erik,Riverside,America/New_York,,20,"Tue,Thu 13:00-15:00"\n'
    )
    (folder / "availability.csv").write_text(
        "npi,start,end,status,comment\n"
        "2000000001,2027-03-08T00:00:00-05:00,2027-03-09T00:00:00-05:00,busy-unavailable,leave\n"
        "2000000002,2027-03-13T09:00:00-05:00,2027-03-13T09:30:00-05:00,free,Saturday clinic\n"
        "2000000002,2027-03-12T09:00:00-05:00,2027-03-12T09:30:00-05:00,free,extra\n"
        "2999999999,2027-03-12T09:00:00-05:00,2027-03-12T09:30:00-05:00,free,\n"
    )
    data = read_calendar_files([folder / "providers.csv", folder / "availability.csv"])

    def run() -> calendar_import.ImportReport:
        with session_scope(clinic.url) as session:
            return calendar_import.import_calendars(
                session=session, data=data, first_day=REPORT_DAY, days=14, closed_days=US_HOLIDAYS
            )

    first, second = run(), run()

    assert (first.providers_created, first.providers_updated, first.blocked_periods) == (2, 0, 1)
    # Okafor: 10 weekdays × 6 slots, minus Monday 8 March; Lindqvist: 4 afternoons × 6, + 1.
    assert first.slots_created == 10 * 6 - 6 + 4 * 6 + 1
    assert first.skipped == (
        "availability.csv:3: 2027-03-13 is not a business day of the site",
        "availability.csv:5: provider NPI 2999999999 is not in the directory",
    )
    assert (second.providers_created, second.providers_updated, second.slots_created) == (0, 2, 0)
    with session_scope(clinic.url) as session:
        okafor = session.exec(select(Provider).where(Provider.npi == "2000000001")).one()
        lindqvist = session.exec(select(Provider).where(Provider.npi == "2000000002")).one()
        assert okafor.covering_provider_id == lindqvist.id
        assert lindqvist.slot_minutes == 20
        imported = session.exec(select(Slot).where(Slot.source == "import")).all()
    assert [s.start.astimezone(NY) for s in imported] == [datetime(2027, 3, 12, 9, tzinfo=NY)]
