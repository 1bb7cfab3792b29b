"""Queries for the SMS outbox, its claims, Twilio's callbacks and the suppression list.

Keyword-only functions taking a session; the caller owns the transaction. The claim is the one
statement that makes sending exactly-once, so it is a single UPDATE ... RETURNING: on
PostgreSQL its subquery locks the due rows FOR UPDATE SKIP LOCKED (a second dispatcher takes
other rows instead of waiting), on SQLite (which has no row locks and renders no FOR UPDATE)
the UPDATE holds the database's write lock and re-checks `status = 'scheduled'`, so a row
can move to `sending` once.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import func, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from models.tables import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    Escalation,
    EscalationStatus,
    OfferStatus,
    OutboundMessage,
    OutboundStatus,
    Patient,
    SmsSuppression,
    TwilioEvent,
    TwilioEventKind,
    WaitlistEntry,
    WaitlistOffer,
)

# A message in one of these states reached (or is on its way to) the patient's phone, so it
# counts against the daily and weekly caps. Dry-run rows count too: the dry run must behave
# like the real thing.
CAPPED_STATUSES = (
    OutboundStatus.SENDING,
    OutboundStatus.QUEUED,
    OutboundStatus.SENT,
    OutboundStatus.DELIVERED,
    OutboundStatus.DRY_RUN,
)


# --- claims ------------------------------------------------------------------------------------


def claim_due_messages(
    *, session: Session, now: datetime, limit: int, ids: Collection[int] | None = None
) -> list[int]:
    """Move up to `limit` due rows from scheduled to sending and return their ids, oldest first.

    `ids` restricts the claim to those rows (a reply sent at once); they must still be due.
    """
    due = (
        select(OutboundMessage.id)
        .where(
            OutboundMessage.status == OutboundStatus.SCHEDULED,
            OutboundMessage.scheduled_for <= now,
            col(OutboundMessage.twilio_sid).is_(None),  # Twilio has it: never sent again
        )
        .order_by(col(OutboundMessage.scheduled_for), col(OutboundMessage.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if ids is not None:
        due = due.where(col(OutboundMessage.id).in_(list(ids)))
    # Two statements, not UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED):
    # PostgreSQL may run that subquery once per row it updates and so ignore the limit. The
    # status re-check moves a row once even on SQLite, which has no row locks.
    candidates = list(session.execute(due).scalars())
    if not candidates:
        return []
    claimed = session.execute(
        update(OutboundMessage)
        .where(
            col(OutboundMessage.id).in_(candidates),
            col(OutboundMessage.status) == OutboundStatus.SCHEDULED,
        )
        .values(status=OutboundStatus.SENDING, claimed_at=now)
        .returning(col(OutboundMessage.id), col(OutboundMessage.scheduled_for))
        .execution_options(synchronize_session=False)
    ).all()
    return [row.id for row in sorted(claimed, key=lambda row: (row.scheduled_for, row.id))]


# error_code of a row whose last attempt may have reached Twilio without its answer reaching
# us; sent_at holds that attempt's time, and Twilio is asked before the row is sent again.
UNKNOWN_OUTCOME = "unknown_outcome"


def release_stale_claims(*, session: Session, claimed_before: datetime) -> int:
    """Give claims that got no sid back to the queue; how many.

    A worker that died between claim and send leaves its rows in `sending`. It may have died
    after Twilio accepted the request and before the sid was written, so the row goes back
    marked unknown_outcome: the next attempt asks Twilio first and adopts the sid it finds.
    """
    result = session.execute(
        update(OutboundMessage)
        .where(
            col(OutboundMessage.status) == OutboundStatus.SENDING,
            col(OutboundMessage.twilio_sid).is_(None),
            col(OutboundMessage.claimed_at) < claimed_before,
        )
        .values(
            status=OutboundStatus.SCHEDULED,
            claimed_at=None,
            error_code=UNKNOWN_OUTCOME,
            sent_at=func.coalesce(col(OutboundMessage.sent_at), col(OutboundMessage.claimed_at)),
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def release_claim(*, session: Session, message: OutboundMessage, send_at: datetime) -> None:
    """Put a claimed row back in the queue for `send_at` (quiet hours, caps, a retry)."""
    message.status = OutboundStatus.SCHEDULED
    message.scheduled_for = send_at
    message.claimed_at = None
    session.add(message)


# --- what a send needs to know -----------------------------------------------------------------


def get_message(*, session: Session, message_id: int, lock: bool = False) -> OutboundMessage:
    """One outbox row; `lock` holds it (FOR UPDATE on PostgreSQL) until the transaction ends."""
    message = session.get(OutboundMessage, message_id, with_for_update=lock)
    if message is None:
        raise LookupError(f"outbound message {message_id} does not exist")
    return message


def known_sids(*, session: Session, sids: Collection[str]) -> set[str]:
    """Which of these Twilio sids already belong to an outbox row."""
    if not sids:
        return set()
    rows = session.exec(
        select(OutboundMessage.twilio_sid).where(col(OutboundMessage.twilio_sid).in_(list(sids)))
    ).all()
    return {sid for sid in rows if sid is not None}


def message_by_key(*, session: Session, key: str) -> OutboundMessage | None:
    return session.exec(
        select(OutboundMessage).where(OutboundMessage.idempotency_key == key)
    ).first()


def inbound_event(*, session: Session, sid: str) -> TwilioEvent | None:
    """The stored webhook of one inbound text."""
    return session.exec(
        select(TwilioEvent).where(
            TwilioEvent.message_sid == sid, TwilioEvent.kind == TwilioEventKind.INBOUND
        )
    ).first()


def message_by_sid(*, session: Session, sid: str, lock: bool = False) -> OutboundMessage | None:
    query = select(OutboundMessage).where(OutboundMessage.twilio_sid == sid)
    return session.exec(query.with_for_update() if lock else query).first()


def load_claimed(
    *, session: Session, ids: Collection[int]
) -> list[tuple[OutboundMessage, Patient, Appointment | None]]:
    """Claimed rows with their patient and visit, in the order of `ids`."""
    rows = session.exec(
        select(OutboundMessage, Patient, Appointment)
        .join(Patient, col(Patient.id) == col(OutboundMessage.patient_id))
        .outerjoin(Appointment, col(Appointment.id) == col(OutboundMessage.appointment_id))
        .where(col(OutboundMessage.id).in_(list(ids)))
    ).all()
    position = {message_id: n for n, message_id in enumerate(ids)}
    return sorted(
        ((message, patient, visit) for message, patient, visit in rows),
        key=lambda row: position[row[0].id or 0],
    )


def suppressed_phones(*, session: Session, phones: Collection[str]) -> set[str]:
    """Which of these numbers are on the suppression list."""
    return set(
        session.exec(
            select(SmsSuppression.phone_e164).where(
                col(SmsSuppression.phone_e164).in_(list(phones)),
                col(SmsSuppression.active).is_(True),
            )
        )
    )


def capped_send_times(
    *,
    session: Session,
    patient_ids: Collection[int],
    since: datetime,
    exclude_key_prefix: str,
    exclude_ids: Collection[int] = (),
) -> dict[int, list[datetime]]:
    """Per patient, when their texts since `since` went out (those that count against the
    caps); rows whose idempotency key starts with `exclude_key_prefix` (answers) do not, nor
    `exclude_ids` (the rows being checked: a retry whose first attempt may have gone is not
    its own reason to wait)."""
    history: dict[int, list[datetime]] = {}
    for patient_id, sent_at in session.exec(
        select(OutboundMessage.patient_id, OutboundMessage.sent_at).where(
            col(OutboundMessage.patient_id).in_(list(patient_ids)),
            col(OutboundMessage.status).in_(CAPPED_STATUSES),
            ~col(OutboundMessage.idempotency_key).startswith(exclude_key_prefix, autoescape=True),
            col(OutboundMessage.sent_at) >= since,
            col(OutboundMessage.id).not_in(list(exclude_ids)),
        )
    ):
        if sent_at is not None:
            history.setdefault(patient_id, []).append(sent_at)
    return history


def redelivery_count(*, session: Session, key_prefix: str) -> int:
    """How many outbox rows already re-send the message whose key starts with `key_prefix`."""
    return int(
        session.exec(
            select(func.count())
            .select_from(OutboundMessage)
            .where(col(OutboundMessage.idempotency_key).startswith(key_prefix, autoescape=True))
        ).one()
    )


# --- suppression -------------------------------------------------------------------------------


def phone_suppressed(*, session: Session, phone: str) -> bool:
    return (
        session.exec(
            select(SmsSuppression.id).where(
                SmsSuppression.phone_e164 == phone, col(SmsSuppression.active).is_(True)
            )
        ).first()
        is not None
    )


def set_suppression(
    *, session: Session, phone: str, active: bool, source: str, now: datetime
) -> SmsSuppression:
    entry = session.exec(select(SmsSuppression).where(SmsSuppression.phone_e164 == phone)).first()
    if entry is None:
        entry = SmsSuppression(phone_e164=phone, active=active, source=source)
    entry.active = active
    entry.source = source
    entry.changed_at = now
    session.add(entry)
    session.flush()
    return entry


def patients_with_phone(*, session: Session, phone: str) -> list[Patient]:
    return list(
        session.exec(select(Patient).where(Patient.phone_e164 == phone).order_by(col(Patient.id)))
    )


OPTED_OUT_REASON = "opted_out"  # error_code of texts cancelled by an opt-out (START restores)


def cancel_scheduled_for_patients(*, session: Session, patient_ids: Collection[int]) -> int:
    """Cancel every not-yet-claimed message to these patients (they opted out); how many."""
    result = session.execute(
        update(OutboundMessage)
        .where(
            col(OutboundMessage.patient_id).in_(list(patient_ids)),
            col(OutboundMessage.status) == OutboundStatus.SCHEDULED,
        )
        .values(status=OutboundStatus.CANCELLED, error_code=OPTED_OUT_REASON)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def restore_visit_texts_after_opt_in(
    *, session: Session, patient_ids: Collection[int], kinds: Collection[str], now: datetime
) -> int:
    """Schedule again the visit texts an opt-out cancelled, for visits still ahead: notices at
    once (the dispatcher applies quiet hours and caps), reminders whose time has not passed."""
    rows = session.exec(
        select(OutboundMessage, Appointment)
        .join(Appointment, col(Appointment.id) == col(OutboundMessage.appointment_id))
        .where(
            col(OutboundMessage.patient_id).in_(list(patient_ids)),
            col(OutboundMessage.status) == OutboundStatus.CANCELLED,
            col(OutboundMessage.error_code) == OPTED_OUT_REASON,
            col(OutboundMessage.kind).in_(list(kinds)),
            col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES),
            Appointment.start > now,
        )
    ).all()
    restored = 0
    for message, _ in rows:
        if message.kind == "reminder" and message.scheduled_for <= now:
            continue  # "in 3 days" sent a day before would be wrong; the next one still goes
        message.status = OutboundStatus.SCHEDULED
        message.error_code = None
        message.scheduled_for = max(message.scheduled_for, now)
        session.add(message)
        restored += 1
    return restored


def upcoming_active_appointments(
    *, session: Session, patient_ids: Collection[int], after: datetime
) -> list[Appointment]:
    return list(
        session.exec(
            select(Appointment)
            .where(
                col(Appointment.patient_id).in_(list(patient_ids)),
                col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES),
                Appointment.start > after,
            )
            .order_by(col(Appointment.start))
        ).all()
    )


def opted_out_for_send(*, session: Session, message_id: int) -> bool:
    """Whether the message's patient or number is opted out now (read just before the send)."""
    row = session.exec(
        select(OutboundMessage, Patient)
        .join(Patient, col(Patient.id) == col(OutboundMessage.patient_id))
        .where(OutboundMessage.id == message_id)
    ).first()
    if row is None:
        return False
    message, patient = row
    phone = message.to_phone or patient.phone_e164
    return patient.sms_opt_out or (
        phone is not None and phone_suppressed(session=session, phone=phone)
    )


