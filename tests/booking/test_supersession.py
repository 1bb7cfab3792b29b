"""A corrected or cancelled report and the waitlist: the study's entry goes when its decision
no longer wants the visit it waits for, the slots it frees are offered onwards by text, and a
visit kept through a tier change is rescheduled in the new tier's window."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from sqlmodel import col, select

from followup.core.scheduling import BookingWindow
from followup.services import moves, visits
from followup.services.pipeline import BookingOutcome, RecordedStudy, book_follow_up
from followup.settings import Settings, get_settings
from models import booking
from models.db import session_scope
from models.tables import (
    Appointment,
    AuditEvent,
    Escalation,
    OutboundMessage,
    Slot,
    WaitlistEntry,
    WaitlistOffer,
)
from tests.booking.conftest import NY, Clinic
from tests.booking.test_waitlist import NOW, _full_doctor, _wait


def _recorded(
    clinic: Clinic, doctor: int, *, urgency: str = "routine"
) -> tuple[RecordedStudy, int]:
    patient = clinic.patient()
    study, decision = clinic.study(patient, doctor, urgency=urgency)
    recorded = RecordedStudy(
        study_id=study,
        patient_id=patient,
        decision_id=decision,
        ordering_provider_id=doctor,
        urgency=urgency,
        critical=False,
        held=False,
    )
    return recorded, study


def _run(
    clinic: Clinic, recorded: RecordedStudy, settings: Settings, *, now: datetime = NOW
) -> BookingOutcome:
    with session_scope(clinic.url) as session:
        return book_follow_up(session=session, recorded=recorded, settings=settings, now=now)


def _entries(clinic: Clinic, study: int) -> list[tuple[str, str]]:
    with session_scope(clinic.url) as session:
        return [
            (entry.urgency, entry.status)
            for entry in session.exec(
                select(WaitlistEntry)
                .where(WaitlistEntry.study_id == study)
                .order_by(col(WaitlistEntry.id))
            )
        ]


def _offer_texts(clinic: Clinic) -> list[tuple[int, str]]:
    """(patient, status) of every waitlist offer text, oldest first."""
    with session_scope(clinic.url) as session:
        return [
            (message.patient_id, message.status)
            for message in session.exec(
                select(OutboundMessage)
                .where(OutboundMessage.kind == "waitlist_offer")
                .order_by(col(OutboundMessage.id))
            )
        ]


def _actions(clinic: Clinic, action: str) -> list[AuditEvent]:
    with session_scope(clinic.url) as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == action)))


def test_a_cancelled_result_takes_its_study_off_the_waitlist(clinic: Clinic) -> None:
    doctor = clinic.provider()  # no slots at all: the study can only wait
    settings = get_settings(database_url=clinic.url)
    recorded, study = _recorded(clinic, doctor)
    _run(clinic, recorded, settings)
    assert _entries(clinic, study) == [("routine", "waiting")]

    outcome = _run(clinic, replace(recorded, withdrawn=True), settings)
    again = _run(clinic, replace(recorded, withdrawn=True), settings)

    assert (
        outcome == again == BookingOutcome(None, None, "result cancelled: no follow-up to cancel")
    )
    assert _entries(clinic, study) == [("routine", "cancelled")]
    [withdrawn] = _actions(clinic, "waitlist.withdrawn")
    assert withdrawn.detail["reason"] == "the result was cancelled by the RIS"


def test_turning_emergent_withdraws_a_pending_offer_and_the_slot_moves_on_by_text(
    clinic: Clinic,
) -> None:
    freed = _full_doctor(clinic)
    settings = get_settings(database_url=clinic.url)
    recorded, study = _recorded(clinic, freed.doctor)
    _run(clinic, recorded, settings)  # waitlisted: the doctor's one slot is taken
    second = _wait(clinic, freed.doctor)  # made after the study's entry: second in line
    with session_scope(clinic.url) as session:
        cancelled = visits.cancel_visit(
            session=session,
            appointment_id=freed.appointment_id,
            reason="patient called",
            settings=settings,
            now=NOW,
            actor="test",
        )
    first_offer = cancelled.result.offer
    assert first_offer is not None and first_offer.id is not None
    assert _offer_texts(clinic) == [(recorded.patient_id, "scheduled")]

    outcome = _run(clinic, replace(recorded, urgency="emergent"), settings)

    assert outcome.appointment_id is None
    assert _entries(clinic, study) == [("routine", "cancelled")]
    with session_scope(clinic.url) as session:
        offers = list(session.exec(select(WaitlistOffer).order_by(col(WaitlistOffer.id))))
        assert session.get_one(Slot, freed.slot_id).status == "held"
        next_patient = session.get_one(WaitlistEntry, second).patient_id
    assert [(o.status, o.slot_id, o.entry_id) for o in offers] == [
        ("expired", freed.slot_id, first_offer.entry_id),
        ("pending", freed.slot_id, second),
    ]
    # The withdrawn patient's unsent offer is cancelled; the next one is texted the slot.
    assert _offer_texts(clinic) == [
        (recorded.patient_id, "cancelled"),
        (next_patient, "scheduled"),
    ]


def test_a_tier_change_replaces_the_entry_made_for_the_old_window(clinic: Clinic) -> None:
    doctor = clinic.provider()
    settings = get_settings(database_url=clinic.url)
    recorded, study = _recorded(clinic, doctor)
    _run(clinic, recorded, settings)

    _run(clinic, replace(recorded, urgency="urgent"), settings)

    assert _entries(clinic, study) == [("routine", "cancelled"), ("urgent", "waiting")]


def test_a_waitlisted_study_booked_on_a_later_run_leaves_the_waitlist(clinic: Clinic) -> None:
    doctor = clinic.provider()
    settings = get_settings(database_url=clinic.url)
    recorded, study = _recorded(clinic, doctor)
    _run(clinic, recorded, settings)
    clinic.lay_slots(doctor)  # the doctor's calendar arrives

    outcome = _run(clinic, recorded, settings)

    assert outcome.appointment_id is not None
    # Still waiting, it would later be offered a second visit.
    assert _entries(clinic, study) == [("routine", "cancelled")]


def test_a_cancelled_follow_up_offers_its_slot_to_the_waitlist_by_text(clinic: Clinic) -> None:
    doctor = clinic.provider()
    clinic.lay_slots(doctor)
    settings = get_settings(database_url=clinic.url)
    recorded, _ = _recorded(clinic, doctor)
    booked = _run(clinic, recorded, settings)
    assert booked.appointment_id is not None
    with session_scope(clinic.url) as session:
        # Every other slot taken: only the follow-up's own slot can come free.
        for slot in session.exec(select(Slot).where(Slot.status == "free")):
            slot.status = "blocked"
            session.add(slot)
    waiting = clinic.patient()
    waiting_study, _ = clinic.study(waiting, doctor)
    with session_scope(clinic.url) as session:
        booking.add_to_waitlist(
            session=session,
            patient_id=waiting,
            study_id=waiting_study,
            provider_id=doctor,
            window=BookingWindow(NOW, NOW + timedelta(days=21), "routine"),
            reason="no slot",
        )

    _run(clinic, replace(recorded, withdrawn=True), settings)

    assert _offer_texts(clinic) == [(waiting, "scheduled")]


def test_a_visit_kept_through_a_tier_change_is_rescheduled_in_the_new_window(
    clinic: Clinic,
) -> None:
    doctor = clinic.provider()
    clinic.lay_slots(doctor)
    # Routine from the next day on, so an urgent visit also lies in the routine window.
    settings = get_settings(database_url=clinic.url, routine_window_min_days=1)
    recorded, _ = _recorded(clinic, doctor, urgency="urgent")
    booked = _run(clinic, recorded, settings)
    assert booked.appointment_id is not None
    with session_scope(clinic.url) as session:
        urgent = session.get_one(Appointment, booked.appointment_id)
        urgent_end = urgent.window_end
        assert urgent_end is not None
        # Nothing else free until after the urgent window: only the routine one can move it.
        for slot in session.exec(
            select(Slot).where(Slot.status == "free", col(Slot.start) < urgent_end)
        ):
            slot.status = "blocked"
            session.add(slot)

    kept = _run(clinic, replace(recorded, urgency="routine"), settings)
    assert kept.appointment_id == booked.appointment_id
    with session_scope(clinic.url) as session:
        moved = moves.move_appointment(
            session=session,
            appointment_id=booked.appointment_id,
            reason="patient asked",
            policy=moves.NothingFits.KEEP,
            settings=settings,
            now=datetime(2027, 3, 1, 16, tzinfo=NY),
            actor="test",
            after=datetime(2027, 3, 1, 16, tzinfo=NY),
        )
        retiered = session.get_one(Appointment, booked.appointment_id)
        assert retiered.tier == "routine"
        assert moved.appointment is not None
        assert moved.appointment.start >= urgent_end
        assert moved.appointment.tier == "routine"


def test_a_correction_nothing_fits_keeps_the_visit_in_the_new_tier_with_a_task(
    clinic: Clinic,
) -> None:
    doctor = clinic.provider(family_name="Okafor")
    clinic.lay_slots(doctor)
    settings = get_settings(database_url=clinic.url)
    recorded, study = _recorded(clinic, doctor)
    booked = _run(clinic, recorded, settings)
    assert booked.appointment_id is not None
    with session_scope(clinic.url) as session:
        routine = session.get_one(Appointment, booked.appointment_id)
        routine_start = routine.start
        for slot in session.exec(
            select(Slot).where(Slot.status == "free", col(Slot.start) < routine_start)
        ):
            slot.status = "blocked"  # nothing free in the urgent window
            session.add(slot)

    outcome = _run(clinic, replace(recorded, urgency="urgent"), settings)
    again = _run(clinic, replace(recorded, urgency="urgent"), settings)

    assert outcome.appointment_id == booked.appointment_id
    assert again == BookingOutcome(booked.appointment_id, None, "already booked")
    with session_scope(clinic.url) as session:
        kept = session.get_one(Appointment, booked.appointment_id)
        task = session.get_one(Escalation, outcome.escalation_id)
    assert (kept.status, kept.tier, kept.replaced_by_id) == ("booked", "urgent", None)
    assert (task.kind, task.study_id, task.status) == ("reschedule", study, "open")
    assert task.reason == outcome.reason
    assert outcome.reason == (
        f"report corrected to urgent: appointment {booked.appointment_id} could not be moved "
        "(ordering provider Dr. Okafor: no free slot in the urgent window 2027-03-02–2027-03-04); "
        "the patient keeps the "
        f"visit of {routine_start.astimezone(settings.site_zone):%a %Y-%m-%d %H:%M %Z}: move "
        "it by hand"
    )
    assert _entries(clinic, study) == []
