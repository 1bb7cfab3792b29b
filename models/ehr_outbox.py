"""The EHR outbox: SIU messages about the engine's visits and REF messages about its referrals.

Keyword-only functions taking a session; the caller owns the transaction. The two hooks,
`record_visit_change` and `record_referral_change`, are called where a visit is booked, moved
or cancelled and where a referral is opened or cancelled, so the message is committed with the
change or not at all.

Order and collapsing. A visit (its first appointment's id, which reschedules keep) and a
referral are each a *subject*; a subject's messages go one at a time, in row order, and a row
waits while an earlier one of its subject is unfinished (pending, sending, or held for a
person). A change made while the subject's last row is still unsent and never tried is folded
into that row instead of adding one, so the receiver hears only the outcome:

* nothing announced yet: booked, then moved → one S12 with the final time; booked, then
  cancelled → nothing at all (the row is superseded); an I12 cancelled before it went → nothing;
* announced: moved → S13, cancelled → S15; a referral cancelled → I14. (The engine changes
  nothing else of a booked visit, so it sends no S14; the builder has it for completeness.)

A row that was tried once is never changed: its resend must be the very message the receiver
may already hold, under the same MSH-10.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, exists, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from followup.core.referrals import ReferralStatus
from followup.ris.outbound import ReferralTrigger, VisitTrigger
from models.audit import audit
from models.tables import (
    EHR_OUTBOX_FINISHED,
    Appointment,
    Decision,
    EhrOutboxMessage,
    EhrOutboxStatus,
    ImagingStudy,
    Patient,
    Provider,
    Referral,
)
from models.types import utcnow

ACTOR = "ehr-outbox"
VISIT = "visit"
REFERRAL = "referral"
EHR_DESTINATION = "ehr"
REFERRAL_DESTINATION_PREFIX = "referrals:"


class VisitChange(StrEnum):
    BOOKED = "booked"
    MOVED = "moved"
    CANCELLED = "cancelled"


class ReferralChange(StrEnum):
    OPENED = "opened"
    CANCELLED = "cancelled"


def referral_destination(specialty: str) -> str:
    return f"{REFERRAL_DESTINATION_PREFIX}{specialty}"


# --- the hooks -----------------------------------------------------------------------------------


def visit_id(*, session: Session, appointment: Appointment) -> int:
    """The visit an appointment belongs to: the first appointment of its reschedule chain."""
    assert appointment.id is not None
    current = appointment.id
    while True:
        earlier = session.exec(
            select(Appointment.id).where(Appointment.replaced_by_id == current)
        ).first()
        if earlier is None:
            return current
        current = earlier


def record_visit_change(
    *, session: Session, appointment: Appointment, change: VisitChange
) -> EhrOutboxMessage | None:
    """Queue the SIU that tells the EHR's schedule about `change` (`appointment` is the visit's
    current appointment: the new one after a move); None when the change cancels a message
    never sent. See the module docstring for how unsent changes fold together."""
    assert appointment.id is not None
    subject_id = visit_id(session=session, appointment=appointment)
    rows = _subject_rows(session, VISIT, subject_id)
    open_row = _foldable(rows)
    announced = any(row is not open_row for row in rows)
    trigger: VisitTrigger
    if change == VisitChange.CANCELLED:
        if not announced:
            _supersede(session, open_row)
            return None
        trigger = VisitTrigger.CANCELLED
    elif not announced:
        trigger = VisitTrigger.NEW
    else:
        trigger = VisitTrigger.RESCHEDULED
    row = open_row or EhrOutboxMessage(
        subject=VISIT, subject_id=subject_id, trigger=trigger, destination=EHR_DESTINATION
    )
    row.trigger = trigger
    row.appointment_id = appointment.id
    row.study_id = appointment.study_id
    session.add(row)
    session.flush()
    return row


def record_referral_change(
    *, session: Session, referral: Referral, change: ReferralChange
) -> EhrOutboxMessage | None:
    """Queue the REF that tells the specialty about `change`; None when a cancellation
    overtakes an I12 never sent (the specialist never hears of the referral)."""
    assert referral.id is not None
    rows = _subject_rows(session, REFERRAL, referral.id)
    open_row = _foldable(rows)
    announced = any(row is not open_row for row in rows)
    if change == ReferralChange.CANCELLED and not announced:
        _supersede(session, open_row)
        return None
    trigger = ReferralTrigger.NEW if change == ReferralChange.OPENED else ReferralTrigger.CANCELLED
    if open_row is not None and open_row.trigger == trigger:
        return open_row
    row = EhrOutboxMessage(
        subject=REFERRAL,
        subject_id=referral.id,
        referral_id=referral.id,
        study_id=referral.study_id,
        trigger=trigger,
        destination=referral_destination(referral.specialty),
    )
    session.add(row)
    session.flush()
    return row


def _subject_rows(session: Session, subject: str, subject_id: int) -> list[EhrOutboxMessage]:
    return list(
        session.exec(
            select(EhrOutboxMessage)
            .where(
                EhrOutboxMessage.subject == subject,
                EhrOutboxMessage.subject_id == subject_id,
                EhrOutboxMessage.status != EhrOutboxStatus.SUPERSEDED,
            )
            .order_by(col(EhrOutboxMessage.id))
        )
    )


def _foldable(rows: list[EhrOutboxMessage]) -> EhrOutboxMessage | None:
    """The subject's last row when it was never built nor tried: a change can still fold in."""
    if not rows:
        return None
    last = rows[-1]
    untouched = last.status == EhrOutboxStatus.PENDING and last.attempts == 0
    return last if untouched and last.payload is None else None