# --- replies -----------------------------------------------------------------------------------


def last_visit_message_to(*, session: Session, phone: str) -> OutboundMessage | None:
    """The latest text about an appointment that went to this number: what a reply answers."""
    return session.exec(
        select(OutboundMessage)
        .where(
            OutboundMessage.to_phone == phone,
            col(OutboundMessage.appointment_id).is_not(None),
            col(OutboundMessage.sent_at).is_not(None),
        )
        .order_by(col(OutboundMessage.sent_at).desc(), col(OutboundMessage.id).desc())
    ).first()


def next_active_appointment(
    *, session: Session, patient_ids: Collection[int], after: datetime
) -> Appointment | None:
    return session.exec(
        select(Appointment)
        .where(
            col(Appointment.patient_id).in_(list(patient_ids)),
            col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES),
            Appointment.start > after,
        )
        .order_by(col(Appointment.start))
    ).first()


def pending_offer_for(*, session: Session, patient_ids: Collection[int]) -> WaitlistOffer | None:
    """A waitlist offer still waiting for one of these patients' answer."""
    return session.exec(
        select(WaitlistOffer)
        .join(WaitlistEntry, col(WaitlistEntry.id) == col(WaitlistOffer.entry_id))
        .where(
            col(WaitlistEntry.patient_id).in_(list(patient_ids)),
            WaitlistOffer.status == OfferStatus.PENDING,
        )
        .order_by(col(WaitlistOffer.offered_at).desc())
    ).first()


