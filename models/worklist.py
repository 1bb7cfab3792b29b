"""Queries behind the schedulers' worklist artifacts (keyword-only, session passed in).

Rows come back as `WorklistRow` dicts already limited to what a scheduler may see: accession,
patient initials, times, provider, kinds and statuses — never names, phones or report text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from followup.core.worklist import DueNotice, action_for
from followup.errors import UnknownEscalation
from followup.ris.scan import PersonName
from models import ehr_outbox, queries, referral_queries
from models.tables import (
    Appointment,
    Escalation,
    EscalationStatus,
    ImagingStudy,
    InboxMessage,
    InboxStatus,
    OutboundMessage,
    OutboundStatus,
    Patient,
    Provider,
    Referral,
)

WorklistRow = dict[str, Any]


def failed_inbox_rows(*, session: Session, limit: int) -> list[WorklistRow]:
    """Accepted messages whose processing failed, waiting for a person first, then those that
    retry by themselves, oldest first in each (rejected input is not here: its sender got an
    AE/AR and must resend). What to do comes first: a scheduler reads left to right."""
    messages = session.exec(
        select(InboxMessage)
        .where(col(InboxMessage.status).in_((InboxStatus.NEEDS_ACTION, InboxStatus.RETRY)))
        .order_by(col(InboxMessage.status) != InboxStatus.NEEDS_ACTION, col(InboxMessage.id))
        .limit(limit)
    ).all()
    return [
        {
            "what to do": (message.summary or {}).get("action", "-"),
            "accession": message.accession or "-",
            "status": message.status,
            "attempts": message.attempts,
            "next attempt": message.next_attempt_at,
            "problem": message.error,
            "inbox id": message.id,
            "received": message.received_at,
        }
        for message in messages
    ]


def _initials(patient: Patient | None) -> str:
    return PersonName(patient.family_name, patient.given_name).initials if patient else ""


def bookings_between(*, session: Session, start: datetime, end: datetime) -> list[WorklistRow]:
    rows = session.exec(
        select(Appointment, Provider, Patient, ImagingStudy)
        .join(Provider, col(Provider.id) == col(Appointment.provider_id))
        .join(Patient, col(Patient.id) == col(Appointment.patient_id))
        .join(ImagingStudy, col(ImagingStudy.id) == col(Appointment.study_id), isouter=True)
        .where(col(Appointment.start) >= start, col(Appointment.start) < end)
        .order_by(col(Appointment.start))
    ).all()
    return [
        {
            "time": appointment.start,
            "provider": provider.display_name,
            "accession": study.accession if study else "-",
            "patient": _initials(patient),
            "status": appointment.status,
        }
        for appointment, provider, patient, study in rows
    ]


def open_escalations(*, session: Session, kinds: Sequence[str] | None = None) -> list[WorklistRow]:
    query = (
        select(Escalation, ImagingStudy, Patient)
        .join(ImagingStudy, col(ImagingStudy.id) == col(Escalation.study_id), isouter=True)
        .join(Patient, col(Patient.id) == col(ImagingStudy.patient_id), isouter=True)
        .where(Escalation.status == EscalationStatus.OPEN)
        .order_by(col(Escalation.created_at))
    )
    if kinds is not None:
        query = query.where(col(Escalation.kind).in_(kinds))
    return [
        {
            "what to do": action_for(
                escalation.kind, escalation.id, study.accession if study else "-"
            ),
            "id": escalation.id,
            "kind": escalation.kind,
            "accession": study.accession if study else "-",
            "patient": _initials(patient),
            # A time, not an age: an age is stale the moment the table is published.
            "since": escalation.created_at,
            "notices": escalation.notify_count,
            "for": queries.provider_label(session=session, key=escalation.target)
            or escalation.target,
            "reason": escalation.reason,  # whole, never cut
        }
        for escalation, study, patient in session.exec(query).all()
    ]


def _last_notice() -> Any:
    """When an escalation was last brought to someone: its last re-notice, else its creation."""
    return func.coalesce(col(Escalation.notified_at), col(Escalation.created_at))


def due_notices(
    *, session: Session, kinds: Sequence[str], due_before: datetime, now: datetime, limit: int = 200
) -> list[DueNotice]:
    """Open escalations of `kinds` last brought to someone at or before `due_before`, oldest
    first."""
    rows = session.exec(
        select(Escalation, ImagingStudy)
        .join(ImagingStudy, col(ImagingStudy.id) == col(Escalation.study_id), isouter=True)
        .where(
            Escalation.status == EscalationStatus.OPEN,
            col(Escalation.kind).in_(kinds),
            _last_notice() <= due_before,
        )
        .order_by(col(Escalation.created_at))
        .limit(limit)
    ).all()
    return [
        DueNotice(
            escalation_id=escalation.id,
            kind=escalation.kind,
            accession=study.accession if study else "-",
            target=escalation.target,
            waiting_minutes=int((now - escalation.created_at).total_seconds() // 60),
            notice=escalation.notify_count + 1,
        )
        for escalation, study in rows
        if escalation.id is not None
    ]


def record_notice(
    *, session: Session, escalation_id: int, due_before: datetime, now: datetime, channel: str
) -> bool:
    """Count one notice sent for an escalation; False (nothing written) when it is no longer
    open and due: acknowledged while the notice went out, or counted by another run."""
    counted = session.exec(
        update(Escalation)
        .where(
            col(Escalation.id) == escalation_id,
            col(Escalation.status) == EscalationStatus.OPEN,
            _last_notice() <= due_before,
        )
        .values(notified_at=now, notify_count=col(Escalation.notify_count) + 1)
    ).rowcount
    if counted:
        queries.audit(
            session=session,
            actor="flow:renotify-escalations",
            action="escalation.renotified",
            entity="escalation",
            entity_id=escalation_id,
            detail={"channel": channel},
        )
    return bool(counted)


def undeliverable_messages(*, session: Session, limit: int = 200) -> list[WorklistRow]:
    rows = session.exec(
        select(OutboundMessage, Patient)
        .join(Patient, col(Patient.id) == col(OutboundMessage.patient_id))
        .where(col(OutboundMessage.status).in_((OutboundStatus.FAILED, OutboundStatus.UNDELIVERED)))
        .order_by(col(OutboundMessage.id).desc())
        .limit(limit)
    ).all()
    return [
        {
            "message id": message.id,
            "kind": message.kind,
            "patient": _initials(patient),
            "status": message.status,
            "error": message.error_code or "-",
        }
        for message, patient in rows
    ]


def overdue_referral_rows(
    *, session: Session, now: datetime, answer_within: timedelta
) -> list[WorklistRow]:
    """Referrals without an appointment past their tier's allowance, and referrals sent that
    the specialty has not answered (accepted or declined) within `answer_within`."""
    overdue = referral_queries.overdue_referrals(session=session, now=now)
    studies = {
        study.id: study
        for study in session.exec(
            select(ImagingStudy).where(col(ImagingStudy.id).in_([r.study_id for r in overdue]))
        ).all()
    }
    rows: list[WorklistRow] = [
        {
            "referral id": referral.id,
            "specialty": referral.specialty,
            "accession": studies[referral.study_id].accession,
            "status": referral.status,
            "open since": referral.created_at,
            "why": "no appointment within the allowance of its urgency",
        }
        for referral in overdue
    ]
    listed = {row["referral id"] for row in rows}
    days = answer_within.days
    rows += [
        {
            "referral id": referral.id,
            "specialty": referral.specialty,
            "accession": study.accession,
            "status": referral.status,
            "open since": referral.created_at,
            "why": f"sent, no answer from the specialty in {days} days: call them",
        }
        for referral, study in ehr_outbox.unanswered_referrals(
            session=session, now=now, answer_within=answer_within
        )
        if referral.id not in listed
    ]
    return rows


def acknowledge_escalation(
    *, session: Session, escalation_id: int, by: str, now: datetime, via: str = "cli"
) -> Escalation:
    """Close an escalation; acknowledging twice keeps the first acknowledgement.

    `via` (cli, http) goes to the audit trail beside who acknowledged.
    """
    escalation = session.get(Escalation, escalation_id)
    if escalation is None:
        raise UnknownEscalation(f"escalation {escalation_id} does not exist")
    if escalation.status == EscalationStatus.OPEN:
        escalation.status = EscalationStatus.ACKNOWLEDGED
        escalation.acknowledged_at = now
        escalation.acknowledged_by = by
        session.add(escalation)
        queries.audit(
            session=session,
            actor=by,
            action="escalation.acknowledged",
            entity="escalation",
            entity_id=escalation.id,
            detail={"kind": escalation.kind, "via": via},
        )
        session.flush()
    return escalation


def appointments_for(
    *,
    session: Session,
    accession: str | None = None,
    mrn: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[WorklistRow]:
    """A study's, a patient's or a period's appointments, cancelled ones included, by time:
    the ids a scheduler needs to act on, with initials rather than names."""
    query = (
        select(Appointment, Provider, Patient, ImagingStudy)
        .join(Provider, col(Provider.id) == col(Appointment.provider_id))
        .join(Patient, col(Patient.id) == col(Appointment.patient_id))
        .join(ImagingStudy, col(ImagingStudy.id) == col(Appointment.study_id), isouter=True)
        .order_by(col(Appointment.start), col(Appointment.id))
    )
    if accession is not None:
        query = query.where(ImagingStudy.accession == accession)
    if mrn is not None:
        query = query.where(Patient.mrn == mrn)
    if start is not None:
        query = query.where(col(Appointment.start) >= start)
    if end is not None:
        query = query.where(col(Appointment.start) < end)
    return [
        {
            "id": appointment.id,
            "time": appointment.start,
            "provider": f"{provider.display_name} ({provider.npi})",
            "accession": study.accession if study else "-",
            "patient": _initials(patient),
            "kind": appointment.kind,
            "status": appointment.status,
        }
        for appointment, provider, patient, study in session.exec(query).all()
    ]


def referrals_for(
    *, session: Session, accession: str | None = None, mrn: str | None = None
) -> list[WorklistRow]:
    """A study's or a patient's referrals in every state, oldest first."""
    query = (
        select(Referral, ImagingStudy, Patient)
        .join(ImagingStudy, col(ImagingStudy.id) == col(Referral.study_id))
        .join(Patient, col(Patient.id) == col(ImagingStudy.patient_id))
        .order_by(col(Referral.id))
    )
    if accession is not None:
        query = query.where(ImagingStudy.accession == accession)
    if mrn is not None:
        query = query.where(Patient.mrn == mrn)
    return [
        {
            "id": referral.id,
            "accession": study.accession,
            "patient": _initials(patient),
            "specialty": referral.specialty,
            "status": referral.status,
            "since": referral.status_changed_at,
            "scheduled": referral.scheduled_for,
        }
        for referral, study, patient in session.exec(query).all()
    ]
