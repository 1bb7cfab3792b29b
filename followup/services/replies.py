"""What a patient's text back means, and what the engine does about it.

The reply is matched to a patient by the number it came from and to a visit by the last
visit text that number got (else the patient's next visit). Every intent in the text is acted
on (`policy.reply_intents`): "stop texting me, I'm getting worse" both suppresses and
escalates. Answers to the patient are outbox rows like any other (keyed "reply:<sid>:<kind>":
any hour, outside the caps), so they are sent exactly once and their delivery is tracked.

A red flag (`red_flags`) is answered at once, in the webhook's own TwiML response, whether the
number is known or not: the call-now / 911 text must not wait for a dispatcher run. For a known
patient the answer is also an outbox row (status queued, never dispatched), so the thread
shows it. The clinician task it opens is re-notified until acknowledged (re-notify-escalations,
like a critical finding), its first notice due at once; every text is shown with its task
(`TwilioEvent.escalation_id`), and a later text on an open task makes the next notice due at
once instead of being swallowed.

An opt-out in the patient's own words ("stop texting me", "ya no quiero mensajes", "wrong
number") is an opt-out like STOP (DOMAIN.md §6: revocation by any reasonable means): the number
is suppressed (source "free_text"), queued texts are cancelled, every visit still ahead becomes
a scheduler task, and the opt-out confirmation is sent once. A text that is also a red flag
still gets the call-now advice in the webhook's response.

Where Twilio's Advanced Opt-Out already answered a keyword (the webhook's `OptOutType`), the
engine records the opt-out or opt-in but does not answer a second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from followup.core.messaging.plan import display_phone
from followup.core.messaging.policy import (
    REPLY_KEY_PREFIX,
    ReplyIntent,
    chosen_number,
    declines_visit,
    is_keyword,
    reply_intents,
)
from followup.core.messaging.red_flags import normalize
from followup.core.messaging.render import RenderedSms, render_sms
from followup.services import moves, visits
from followup.settings import Settings
from models import messaging_queries as mq
from models import queries
from models.tables import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    AppointmentStatus,
    ImagingStudy,
    OutboundMessage,
    OutboundMessageBase,
    OutboundStatus,
    Patient,
    WaitlistOffer,
)

logger = logging.getLogger(__name__)

ACTOR = "sms-replies"

WORSENING_TASK = "patient_worsening"  # urgent: a clinician calls the patient now
RESCHEDULE_TASK = "patient_reschedule"  # a scheduler offers the patient another slot
REPLY_TASK = "patient_reply"  # a scheduler reads a text the engine could not act on
SCHEDULER_QUEUE = "scheduler-queue"
CLINICIAN_QUEUE = "clinician-queue"


@dataclass(frozen=True, slots=True)
class InboundSms:
    message_sid: str
    from_phone: str
    body: str
    # Twilio's OptOutType ("STOP", "START", "HELP") when its Advanced Opt-Out already replied.
    carrier_handled: str | None = None


@dataclass(frozen=True, slots=True)
class InstantAnswer:
    """A text that goes back in the webhook's TwiML response, not through the dispatcher."""

    body: str
    message_id: int | None  # its outbox row, for the status callback; None for unknown numbers


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    intents: tuple[ReplyIntent, ...]
    patient_id: int | None
    appointment_id: int | None
    reply_message_ids: tuple[int, ...]
    task_ids: tuple[int, ...]  # every task the text opened or joined
    instant_answers: tuple[InstantAnswer, ...] = ()


@dataclass
class _Context:
    session: Session
    sms: InboundSms
    settings: Settings
    now: datetime
    patients: list[Patient]
    patient: Patient | None
    appointment: Appointment | None
    event_id: int | None = None  # the stored webhook (TwilioEvent) of this text

    @property
    def patient_ids(self) -> list[int]:
        return [p.id for p in self.patients if p.id is not None]

    @property
    def study_id(self) -> int | None:
        return self.appointment.study_id if self.appointment else None

    @property
    def answering(self) -> visits.Answering:
        return visits.Answering(message_sid=self.sms.message_sid, phone=self.sms.from_phone)

    def about(self) -> str:
        """Which patient and visit a task is about: ids only, the text stays in the event."""
        patient = f"patient {self.patient.id}" if self.patient else "an unknown number"
        visit = f", appointment {self.appointment.id}" if self.appointment else ""
        return f"{patient}{visit} (inbound SMS {self.sms.message_sid})"


