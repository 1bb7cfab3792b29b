"""Freed slots offered to waitlisted patients: order, acceptance, decline, expiry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import select

from followup.core.scheduling import BookingWindow, DayPart, Preferences
from models import booking
from models.db import session_scope
from models.tables import Appointment, Escalation, Slot, WaitlistEntry, WaitlistOffer
from tests.booking.conftest import NY, OFFER_TIMING, ROUTINE, Clinic

NOW = datetime(2027, 3, 2, 9, tzinfo=NY)
URGENT = BookingWindow(datetime(2027, 3, 8, tzinfo=NY), datetime(2027, 3, 11, tzinfo=NY), "urgent")


@dataclass
class Freed:
    """A doctor whose only slot in the window was booked and is now cancelled."""

    doctor: int
    slot_id: int
    appointment_id: int


def _full_doctor(clinic: Clinic, practice: str = "Riverside") -> Freed:
    doctor = clinic.provider(practice=practice)
    clinic.lay_slots(doctor)
    with session_scope(clinic.url) as session:
        slots = session.exec(
            select(Slot).where(
                Slot.provider_id == doctor, Slot.start != datetime(2027, 3, 9, 14, tzinfo=NY)
            )
        ).all()
        for slot in slots:
            slot.status = "blocked"
            session.add(slot)
    taken = clinic.book(clinic.patient(), doctor).booked
    assert taken is not None
    return Freed(doctor=doctor, slot_id=taken.slot_id, appointment_id=taken.appointment_id)


def _wait(
    clinic: Clinic,
    provider: int,
    *,
    window: BookingWindow = ROUTINE,
    since: datetime = NOW,
    preferences: Preferences | None = None,
    timezone: str | None = NY.key,
) -> int:
    patient = clinic.patient(preferences, timezone=timezone)
    study, _ = clinic.study(patient, provider)
    with session_scope(clinic.url) as session:
        entry = booking.add_to_waitlist(
            session=session,
            patient_id=patient,
            study_id=study,
            provider_id=provider,
            window=window,
            reason="no slot",
        )
        entry.created_at = since
        session.add(entry)
        session.add(Escalation(study_id=study, kind="unbookable", reason="no slot", target="queue"))
        assert entry.id is not None
        return entry.id


def _cancel(clinic: Clinic, freed: Freed, now: datetime = NOW) -> WaitlistOffer | None:
    with session_scope(clinic.url) as session:
        return booking.cancel_appointment(
            session=session,
            timing=OFFER_TIMING,
            appointment_id=freed.appointment_id,
            reason="cancelled",
            now=now,
        ).offer


def _entry(clinic: Clinic, entry_id: int) -> WaitlistEntry:
    with session_scope(clinic.url) as session:
        return session.get_one(WaitlistEntry, entry_id)


def _slot_status(clinic: Clinic, slot_id: int) -> str:
    with session_scope(clinic.url) as session:
        return session.get_one(Slot, slot_id).status


def test_freed_slot_goes_to_the_urgent_patient_first_then_the_longest_waiting(
    clinic: Clinic,
) -> None:
    freed = _full_doctor(clinic)
    routine_old = _wait(clinic, freed.doctor, since=NOW - timedelta(days=3))
    urgent_new = _wait(clinic, freed.doctor, window=URGENT, since=NOW - timedelta(days=1))
    urgent_old = _wait(clinic, freed.doctor, window=URGENT, since=NOW - timedelta(days=2))

    offer = _cancel(clinic, freed)

    assert offer is not None
    assert (offer.entry_id, offer.slot_id, offer.status) == (urgent_old, freed.slot_id, "pending")
    assert offer.expires_at == NOW + OFFER_TIMING.ttl
    assert _entry(clinic, urgent_old).status == "offered"
    assert {_entry(clinic, e).status for e in (routine_old, urgent_new)} == {"waiting"}
    assert _slot_status(clinic, freed.slot_id) == "held"
    # A held slot is not free: an ordinary booking cannot take it meanwhile.
    assert clinic.book(clinic.patient(), freed.doctor).booked is None


def test_offers_skip_other_practices_outside_windows_and_unsuited_preferences(
    clinic: Clinic,
) -> None:
    freed = _full_doctor(clinic)  # the slot is Tuesday 9 March 14:00
    other_practice = clinic.provider(practice="Harbor")
    _wait(clinic, other_practice, since=NOW - timedelta(days=9))
    _wait(
        clinic,
        freed.doctor,
        since=NOW - timedelta(days=8),
        window=URGENT.starting_after(datetime(2027, 3, 9, 15, tzinfo=NY)),
    )
    _wait(
        clinic,
        freed.doctor,
        since=NOW - timedelta(days=7),
        preferences=Preferences(day_part=DayPart.MORNING),
    )
    colleague = clinic.provider()  # same practice as the freed slot's doctor
    suited = _wait(clinic, colleague, since=NOW - timedelta(days=1))

    offer = _cancel(clinic, freed)

    assert offer is not None and offer.entry_id == suited


def test_the_time_to_answer_runs_from_when_the_offer_may_be_texted(clinic: Clinic) -> None:
    freed = _full_doctor(clinic)
    # No known zone: texts go only inside 08:00-20:00 everywhere in the US, which in March
    # opens at 13:00 in New York (08:00 in Honolulu).
    entry = _wait(clinic, freed.doctor, timezone=None)

    offer = _cancel(clinic, freed)

    assert offer is not None and offer.entry_id == entry
    assert offer.offered_at == NOW
    assert offer.expires_at == datetime(2027, 3, 2, 13, tzinfo=NY) + OFFER_TIMING.ttl


def test_a_patient_who_cannot_be_texted_in_time_is_passed_over(clinic: Clinic) -> None:
    freed = _full_doctor(clinic)  # the slot is Tuesday 9 March 14:00, so offers end by 02:00
    asleep = _wait(clinic, freed.doctor, window=URGENT, since=NOW - timedelta(days=2))
    awake = _wait(clinic, freed.doctor, timezone="Pacific/Honolulu")
    evening = datetime(2027, 3, 8, 21, tzinfo=NY)  # 16:00 in Honolulu

    offer = _cancel(clinic, freed, now=evening)

    assert offer is not None and offer.entry_id == awake
    assert offer.expires_at == evening + OFFER_TIMING.ttl
    assert _entry(clinic, asleep).status == "waiting"


def test_accepting_books_the_held_slot_and_closes_the_escalation(clinic: Clinic) -> None:
    freed = _full_doctor(clinic)
    entry_id = _wait(clinic, freed.doctor)
    offer = _cancel(clinic, freed)
    assert offer is not None and offer.id is not None

    with session_scope(clinic.url) as session:
        appointment = booking.accept_offer(
            session=session, timing=OFFER_TIMING, offer_id=offer.id, now=NOW + timedelta(hours=1)
        ).appointment
        again = booking.accept_offer(
            session=session, timing=OFFER_TIMING, offer_id=offer.id, now=NOW
        )
    assert appointment is not None and again == booking.Acceptance(None, None)
    entry = _entry(clinic, entry_id)
    assert (entry.status, entry.appointment_id) == ("booked", appointment.id)
    assert (appointment.slot_id, appointment.study_id) == (freed.slot_id, entry.study_id)
    assert _slot_status(clinic, freed.slot_id) == "booked"
    with session_scope(clinic.url) as session:
        escalation = session.exec(
            select(Escalation).where(Escalation.study_id == entry.study_id)
        ).one()
        accepted = session.get_one(WaitlistOffer, offer.id)
    assert (escalation.status, escalation.acknowledged_by) == ("acknowledged", "waitlist")
    assert (accepted.status, accepted.appointment_id) == ("accepted", appointment.id)


def test_a_late_acceptance_expires_the_offer_and_the_slot_moves_on(clinic: Clinic) -> None:
    freed = _full_doctor(clinic)
    first = _wait(clinic, freed.doctor, since=NOW - timedelta(days=2))
    second = _wait(clinic, freed.doctor, since=NOW - timedelta(days=1))
    offer = _cancel(clinic, freed)
    assert offer is not None and offer.id is not None and offer.entry_id == first

    with session_scope(clinic.url) as session:
        late = booking.accept_offer(
            session=session,
            timing=OFFER_TIMING,
            offer_id=offer.id,
            now=offer.expires_at + timedelta(seconds=1),
        )
        next_offer = session.exec(
            select(WaitlistOffer).where(WaitlistOffer.status == "pending")
        ).one()
    assert late.appointment is None and late.next_offer is not None
    assert late.next_offer.id == next_offer.id and next_offer.entry_id == second
    assert _entry(clinic, first).status == "waiting"


def test_decline_then_expiry_walks_the_list_and_finally_frees_the_slot(clinic: Clinic) -> None:
    freed = _full_doctor(clinic)
    first = _wait(clinic, freed.doctor, since=NOW - timedelta(days=2))
    second = _wait(clinic, freed.doctor, since=NOW - timedelta(days=1))
    offer = _cancel(clinic, freed)
    assert offer is not None and offer.id is not None

    with session_scope(clinic.url) as session:
        after_decline = booking.decline_offer(
            session=session, timing=OFFER_TIMING, offer_id=offer.id, now=NOW
        )
    assert after_decline is not None and after_decline.entry_id == second
    with session_scope(clinic.url) as session:
        assert (
            booking.expire_offers(
                session=session, timing=OFFER_TIMING, now=NOW + timedelta(hours=1)
            )
            == []
        )
    with session_scope(clinic.url) as session:
        assert (
            booking.expire_offers(
                session=session, timing=OFFER_TIMING, now=after_decline.expires_at
            )
            == []
        )
        statuses = sorted(o.status for o in session.exec(select(WaitlistOffer)).all())

    assert statuses == ["declined", "expired"]
    assert {_entry(clinic, e).status for e in (first, second)} == {"waiting"}
    assert _slot_status(clinic, freed.slot_id) == "free"


def test_entries_lapse_when_their_window_closes_and_late_slots_are_not_offered(
    clinic: Clinic,
) -> None:
    freed = _full_doctor(clinic)
    entry = _wait(clinic, freed.doctor)

    # Nine hours before the visit there is no time left to offer it (12 hours' notice).
    assert _cancel(clinic, freed, now=datetime(2027, 3, 9, 5, tzinfo=NY)) is None
    with session_scope(clinic.url) as session:
        booking.expire_offers(session=session, timing=OFFER_TIMING, now=ROUTINE.latest)
    assert _entry(clinic, entry).status == "lapsed"
    assert _slot_status(clinic, freed.slot_id) == "free"


def test_the_same_study_is_waitlisted_once(clinic: Clinic) -> None:
    doctor = clinic.provider()
    patient = clinic.patient()
    study, _ = clinic.study(patient, doctor)
    with session_scope(clinic.url) as session:
        ids = {
            booking.add_to_waitlist(
                session=session,
                patient_id=patient,
                study_id=study,
                provider_id=doctor,
                window=ROUTINE,
                reason="no slot",
            ).id
            for _ in range(2)
        }
        assert len(ids) == 1
        assert session.exec(select(Appointment)).all() == []


def test_withdrawing_from_the_waitlist_closes_its_unbookable_escalation(clinic: Clinic) -> None:
    freed = _full_doctor(clinic)
    entry_id = _wait(clinic, freed.doctor)
    study_id = _entry(clinic, entry_id).study_id
    assert study_id is not None

    with session_scope(clinic.url) as session:
        booking.withdraw_from_waitlist(
            session=session,
            timing=OFFER_TIMING,
            study_id=study_id,
            reason="result cancelled",
            now=NOW,
        )

    with session_scope(clinic.url) as session:
        escalation = session.exec(select(Escalation).where(Escalation.study_id == study_id)).one()
    assert (escalation.status, escalation.acknowledged_by, escalation.acknowledged_at) == (
        "acknowledged",
        "waitlist withdrawn",
        NOW,
    )
    assert _entry(clinic, entry_id).status == "cancelled"
