"""What patients are told when a visit is booked, moved or cancelled, or a freed slot is
offered to them: the booking use cases every edge shares.

The CLI, the SMS reply handler, the dispatch-reminders flow and visit moves
(followup.services.moves) call these instead of the booking operations in models.booking, so
a change and the texts about it are written in the caller's transaction and commit together
or not at all. The booking operation cancels the old
visit's unsent texts; the new visit's notice and reminders, and the text of every waitlist
offer the change made, are planned here in the patient's language and zone. Quiet hours, caps
and opt-outs are checked again when each text is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

from sqlmodel import Session

from followup.core.messaging.plan import (
    PlannedSms,
    VisitDetails,
    plan_booking_messages,
    plan_offer_message,
    plan_reschedule_choices,
    plan_visit_notice,
)
from followup.core.messaging.policy import REPLY_KEY_PREFIX, next_allowed_send_time
from followup.settings import Settings
from models import booking, queries
from models import messaging_queries as mq
from models.tables import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    OutboundMessage,
    Patient,
    Provider,
    RescheduleHold,
    Slot,
    WaitlistEntry,
    WaitlistOffer,
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Answering:
    """The patient's text a notice answers: the notice goes at once (any hour, outside the
    caps, like every answer) to the number that wrote."""

    message_sid: str
    phone: str


@dataclass(frozen=True, slots=True)
class Texts:
    """Ids of the outbox rows a use case stored."""

    notice: int | None = None  # confirmation, reschedule or cancellation notice
    reminders: tuple[int, ...] = ()
    offers: tuple[int, ...] = ()  # waitlist offers of a slot the change freed


@dataclass(frozen=True, slots=True)
class Changed(Generic[R]):
    result: R  # what the booking operation returned
    texts: Texts


def plan_visit_texts(
    *,
    session: Session,
    appointment_id: int,
    settings: Settings,
    now: datetime,
    notice: str = "confirmation",
    answering: Answering | None = None,
) -> Texts:
    """Store the visit's notice and its reminders (idempotent per appointment and kind).

    The notice is keyed with the visit like the reminders, or, when it answers the patient's
    text, with that text's sid.
    """
    appointment, patient, provider = _visit(session, appointment_id)
    zone = _zone(patient)
    if not patient.phone_e164 and answering is None:
        # No number to text (none given, or none that parsed): a person must tell the
        # patient, so the visit goes on the worklist instead of texts that cannot be sent.
        mq.open_task(
            session=session,
            kind=NO_PHONE_TASK,
            reason=(
                f"patient {appointment.patient_id} has no mobile number to text (none given, or "
                f"none that parsed) and appointment {appointment.id} is booked for "
                f"{appointment.start.astimezone(settings.site_zone):%a %Y-%m-%d %H:%M %Z}: "
                "call the patient."
            ),
            target=SCHEDULER_QUEUE,
            study_id=appointment.study_id,
        )
        return Texts()
    visit = _details(appointment.start, provider, settings)
    planned = plan_booking_messages(
        visit,
        language=patient.language,
        zone=zone,
        site_zone=settings.site_zone,
        now=now,
        reminder_days=tuple(settings.reminder_days_before),
        templates_dir=settings.templates_dir,
        notice=None if answering else notice,
    )
    rows = queries.visit_message_rows(
        planned,
        appointment_id=appointment_id,
        patient_id=appointment.patient_id,
        to_phone=patient.phone_e164,
    )
    if answering is not None:
        answer = plan_visit_notice(
            visit,
            notice,
            language=patient.language,
            zone=zone,
            site_zone=settings.site_zone,
            send_at=now,
            templates_dir=settings.templates_dir,
        )
        rows.insert(
            0,
            queries.outbox_row(
                answer,
                key=f"{REPLY_KEY_PREFIX}{answering.message_sid}:{notice}",
                patient_id=appointment.patient_id,
                appointment_id=appointment_id,
                to_phone=answering.phone,
            ),
        )
    stored = [m.id for m in queries.enqueue_messages(session=session, messages=rows) if m.id]
    # The notice comes first when there is one: the caps may leave out a planned one.
    if answering is None and all(sms.kind != notice for sms in planned):
        return Texts(reminders=tuple(stored))
    return Texts(notice=stored[0], reminders=tuple(stored[1:]))


def acknowledge_confirmation(
    *,
    session: Session,
    appointment_id: int,
    settings: Settings,
    now: datetime,
    answering: Answering,
) -> int | None:
    """The answer to C: the visit, its time and doctor, confirmed; due now to the number that
    wrote (once per inbound text)."""
    appointment, patient, provider = _visit(session, appointment_id)
    planned = plan_visit_notice(
        _details(appointment.start, provider, settings),
        "visit_confirmed",
        language=patient.language,
        zone=_zone(patient),
        site_zone=settings.site_zone,
        send_at=now,
        templates_dir=settings.templates_dir,
    )
    stored = _enqueue_answer(session, planned, answering, appointment, "visit_confirmed")
    return stored.id


def cancel_visit(
    *,
    session: Session,
    appointment_id: int,
    reason: str,
    settings: Settings,
    now: datetime,
    actor: str,
) -> Changed[booking.CancelResult]:
    """Cancel the visit (its unsent texts too), tell the patient, and offer the freed slot to
    the waitlist by text. Cancelling a cancelled or past visit tells nobody anything."""
    before = session.get(Appointment, appointment_id)
    was_active = before is not None and before.status in ACTIVE_APPOINTMENT_STATUSES
    # Never told of the visit (its confirmation unsent): its cancellation is not news to them.
    told = queries.patient_told_of(session=session, appointment_id=appointment_id)
    result = booking.cancel_appointment(
        session=session,
        timing=settings.offer_timing,
        appointment_id=appointment_id,
        reason=reason,
        now=now,
        actor=actor,
    )
    notice = None
    if was_active and told and result.appointment.start > now:
        _, patient, provider = _visit(session, appointment_id)
        planned = plan_visit_notice(
            _details(result.appointment.start, provider, settings),
            "cancellation",
            language=patient.language,
            zone=_zone(patient),
            site_zone=settings.site_zone,
            send_at=next_allowed_send_time(now, _zone(patient)),
            templates_dir=settings.templates_dir,
        )
        [stored] = queries.enqueue_messages(
            session=session,
            messages=queries.visit_message_rows(
                [planned],
                appointment_id=appointment_id,
                patient_id=result.appointment.patient_id,
                to_phone=patient.phone_e164,
            ),
        )
        notice = stored.id
    offers = enqueue_offer_texts(session=session, offers=[result.offer], settings=settings, now=now)
    return Changed(result, Texts(notice=notice, offers=offers))


def offer_reschedule_choices(
    *,
    session: Session,
    appointment_id: int,
    settings: Settings,
    now: datetime,
    actor: str,
    answering: Answering,
) -> Changed[list[RescheduleHold]]:
    """R: hold up to `reschedule_choices` slots on other days for the patient, for
    `reschedule_hold_minutes`, and text them as numbered choices (the answer to their R, sent
    at once). No holds and no text when nothing fits: the caller opens a scheduler task.

    The one call that searches and holds: a visit-move service can stand behind it."""
    holds = booking.hold_reschedule_choices(
        session=session,
        appointment_id=appointment_id,
        settings=settings,
        now=now,
        inbound_sid=answering.message_sid,
        count=settings.reschedule_choices,
        hold_for=timedelta(minutes=settings.reschedule_hold_minutes),
        actor=actor,
    )
    if not holds:
        return Changed(holds, Texts())
    appointment, patient, provider = _visit(session, appointment_id)
    planned = plan_reschedule_choices(
        _details(appointment.start, provider, settings),
        choices=[session.get_one(Slot, hold.slot_id).start for hold in holds],
        expires_at=holds[0].expires_at,
        language=patient.language,
        zone=_zone(patient),
        site_zone=settings.site_zone,
        send_at=now,
        templates_dir=settings.templates_dir,
    )
    stored = _enqueue_answer(session, planned, answering, appointment, "reschedule_choices")
    return Changed(holds, Texts(notice=stored.id))


def release_lapsed_reschedule_holds(
    *, session: Session, settings: Settings, now: datetime, actor: str
) -> Changed[None]:
    """Give back every held slot nobody chose in time (each free again, offered to the
    waitlist by text); the patients keep the visits they have."""
    offers = booking.release_reschedule_holds(
        session=session, timing=settings.offer_timing, now=now, actor=actor
    )
    return Changed(
        None,
        Texts(
            offers=enqueue_offer_texts(session=session, offers=offers, settings=settings, now=now)
        ),
    )


def accept_waitlist_offer(
    *,
    session: Session,
    offer_id: int,
    settings: Settings,
    now: datetime,
    actor: str,
    answering: Answering | None = None,
) -> Changed[booking.Acceptance]:
    """Book the offered slot and confirm it with the visit's reminders; an answer that came too
    late books nothing and the slot's offer to the next patient goes out instead."""
    acceptance = booking.accept_offer(
        session=session, timing=settings.offer_timing, offer_id=offer_id, now=now, actor=actor
    )
    texts = Texts()
    if acceptance.appointment is not None and acceptance.appointment.id is not None:
        texts = plan_visit_texts(
            session=session,
            appointment_id=acceptance.appointment.id,
            settings=settings,
            now=now,
            answering=answering,
        )
    offers = enqueue_offer_texts(
        session=session, offers=[acceptance.next_offer], settings=settings, now=now
    )
    return Changed(acceptance, replace(texts, offers=offers))


