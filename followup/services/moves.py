"""Moving a booked visit: the one path every edge takes (a corrected report, a scheduler's
`appointments reschedule`, a patient's R, a provider's blocked time, a closed site day, busy
time in an imported calendar).

A move books the first fitting slot through the fallback chain (the provider asked for first,
then their covering provider, then the practice), cancels the old visit and its unsent texts,
texts the patient the new time with the new visit's reminders, and offers the freed slot to the
waitlist by text, all in the caller's transaction. When nothing fits the visit stays booked and
the caller's policy says who acts on it, so no move ends silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from sqlmodel import Session

from followup.core.scheduling import BookingWindow
from followup.errors import BookingError
from followup.services import visits
from followup.settings import Settings
from models import booking, calendar_queries, ehr_outbox, queries
from models import messaging_queries as mq
from models.ehr_outbox import VisitChange
from models.tables import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    ImagingStudy,
    Patient,
    WaitlistOffer,
)

# Worklist kinds of a visit that could not be moved.
KEPT_VISIT_TASK = "reschedule"  # the patient keeps the visit; a scheduler moves it by hand
CONFLICT_TASK = "visit_conflict"  # the visit's time is gone; a scheduler calls the patient


class NothingFits(StrEnum):
    """What a move does when no slot fits: the visit always stays booked; who acts on it."""

    # The visit stays where it is (in the new window's tier, when one was given) and a
    # scheduler's task says to move it by hand: a correction, a scheduler's reschedule.
    KEEP = "keep"
    # The visit cannot happen as booked (its provider blocked the time): a scheduler's task
    # to call the patient and move or cancel it.
    ESCALATE = "escalate"
    # The patient asked to move: no task here; the caller answers the patient's text with a
    # task to offer them other days, which carries that text.
    OFFER = "offer"


@dataclass(frozen=True, slots=True)
class Move:
    previous: Appointment
    appointment: Appointment | None  # the new visit; None: not moved
    offer: WaitlistOffer | None  # the freed old slot, offered to a waitlisted patient
    task_id: int | None  # the worklist item opened when not moved (KEEP, ESCALATE)
    reason: str  # how it was booked; else why nothing fit (and, with a task, what to do)
    texts: visits.Texts


def move_appointment(
    *,
    session: Session,
    appointment_id: int,
    reason: str,
    policy: NothingFits,
    settings: Settings,
    now: datetime,
    actor: str,
    after: datetime,
    window: BookingWindow | None = None,
    first_provider_id: int | None = None,
    answering: visits.Answering | None = None,
    held_choice: int | None = None,
    chosen_slot: int | None = None,
) -> Move:
    """Move the visit to the first fitting slot starting after `after`, in `window` (default:
    the window it was booked in), trying `first_provider_id` first (default: the study's
    ordering provider, else the visit's own); or, with `held_choice`, to the slot held for the
    patient under that number after their R; or, with `chosen_slot`, to that free slot (a
    scheduler's pick). Raises BookingError for a visit not active."""
    previous = session.get(Appointment, appointment_id)
    if previous is None:
        raise LookupError(f"appointment {appointment_id} does not exist")
    if previous.status not in ACTIVE_APPOINTMENT_STATUSES:
        raise BookingError(f"appointment {appointment_id} is {previous.status}")
    window = window or _booked_window(previous)
    if window is None:
        why = "it has no booking window on file"
        return _not_moved(session, previous, reason, why, policy, settings, window=None)
    if held_choice is not None or chosen_slot is not None:
        if held_choice is not None:
            new_id = booking.book_held_choice(
                session=session,
                timing=settings.offer_timing,
                appointment_id=appointment_id,
                choice=held_choice,
                now=now,
                actor=actor,
            )
            booked_how = "the patient's choice"
            why = f"no time is held under {held_choice} for the visit any more"
        else:
            assert chosen_slot is not None
            new_id = booking.book_slot(
                session=session,
                slot_id=chosen_slot,
                patient_id=previous.patient_id,
                study_id=previous.study_id,
                window=window,
                actor=actor,
            )
            booked_how = f"slot {chosen_slot}, picked"
            why = f"slot {chosen_slot} is no longer free"
        if new_id is None:
            return _not_moved(session, previous, reason, why, policy, settings, window=window)
        return _moved(
            session,
            previous,
            new_id,
            booked_how,
            reason,
            settings,
            now,
            actor,
            window=window,
            answering=answering,
        )
    study = session.get(ImagingStudy, previous.study_id) if previous.study_id else None
    patient = session.get_one(Patient, previous.patient_id)
    result = booking.book_with_fallback(
        session=session,
        patient_id=previous.patient_id,
        study_id=previous.study_id,
        ordering_provider_id=first_provider_id
        or (study.ordering_provider_id if study else None)
        or previous.provider_id,
        window=window.starting_after(after),
        closed_days=calendar_queries.site_closed_days(
            session=session, settings=settings, years=range(after.year, window.latest.year + 1)
        ),
        preferences=booking.patient_preferences(patient),
        actor=actor,
    )
    if result.booked is None:
        why = result.reason or f"the {window.tier} window has passed"
        return _not_moved(session, previous, reason, why, policy, settings, window=window)
    return _moved(
        session,
        previous,
        result.booked.appointment_id,
        result.reason,
        reason,
        settings,
        now,
        actor,
        window=window,
        answering=answering,
    )


def _moved(
    session: Session,
    previous: Appointment,
    new_id: int,
    booked_how: str,
    reason: str,
    settings: Settings,
    now: datetime,
    actor: str,
    *,
    window: BookingWindow,
    answering: visits.Answering | None,
) -> Move:
    """The new visit is booked: link and cancel the old one, release the patient's other held
    times, tell the patient and the EHR, and offer the freed slots to the waitlist."""
    assert previous.id is not None
    appointment_id = previous.id
    # Asked before the old visit's texts are cancelled: a patient never told of the old time
    # gets the new one's confirmation, not a notice about a visit they never heard of.
    # A patient answering a text about the visit knows of it.
    told = answering is not None or queries.patient_told_of(
        session=session, appointment_id=appointment_id
    )
    previous.replaced_by_id = new_id
    session.add(previous)
    cancelled = booking.cancel_appointment(
        session=session,
        timing=settings.offer_timing,
        appointment_id=appointment_id,
        reason=f"moved to appointment {new_id}: {reason}",
        now=now,
        actor=actor,
    )
    # After the old slot went to the waitlist: times held for the patient's R and not chosen
    # are free again (and offered on).
    released = booking.release_reschedule_holds(
        session=session,
        timing=settings.offer_timing,
        now=now,
        appointment_id=appointment_id,
        actor=actor,
    )
    texts = visits.plan_visit_texts(
        session=session,
        appointment_id=new_id,
        settings=settings,
        now=now,
        notice="reschedule" if told else "confirmation",
        answering=answering,
    )
    offers = visits.enqueue_offer_texts(
        session=session, offers=[cancelled.offer, *released], settings=settings, now=now
    )
    moved = session.get_one(Appointment, new_id)
    ehr_outbox.record_visit_change(session=session, appointment=moved, change=VisitChange.MOVED)
    queries.audit(
        session=session,
        actor=actor,
        action="appointment.moved",
        entity="appointment",
        entity_id=new_id,
        detail={
            "from_appointment_id": appointment_id,
            "from_tier": previous.tier,
            "tier": window.tier,
            "reason": reason,
            "booking": booked_how,
        },
    )
    return Move(
        previous=previous,
        appointment=moved,
        offer=cancelled.offer,
        task_id=None,
        reason=booked_how,
        texts=visits.Texts(notice=texts.notice, reminders=texts.reminders, offers=offers),
    )


def _booked_window(appointment: Appointment) -> BookingWindow | None:
    if appointment.tier is None or appointment.window_start is None:
        return None
    if appointment.window_end is None:
        return None
    return BookingWindow(appointment.window_start, appointment.window_end, appointment.tier)


def _not_moved(
    session: Session,
    previous: Appointment,
    reason: str,
    why: str,
    policy: NothingFits,
    settings: Settings,
    *,
    window: BookingWindow | None,
) -> Move:
    """The visit stays booked; under KEEP and ESCALATE a scheduler's task says what to do."""
    assert previous.id is not None
    when = f"{previous.start.astimezone(settings.site_zone):%a %Y-%m-%d %H:%M %Z}"
    if window is not None and window.tier != previous.tier:
        # A visit kept through a tier change belongs to the new decision: a later move
        # searches the window it is due in now, not the one it was booked in.
        previous.tier = window.tier
        previous.window_start = window.earliest
        previous.window_end = window.latest
        session.add(previous)
    task_id = None
    if policy == NothingFits.KEEP:
        summary = (
            f"{reason}: appointment {previous.id} could not be moved ({why}); the patient "
            f"keeps the visit of {when}: move it by hand"
        )
        task_id = _task(session, previous, KEPT_VISIT_TASK, summary)
    elif policy == NothingFits.ESCALATE:
        summary = (
            f"{reason}: appointment {previous.id} of {when} could not be moved ({why}): call "
            "the patient to move or cancel it"
        )
        task_id = _task(session, previous, CONFLICT_TASK, summary)
    else:
        summary = why
    return Move(
        previous=previous,
        appointment=None,
        offer=None,
        task_id=task_id,
        reason=summary,
        texts=visits.Texts(),
    )


def _task(session: Session, appointment: Appointment, kind: str, reason: str) -> int | None:
    task = mq.open_task(
        session=session,
        kind=kind,
        reason=reason,
        target=booking.SCHEDULER_QUEUE,
        study_id=appointment.study_id,
    )
    return task.id


# --- a provider's blocked time -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    slots_blocked: int
    moves: tuple[Move, ...]  # one per visit that was booked in the blocked time


def block_provider_time(
    *,
    session: Session,
    provider_id: int,
    start: datetime,
    end: datetime,
    reason: str,
    settings: Settings,
    now: datetime,
    actor: str,
) -> Block:
    """Block the provider's time and move every visit booked in it: the same provider's next
    fitting slot in the visit's window, else the fallback chain, with the patient's notice;
    a visit nothing fits goes on the worklist with what to do."""
    change = calendar_queries.add_blocked_period(
        session=session, provider_id=provider_id, start=start, end=end, reason=reason, actor=actor
    )
    why = f"provider {provider_id} blocked {start.isoformat()} to {end.isoformat()}"
    if reason:
        why += f" ({reason})"
    moves = move_visits_out(
        session=session,
        appointment_ids=change.conflicts,
        why=why,
        settings=settings,
        now=now,
        actor=actor,
        first_provider_id=provider_id,
    )
    return Block(slots_blocked=change.blocked_slots, moves=moves)


def close_site_day(
    *,
    session: Session,
    day: date,
    reason: str,
    settings: Settings,
    now: datetime,
    actor: str,
) -> Block | None:
    """Close the whole site for a local day and move every visit booked that day, as a
    provider block does (the ordering provider first, then the fallback chain); None when the
    day was already closed."""
    change = calendar_queries.add_site_closure(
        session=session, day=day, reason=reason, zone=settings.site_zone, actor=actor
    )
    if change is None:
        return None
    why = f"site closed {day.isoformat()}" + (f" ({reason})" if reason else "")
    moves = move_visits_out(
        session=session,
        appointment_ids=change.conflicts,
        why=why,
        settings=settings,
        now=now,
        actor=actor,
    )
    return Block(slots_blocked=change.blocked_slots, moves=moves)


def move_visits_out(
    *,
    session: Session,
    appointment_ids: Iterable[int],
    why: str,
    settings: Settings,
    now: datetime,
    actor: str,
    first_provider_id: int | None = None,
) -> tuple[Move, ...]:
    """Move each visit whose time was taken away (blocked, closed, busy in an imported
    calendar) to the next fitting slot in its window, with the patient's notice; a visit
    nothing fits stays booked and goes on the worklist with what to do."""
    return tuple(
        move_appointment(
            session=session,
            appointment_id=appointment_id,
            reason=why,
            policy=NothingFits.ESCALATE,
            settings=settings,
            now=now,
            actor=actor,
            after=now,
            first_provider_id=first_provider_id,
        )
        for appointment_id in appointment_ids
    )