def handle_inbound(
    *,
    session: Session,
    sms: InboundSms,
    settings: Settings,
    now: datetime,
    event_id: int | None = None,
) -> ReplyOutcome:
    """Act on one inbound text. The caller stores the raw webhook (`event_id`) and
    deduplicates it."""
    patients = mq.patients_with_phone(session=session, phone=sms.from_phone)
    opted_out = mq.phone_suppressed(session=session, phone=sms.from_phone) or any(
        p.sms_opt_out for p in patients
    )
    intents = tuple(reply_intents(sms.body, opted_out=opted_out))
    ctx = _resolve(session, sms, settings, now, patients)
    ctx.event_id = event_id
    tasks: list[int | None] = []
    replies: list[str] = []
    instant: list[InstantAnswer] = []
    # Suppression first: it cancels queued texts, and must not cancel the answers made below.
    if ReplyIntent.OPT_OUT in intents:
        tasks.extend(_set_opt_out(ctx, opted_out=True))
        if sms.carrier_handled != "STOP":
            replies.append("opt_out_confirmation")
    if ReplyIntent.OPT_IN in intents:
        _set_opt_out(ctx, opted_out=False)
        if sms.carrier_handled != "START":
            replies.append("opt_in_confirmation")
    if ReplyIntent.WORSENING in intents:
        tasks.append(_worsening(ctx))
        instant.append(_answer_at_once(ctx, "urgent_advice"))
    if ReplyIntent.HELP in intents and sms.carrier_handled != "HELP":
        replies.append("help")
    # Enqueued before the visit answers below: the keyword answers (opt-out, HELP) go first.
    reply_ids = _enqueue_replies(ctx, replies)
    if ReplyIntent.CONFIRM in intents:
        tasks.append(_confirm(ctx, reply_ids))
    if ReplyIntent.RESCHEDULE in intents:
        tasks.append(_reschedule(ctx, reply_ids))
    if ReplyIntent.DECLINE in intents:
        tasks.append(_decline(ctx))
    if ReplyIntent.CHOICE in intents:
        tasks.append(_choose(ctx, reply_ids))
    if ReplyIntent.OTHER in intents:
        tasks.append(_task(ctx, REPLY_TASK, "replied with text the engine cannot act on: read it"))
    queries.audit(
        session=session,
        actor=ACTOR,
        action="sms.reply_received",
        entity="patient",
        entity_id=ctx.patient.id if ctx.patient else None,
        detail={"intents": list(intents), "message_sid": sms.message_sid},
    )
    logger.info("inbound SMS %s: intents %s", sms.message_sid, ",".join(intents))
    return ReplyOutcome(
        intents=intents,
        patient_id=ctx.patient.id if ctx.patient else None,
        appointment_id=ctx.appointment.id if ctx.appointment else None,
        reply_message_ids=tuple(reply_ids),
        task_ids=tuple(task for task in tasks if task is not None),
        instant_answers=tuple(instant),
    )


def repeated_answers(
    *, session: Session, sms: InboundSms, settings: Settings
) -> tuple[InstantAnswer, ...]:
    """What to answer Twilio repeating the webhook of a text already acted on: the red flag's
    advice again (Twilio repeats when our first answer did not reach it, and this text must
    not go unanswered); nothing else is done a second time."""
    event = mq.inbound_event(session=session, sid=sms.message_sid)
    if event is None or ReplyIntent.WORSENING not in event.intents:
        return ()
    stored = mq.message_by_key(
        session=session, key=f"{REPLY_KEY_PREFIX}{sms.message_sid}:urgent_advice"
    )
    if stored is not None:
        return (InstantAnswer(body=stored.body, message_id=stored.id),)
    context = {
        "clinic_name": settings.site_name,
        "clinic_phone": display_phone(settings.clinic_phone),
    }
    rendered = render_sms(
        "urgent_advice", language_of(sms.body), context, templates_dir=settings.templates_dir
    )
    return (InstantAnswer(body=rendered.body, message_id=None),)