def decline_waitlist_offer(
    *, session: Session, offer_id: int, settings: Settings, now: datetime, actor: str
) -> Changed[WaitlistOffer | None]:
    """The patient said no: they wait on, and the slot goes to the next patient, by text."""
    next_offer = booking.decline_offer(
        session=session, timing=settings.offer_timing, offer_id=offer_id, now=now, actor=actor
    )
    return Changed(
        next_offer,
        Texts(
            offers=enqueue_offer_texts(
                session=session, offers=[next_offer], settings=settings, now=now
            )
        ),
    )


def expire_waitlist_offers(
    *, session: Session, settings: Settings, now: datetime, actor: str
) -> Changed[list[WaitlistOffer]]:
    """Expire unanswered offers (their unsent texts too) and text each slot's next offer.

    Any other open offer still without its text gets it too: a path that frees slots through
    models.booking directly leaves the text to this run, a minute later at most.
    """
    offers = booking.expire_offers(
        session=session, timing=settings.offer_timing, now=now, actor=actor
    )
    unsent = mq.offers_without_text(session=session, now=now)
    return Changed(
        offers,
        Texts(
            offers=enqueue_offer_texts(session=session, offers=unsent, settings=settings, now=now)
        ),
    )


def enqueue_offer_texts(
    *,
    session: Session,
    offers: Iterable[WaitlistOffer | None],
    settings: Settings,
    now: datetime,
) -> tuple[int, ...]:
    """Store one text per offer (None: no offer was made), keyed by the offer: the slot's time
    and the answer's deadline, nothing about why the patient waits."""
    rows = []
    for offer in offers:
        if offer is None or offer.id is None:
            continue
        entry = session.get_one(WaitlistEntry, offer.entry_id)
        patient = session.get_one(Patient, entry.patient_id)
        slot = session.get_one(Slot, offer.slot_id)
        provider = session.get_one(Provider, slot.provider_id)
        planned = plan_offer_message(
            _details(slot.start, provider, settings),
            expires_at=offer.expires_at,
            language=patient.language,
            zone=_zone(patient),
            site_zone=settings.site_zone,
            now=now,
            templates_dir=settings.templates_dir,
        )
        rows.append(
            queries.outbox_row(
                planned,
                key=mq.offer_message_key(offer.id),
                patient_id=entry.patient_id,
                appointment_id=None,
                to_phone=patient.phone_e164,
            )
        )
    stored = queries.enqueue_messages(session=session, messages=rows)
    return tuple(message.id for message in stored if message.id is not None)