def _supersede(session: Session, row: EhrOutboxMessage | None) -> None:
    if row is None:
        return
    row.status = EhrOutboxStatus.SUPERSEDED
    row.finished_at = utcnow()
    session.add(row)
    session.flush()


# --- the dispatcher's side -------------------------------------------------------------------


def claim_due(*, session: Session, now: datetime, limit: int) -> list[int]:
    """Move up to `limit` due rows to sending and return their ids in row order: the first
    unfinished row of each subject only, so a subject's messages go one after the other.

    Two statements: the candidates are read (locked FOR UPDATE SKIP LOCKED on PostgreSQL, so a
    second dispatcher takes other rows), then moved with a status re-check, so a row moves
    once even on SQLite, which has no row locks. Not one UPDATE ... WHERE id IN (SELECT ...
    LIMIT n FOR UPDATE SKIP LOCKED): PostgreSQL may run that subquery once per row it
    updates and so ignore the limit (seen: 300 rows claimed with a limit of 100).
    """
    earlier = aliased(EhrOutboxMessage)
    blocked = exists().where(
        and_(
            col(earlier.subject) == col(EhrOutboxMessage.subject),
            col(earlier.subject_id) == col(EhrOutboxMessage.subject_id),
            col(earlier.id) < col(EhrOutboxMessage.id),
            col(earlier.status).not_in(EHR_OUTBOX_FINISHED),
        )
    )
    due = list(
        session.exec(
            select(EhrOutboxMessage.id)
            .where(
                EhrOutboxMessage.status == EhrOutboxStatus.PENDING,
                EhrOutboxMessage.next_attempt_at <= now,
                ~blocked,
            )
            .order_by(col(EhrOutboxMessage.id))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not due:
        return []
    claimed = session.execute(
        update(EhrOutboxMessage)
        .where(
            col(EhrOutboxMessage.id).in_(due),
            col(EhrOutboxMessage.status) == EhrOutboxStatus.PENDING,
        )
        .values(status=EhrOutboxStatus.SENDING, claimed_at=now)
        .returning(col(EhrOutboxMessage.id))
        .execution_options(synchronize_session=False)
    ).all()
    return sorted(row.id for row in claimed)


def release_stale_claims(*, session: Session, claimed_before: datetime) -> int:
    """Give back rows a dispatcher claimed and never finished (it died): sent again, under the
    same control id when they were built, so the receiver can tell the copy."""
    result = session.execute(
        update(EhrOutboxMessage)
        .where(
            col(EhrOutboxMessage.status) == EhrOutboxStatus.SENDING,
            col(EhrOutboxMessage.claimed_at) < claimed_before,
        )
        .values(status=EhrOutboxStatus.PENDING, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class VisitFacts:
    row: EhrOutboxMessage
    appointment: Appointment
    patient: Patient
    provider: Provider
    accession: str | None


@dataclass(frozen=True, slots=True)
class ReferralFacts:
    row: EhrOutboxMessage
    referral: Referral
    study: ImagingStudy
    patient: Patient
    decision: Decision
    referring: Provider | None


def facts_for(*, session: Session, row: EhrOutboxMessage) -> VisitFacts | ReferralFacts:
    """What the row's message is built from, read from the current state of its subject."""
    if row.subject == VISIT:
        appointment = session.get_one(Appointment, row.appointment_id)
        study = session.get(ImagingStudy, appointment.study_id) if appointment.study_id else None
        return VisitFacts(
            row=row,
            appointment=appointment,
            patient=session.get_one(Patient, appointment.patient_id),
            provider=session.get_one(Provider, appointment.provider_id),
            accession=study.accession if study else None,
        )
    referral = session.get_one(Referral, row.referral_id)
    study = session.get_one(ImagingStudy, referral.study_id)
    return ReferralFacts(
        row=row,
        referral=referral,
        study=study,
        patient=session.get_one(Patient, study.patient_id),
        decision=session.get_one(Decision, referral.decision_id),
        referring=(
            session.get(Provider, study.ordering_provider_id)
            if study.ordering_provider_id
            else None
        ),
    )


def get_row(*, session: Session, row_id: int) -> EhrOutboxMessage:
    row = session.get(EhrOutboxMessage, row_id)
    if row is None:
        raise LookupError(f"EHR outbox message {row_id} does not exist")
    return row


def rows_by_id(*, session: Session, ids: Collection[int]) -> list[EhrOutboxMessage]:
    return list(
        session.exec(
            select(EhrOutboxMessage)
            .where(col(EhrOutboxMessage.id).in_(list(ids)))
            .order_by(col(EhrOutboxMessage.id))
        )
    )


# --- what a person does about a held message -----------------------------------------------------


def release_held(*, session: Session, row_id: int, by: str) -> EhrOutboxMessage:
    """Send a held message again (the receiver's problem was fixed): same message, same id."""
    row = get_row(session=session, row_id=row_id)
    if row.status != EhrOutboxStatus.HELD:
        raise LookupError(f"EHR outbox message {row_id} is {row.status}, not held")
    row.status = EhrOutboxStatus.PENDING
    row.attempts = 0
    row.next_attempt_at = utcnow()
    session.add(row)
    audit(
        session=session,
        actor=by,
        action="ehr.released",
        entity="ehr_outbox_message",
        entity_id=row.id,
        detail={"trigger": row.trigger, "destination": row.destination},
    )
    return row


def skip_held(*, session: Session, row_id: int, by: str, reason: str) -> EhrOutboxMessage:
    """Give up on a held message (re-keyed by hand at the receiver): its subject's later
    messages may go."""
    row = get_row(session=session, row_id=row_id)
    if row.status != EhrOutboxStatus.HELD:
        raise LookupError(f"EHR outbox message {row_id} is {row.status}, not held")
    _supersede(session, row)
    audit(
        session=session,
        actor=by,
        action="ehr.skipped",
        entity="ehr_outbox_message",
        entity_id=row.id,
        detail={"trigger": row.trigger, "destination": row.destination, "reason": reason},
    )
    return row


# --- the specialists' answers ------------------------------------------------------------------


# --- the worklist --------------------------------------------------------------------------------


def unanswered_referrals(
    *, session: Session, now: datetime, answer_within: timedelta
) -> list[tuple[Referral, ImagingStudy]]:
    """Referrals sent to a specialty that has not answered (accepted or declined) in time."""
    return list(
        session.exec(
            select(Referral, ImagingStudy)
            .join(ImagingStudy, col(ImagingStudy.id) == col(Referral.study_id))
            .where(
                Referral.status == ReferralStatus.SENT,
                col(Referral.status_changed_at) < now - answer_within,
            )
            .order_by(col(Referral.status_changed_at), col(Referral.id))
        ).all()
    )