# Words common in patients' Spanish texts and rare in English ones; "no" and "me" are in both.
_SPANISH_WORDS = frozenset(
    {"estoy", "tengo", "puedo", "siento", "duele", "dolor", "piernas", "peor", "las", "los",
     "mis", "muy", "mucho", "para", "caminar", "orinar", "espalda", "ayuda", "por", "favor",
     "que", "una", "con", "sin", "pero", "ya", "nada", "mas", "hoy", "ayer", "cita", "gracias"}
)  # fmt: skip


def language_of(text: str) -> str:
    """ "es" when a text from an unknown number reads as Spanish, else "en" (the advice to call
    must be understood)."""
    words = normalize(text).split()
    spanish = sum(word in _SPANISH_WORDS for word in words)
    return "es" if spanish and spanish * 4 >= len([w for w in words if w != "|"]) else "en"


def _resolve(
    session: Session, sms: InboundSms, settings: Settings, now: datetime, patients: list[Patient]
) -> _Context:
    """The patient and visit a reply is about: those of the last visit text to that number."""
    last = mq.last_visit_message_to(session=session, phone=sms.from_phone)
    patient = next((p for p in patients if last and p.id == last.patient_id), None)
    patient = patient or (patients[0] if patients else None)
    appointment = (
        session.get(Appointment, last.appointment_id) if last and last.appointment_id else None
    )
    if appointment is None or appointment.status not in ACTIVE_APPOINTMENT_STATUSES:
        appointment = (
            mq.next_active_appointment(
                session=session, patient_ids=[p.id for p in patients if p.id], after=now
            )
            if patients
            else None
        )
    return _Context(session, sms, settings, now, patients, patient, appointment)


def _set_opt_out(ctx: _Context, *, opted_out: bool) -> list[int]:
    """Record the opt-out or opt-in; the scheduler tasks it opened (an opted-out patient's
    visits still ahead: someone calls)."""
    keyword = ctx.sms.carrier_handled or is_keyword(ctx.sms.body)
    source = "keyword" if keyword else "free_text"
    mq.set_suppression(
        session=ctx.session, phone=ctx.sms.from_phone, active=opted_out, source=source, now=ctx.now
    )
    for patient in ctx.patients:
        patient.sms_opt_out = opted_out
        patient.updated_at = ctx.now
        ctx.session.add(patient)
    detail: dict[str, object] = {"patients": ctx.patient_ids, "source": source}
    tasks: list[int] = []
    if opted_out:
        effects = visits.stop_texting(session=ctx.session, patient_ids=ctx.patient_ids, now=ctx.now)
        detail |= {"cancelled_messages": effects.cancelled_messages, "tasks": effects.task_ids}
        tasks = list(effects.task_ids)
    else:
        detail["restored_messages"] = visits.resume_texting(
            session=ctx.session, patient_ids=ctx.patient_ids, now=ctx.now
        )
    queries.audit(
        session=ctx.session,
        actor=ACTOR,
        action="sms.opted_out" if opted_out else "sms.opted_in",
        entity="patient",
        entity_id=ctx.patient.id if ctx.patient else None,
        detail=detail,
    )
    return tasks


def _worsening(ctx: _Context) -> int | None:
    study = ctx.session.get(ImagingStudy, ctx.study_id) if ctx.study_id else None
    target = (study.ordering_provider_key if study else None) or CLINICIAN_QUEUE
    return _task(
        ctx,
        WORSENING_TASK,
        "reports worsening symptoms: call the patient now",
        target=target,
    )