def _visit(session: Session, appointment_id: int) -> tuple[Appointment, Patient, Provider]:
    return queries.appointment_parties(session=session, appointment_id=appointment_id)


def _zone(patient: Patient) -> ZoneInfo | None:
    """The patient's zone; None (unknown) means the strict all-US quiet-hours window."""
    return ZoneInfo(patient.timezone) if patient.timezone else None


def _details(start: datetime, provider: Provider, settings: Settings) -> VisitDetails:
    return VisitDetails(
        start=start,
        provider_name=provider.display_name,
        clinic_name=settings.site_name,
        clinic_phone=settings.clinic_phone,
    )


# --- opt-out and opt-in ------------------------------------------------------------------------

OPTED_OUT_VISIT_TASK = "patient_opted_out"  # a scheduler calls about a visit no text will reach
NO_PHONE_TASK = "no_phone"  # a scheduler calls: the patient has no number to text
SCHEDULER_QUEUE = "scheduler-queue"
RESTORED_KINDS = ("confirmation", "reschedule", "reminder")


@dataclass(frozen=True, slots=True)
class OptOutEffects:
    cancelled_messages: int
    task_ids: tuple[int, ...]


def stop_texting(*, session: Session, patient_ids: list[int], now: datetime) -> OptOutEffects:
    """After an opt-out (a keyword, free text, or Twilio's 21610): every queued text is
    cancelled, and every visit still ahead becomes a scheduler task, since the patient will
    not hear of it (or of its reminders) by text. One task per visit's study."""
    if not patient_ids:
        return OptOutEffects(cancelled_messages=0, task_ids=())
    cancelled = mq.cancel_scheduled_for_patients(session=session, patient_ids=patient_ids)
    tasks: list[int] = []
    for visit in mq.upcoming_active_appointments(
        session=session, patient_ids=patient_ids, after=now
    ):
        task = mq.open_task(
            session=session,
            kind=OPTED_OUT_VISIT_TASK,
            reason=(
                f"patient {visit.patient_id} opted out of texts with appointment {visit.id} "
                "booked: no confirmation or reminder will be texted, call the patient."
            ),
            target=SCHEDULER_QUEUE,
            study_id=visit.study_id,
        )
        if task.id is not None:
            tasks.append(task.id)
    return OptOutEffects(cancelled_messages=cancelled, task_ids=tuple(tasks))


def resume_texting(*, session: Session, patient_ids: list[int], now: datetime) -> int:
    """After START: the visit texts the opt-out cancelled are scheduled again, for visits still
    ahead (reminders whose time passed stay cancelled); how many."""
    if not patient_ids:
        return 0
    return mq.restore_visit_texts_after_opt_in(
        session=session, patient_ids=patient_ids, kinds=RESTORED_KINDS, now=now
    )


def _enqueue_answer(
    session: Session,
    planned: PlannedSms,
    answering: Answering,
    appointment: Appointment,
    kind: str,
) -> OutboundMessage:
    """Queue the answer to a patient's text, due now to the number that wrote, once per
    inbound text (keyed on its sid)."""
    [stored] = queries.enqueue_messages(
        session=session,
        messages=[
            queries.outbox_row(
                planned,
                key=f"{REPLY_KEY_PREFIX}{answering.message_sid}:{kind}",
                patient_id=appointment.patient_id,
                appointment_id=appointment.id,
                to_phone=answering.phone,
            )
        ],
    )
    return stored