def offer_message_key(offer_id: int) -> str:
    """The idempotency key of a waitlist offer's text: one per offer."""
    return f"offer:{offer_id}:waitlist_offer"


def offers_without_text(*, session: Session, now: datetime) -> list[WaitlistOffer]:
    """Open offers whose text is not in the outbox (made by a path that did not enqueue it)."""
    pending = session.exec(
        select(WaitlistOffer)
        .where(WaitlistOffer.status == OfferStatus.PENDING, WaitlistOffer.expires_at > now)
        .order_by(col(WaitlistOffer.id))
    ).all()
    keys = {offer_message_key(offer.id): offer for offer in pending if offer.id is not None}
    texted = set(
        session.exec(
            select(OutboundMessage.idempotency_key).where(
                col(OutboundMessage.idempotency_key).in_(list(keys))
            )
        )
    )
    return [offer for key, offer in keys.items() if key not in texted]


def cancel_offer_message(*, session: Session, offer_id: int) -> int:
    """Cancel the offer's text if it has not been claimed yet; how many (0 or 1)."""
    result = session.execute(
        update(OutboundMessage)
        .where(
            col(OutboundMessage.idempotency_key) == offer_message_key(offer_id),
            col(OutboundMessage.status) == OutboundStatus.SCHEDULED,
        )
        .values(status=OutboundStatus.CANCELLED)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- Twilio webhooks ---------------------------------------------------------------------------


def record_twilio_event(*, session: Session, event: TwilioEvent) -> TwilioEvent | None:
    """Store one webhook; None when (MessageSid, MessageStatus) was already stored.

    One INSERT … ON CONFLICT DO NOTHING rather than insert-in-a-savepoint-and-catch: one
    statement, and the event is stored only if acting on it commits too (else Twilio's retry
    would be taken for a duplicate).
    """
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    new_id = session.execute(
        insert(TwilioEvent)
        .values(**event.model_dump(exclude={"id"}))
        .on_conflict_do_nothing(index_elements=["message_sid", "message_status"])
        .returning(col(TwilioEvent.id))
    ).scalar_one_or_none()
    return None if new_id is None else session.get(TwilioEvent, new_id)


# --- tasks for people --------------------------------------------------------------------------


def open_task(
    *, session: Session, kind: str, reason: str, target: str, study_id: int | None
) -> Escalation:
    """An open escalation a person must act on.

    With a study there is one per (study, kind): an open one is kept as it is, an
    acknowledged one is opened again with the new reason (the old one was dealt with, this is
    new news). Without a study every call opens a new one.
    """
    existing = (
        session.exec(
            select(Escalation).where(Escalation.study_id == study_id, Escalation.kind == kind)
        ).first()
        if study_id is not None
        else None
    )
    if existing is None:
        existing = Escalation(study_id=study_id, kind=kind, reason=reason, target=target)
    elif existing.status != EscalationStatus.OPEN:
        existing.status = EscalationStatus.OPEN
        existing.reason = reason
        existing.target = target
        existing.acknowledged_at = None
        existing.acknowledged_by = None
    session.add(existing)
    session.flush()
    return existing


def open_task_with_texts_from(
    *, session: Session, kind: str, patient_ids: Collection[int]
) -> Escalation | None:
    """The open task of `kind` already showing a text from one of these patients: where their
    next text goes when it concerns no study (one task per study and kind otherwise)."""
    if not patient_ids:
        return None
    return session.exec(
        select(Escalation)
        .join(TwilioEvent, col(TwilioEvent.escalation_id) == col(Escalation.id))
        .where(
            Escalation.kind == kind,
            Escalation.status == EscalationStatus.OPEN,
            col(TwilioEvent.patient_id).in_(patient_ids),
        )
        .order_by(col(Escalation.id).desc())
    ).first()


def note_text_on_task(
    *, session: Session, task: Escalation, event_id: int | None, notice_due: datetime | None
) -> int:
    """Show one more inbound text with `task`; the number of texts it now holds.

    `notice_due`: when the task's next notice should go (re-notify-escalations sends it at its
    next run once `notified_at` is an interval old); None leaves the notice schedule alone.
    """
    if event_id is not None:
        event = session.get(TwilioEvent, event_id)
        if event is not None and event.escalation_id is None:
            event.escalation_id = task.id
            session.add(event)
    if notice_due is not None:
        task.notified_at = notice_due
        session.add(task)
    session.flush()
    return texts_on_task_count(session=session, escalation_id=task.id)


def texts_on_task_count(*, session: Session, escalation_id: int | None) -> int:
    return int(
        session.exec(
            select(func.count()).where(col(TwilioEvent.escalation_id) == escalation_id)
        ).one()
    )


def texts_on_task(*, session: Session, escalation_id: int) -> list[TwilioEvent]:
    """The inbound texts shown with one task, oldest first."""
    return list(
        session.exec(
            select(TwilioEvent)
            .where(TwilioEvent.escalation_id == escalation_id)
            .order_by(col(TwilioEvent.received_at), col(TwilioEvent.id))
        ).all()
    )


# --- what schedulers and the CLI show ----------------------------------------------------------


class MessageState(NamedTuple):
    """Where one outbox row stands; no text, phone number or name."""

    id: int
    appointment_id: int | None
    kind: str
    scheduled_for: datetime
    status: str
    attempts: int
    error_code: str | None
    twilio_sid: str | None


def message_states(
    *,
    session: Session,
    statuses: Collection[str] | None = None,
    appointment_id: int | None = None,
) -> list[MessageState]:
    """Outbox rows in due order, optionally only those in `statuses` or about one appointment."""
    query = sa_select(
        col(OutboundMessage.id),
        col(OutboundMessage.appointment_id),
        col(OutboundMessage.kind),
        col(OutboundMessage.scheduled_for),
        col(OutboundMessage.status),
        col(OutboundMessage.attempts),
        col(OutboundMessage.error_code),
        col(OutboundMessage.twilio_sid),
    ).order_by(col(OutboundMessage.scheduled_for), col(OutboundMessage.id))
    if statuses is not None:
        query = query.where(col(OutboundMessage.status).in_(list(statuses)))
    if appointment_id is not None:
        query = query.where(col(OutboundMessage.appointment_id) == appointment_id)
    return [MessageState(*row) for row in session.execute(query)]


def message_counts_by_status(*, session: Session) -> dict[str, int]:
    rows = session.exec(
        select(OutboundMessage.status, func.count()).group_by(col(OutboundMessage.status))
    ).all()
    return {status: int(count) for status, count in rows}