def _confirm(ctx: _Context, reply_ids: list[int]) -> int | None:
    """C / CONFIRM / YES: a pending waitlist offer is taken (confirmed by text, with the new
    visit's reminders), else the visit is confirmed and the patient told so; with neither, a
    person looks."""
    offer = _pending_offer(ctx)
    if offer is not None and offer.id is not None:
        accepted = visits.accept_waitlist_offer(
            session=ctx.session,
            offer_id=offer.id,
            settings=ctx.settings,
            now=ctx.now,
            actor=ACTOR,
            answering=ctx.answering,
        )
        if accepted.result.appointment is not None:
            assert accepted.texts.notice is not None
            reply_ids.append(accepted.texts.notice)
            return None
        return _task(ctx, REPLY_TASK, "answered a waitlist offer that had expired")
    appointment = ctx.appointment
    if appointment is None or appointment.id is None:
        return _task(ctx, REPLY_TASK, "confirmed, but has no upcoming visit on file")
    acknowledged = visits.acknowledge_confirmation(
        session=ctx.session,
        appointment_id=appointment.id,
        settings=ctx.settings,
        now=ctx.now,
        answering=ctx.answering,
    )
    if acknowledged is not None:
        reply_ids.append(acknowledged)
    if appointment.status == AppointmentStatus.BOOKED:
        appointment.status = AppointmentStatus.CONFIRMED
        ctx.session.add(appointment)
        queries.audit(
            session=ctx.session,
            actor=ACTOR,
            action="appointment.confirmed",
            entity="appointment",
            entity_id=appointment.id,
            detail={"message_sid": ctx.sms.message_sid},
        )
    return None


def _pending_offer(ctx: _Context) -> WaitlistOffer | None:
    return (
        mq.pending_offer_for(session=ctx.session, patient_ids=ctx.patient_ids)
        if ctx.patients
        else None
    )


def _decline(ctx: _Context) -> int | None:
    """N / NO / "not coming" / "cancel my appointment": a pending waitlist offer is declined
    (the patient waits on; the slot is offered to the next patient by text). With none open,
    the visit is not cancelled by a text: a scheduler calls to cancel it or find another time
    (a no to a visit text may mean a no to the reminder, not to the visit)."""
    offer = _pending_offer(ctx)
    if offer is None or offer.id is None:
        if ctx.appointment is None or not declines_visit(ctx.sms.body):
            return _task(ctx, REPLY_TASK, "answered no, with no waitlist offer open: read it")
        return _task(
            ctx,
            RESCHEDULE_TASK,
            "says they will not come to the visit: call to cancel it or find another time",
        )
    visits.decline_waitlist_offer(
        session=ctx.session, offer_id=offer.id, settings=ctx.settings, now=ctx.now, actor=ACTOR
    )
    return None


def _reschedule(ctx: _Context, reply_ids: list[int]) -> int | None:
    """R / RESCHEDULE: slots on other days in the visit's window are held for the patient and
    texted as numbered choices (reply 1, 2 or 3); the visit stays where it is until they
    choose. When nothing fits, a scheduler offers another time."""
    appointment = ctx.appointment
    if appointment is None or appointment.id is None:
        return _task(ctx, RESCHEDULE_TASK, "asks to reschedule but has no upcoming visit on file")
    offered = visits.offer_reschedule_choices(
        session=ctx.session,
        appointment_id=appointment.id,
        settings=ctx.settings,
        now=ctx.now,
        actor=ACTOR,
        answering=ctx.answering,
    )
    if not offered.result:
        return _task(
            ctx,
            RESCHEDULE_TASK,
            "asks to reschedule; no free slot on another day in the visit's window: "
            "offer another time",
        )
    assert offered.texts.notice is not None
    reply_ids.append(offered.texts.notice)
    return None


def _choose(ctx: _Context, reply_ids: list[int]) -> int | None:
    """1, 2 or 3: the visit moves to that held slot and the patient is told the new time.
    A choice no longer open (the hold lapsed, or none was offered) moves nothing: a scheduler
    calls."""
    number = chosen_number(ctx.sms.body)
    appointment = ctx.appointment
    if number is None or appointment is None or appointment.id is None:
        return _task(ctx, REPLY_TASK, "replied with a number, with no visit on file: read it")
    moved = moves.move_appointment(
        session=ctx.session,
        appointment_id=appointment.id,
        reason=f"patient chose {number} by SMS {ctx.sms.message_sid}",
        policy=moves.NothingFits.OFFER,
        settings=ctx.settings,
        now=ctx.now,
        actor=ACTOR,
        after=ctx.now,
        answering=ctx.answering,
        held_choice=number,
    )
    if moved.texts.notice is None:
        return _task(
            ctx,
            RESCHEDULE_TASK,
            f"chose {number}, but no such time is held for the visit any more: offer another time",
        )
    reply_ids.append(moved.texts.notice)
    return None


def _task(ctx: _Context, kind: str, what: str, *, target: str = SCHEDULER_QUEUE) -> int | None:
    """Open the task, or join the open one of its study and kind; the text is shown with it.

    A red flag's notice is due at once (re-notify-escalations sends a notice once `notified_at`
    is an interval old), for the first text and for every later one on the open task.
    """
    reason = f"{ctx.about()} {what}."
    joined = (
        mq.open_task_with_texts_from(session=ctx.session, kind=kind, patient_ids=ctx.patient_ids)
        if ctx.study_id is None
        else None
    )
    task = joined or mq.open_task(
        session=ctx.session, kind=kind, reason=reason, target=target, study_id=ctx.study_id
    )
    interval = timedelta(minutes=ctx.settings.escalation_renotify_minutes)
    texts = mq.note_text_on_task(
        session=ctx.session,
        task=task,
        event_id=ctx.event_id,
        notice_due=ctx.now - interval if kind == WORSENING_TASK else None,
    )
    if texts > 1:
        # The latest text leads: an open task is never left describing only the first one.
        task.reason = f"{reason} {texts} texts on this task: followup replies show {task.id}."
        ctx.session.add(task)
    return task.id


def _answer_at_once(ctx: _Context, kind: str) -> InstantAnswer:
    """Render an answer for the webhook's response, in the patient's language (for an unknown
    number, the language the text reads as), kept in the outbox for a known patient."""
    patient = ctx.patient
    rendered = render_sms(
        kind,
        patient.language if patient else language_of(ctx.sms.body),
        _reply_context(ctx),
        templates_dir=ctx.settings.templates_dir,
    )
    if patient is None or patient.id is None:
        return InstantAnswer(body=rendered.body, message_id=None)
    row = OutboundMessage.model_validate(
        {
            **_row(
                ctx, patient.id, f"{REPLY_KEY_PREFIX}{ctx.sms.message_sid}:{kind}", rendered
            ).model_dump(),
            # Handed to Twilio in the TwiML response: never claimed by a dispatcher.
            "status": OutboundStatus.QUEUED,
            "attempts": 1,
            "sent_at": ctx.now,
        }
    )
    ctx.session.add(row)
    ctx.session.flush()
    return InstantAnswer(body=rendered.body, message_id=row.id)


def _reply_context(ctx: _Context) -> dict[str, object]:
    return {
        "clinic_name": ctx.settings.site_name,
        "clinic_phone": display_phone(ctx.settings.clinic_phone),
    }


def _enqueue_replies(ctx: _Context, kinds: list[str]) -> list[int]:
    """Render each answer in the patient's language and put it in the outbox, due now."""
    patient = ctx.patient
    if patient is None or patient.id is None or not kinds:
        return []
    context = _reply_context(ctx)
    planned = [
        _row(
            ctx,
            patient.id,
            f"reply:{ctx.sms.message_sid}:{kind}",
            render_sms(kind, patient.language, context, templates_dir=ctx.settings.templates_dir),
        )
        for kind in kinds
    ]
    stored = queries.enqueue_messages(session=ctx.session, messages=planned)
    return [message.id for message in stored if message.id is not None]


def _row(ctx: _Context, patient_id: int, key: str, rendered: RenderedSms) -> OutboundMessageBase:
    """An answer to the patient's text: to the number it came from, due now."""
    return OutboundMessageBase(
        idempotency_key=key,
        patient_id=patient_id,
        kind=rendered.kind,
        language=rendered.language,
        template=f"sms/{rendered.language}/{rendered.kind}.j2",
        body=rendered.body,
        encoding=rendered.encoding,
        segments=rendered.segments,
        to_phone=ctx.sms.from_phone,
        scheduled_for=ctx.now,
    )
