"""Queries: keyword-only functions taking a session. No commits here except where the
durability contract demands one (the raw inbox row); the caller owns the transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

from sqlmodel import Session, col, select

from followup.core.messaging.plan import PlannedSms
from followup.core.referrals import check_transition
from followup.errors import BookingError
from followup.ris.scan import ProviderRef, ScanCompleted
from models import ehr_outbox
from models.audit import audit
from models.tables import (
    Appointment,
    Decision,
    Escalation,
    EscalationStatus,
    Finding,
    ImagingStudy,
    InboxMessage,
    OutboundMessage,
    OutboundMessageBase,
    OutboundStatus,
    Patient,
    Provider,
    Referral,
    ReferralStatus,
    ReferralStatusChange,
)
from models.types import utcnow

ENGINE = "engine"
FINAL_STATUSES = frozenset({"F", "C"})  # OBR-25 of a report that routes (DOMAIN.md §5)


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# --- inbox -----------------------------------------------------------------------------------


def store_inbox_message(
    *,
    session: Session,
    raw: bytes,
    source: str,
    peer: str | None = None,
    content_type: str = "unknown",
) -> InboxMessage:
    """Persist the raw bytes and commit at once: nothing is parsed before it is durable."""
    row = InboxMessage(
        raw=raw, source=source, peer=peer, content_type=content_type, content_hash=content_hash(raw)
    )
    session.add(row)
    session.commit()
    return row


def get_inbox_message(*, session: Session, inbox_id: int) -> InboxMessage:
    row = session.get(InboxMessage, inbox_id)
    if row is None:
        raise LookupError(f"inbox message {inbox_id} does not exist")
    return row


def upsert_patient(*, session: Session, scan: ScanCompleted) -> Patient:
    patient = session.exec(select(Patient).where(Patient.mrn == scan.mrn)).first()
    if patient is None:
        patient = Patient(mrn=scan.mrn)
    patient.family_name = scan.patient_name.family
    patient.given_name = scan.patient_name.given
    patient.birth_date = scan.birth_date or patient.birth_date
    patient.phone_e164 = scan.phone_e164 or patient.phone_e164
    patient.language = scan.language or patient.language
    patient.updated_at = utcnow()
    session.add(patient)
    session.flush()
    return patient


def find_provider(*, session: Session, ref: ProviderRef | None) -> Provider | None:
    if ref is None or not ref.identifier:
        return None
    return session.exec(select(Provider).where(Provider.npi == ref.identifier)).first()


def provider_label(*, session: Session, key: str) -> str | None:
    """`Dr. Name (NPI n)` for an escalation's target when it is a known provider's key, None
    for a queue or an unknown key (shown as it is)."""
    provider = session.exec(select(Provider).where(Provider.npi == key)).first()
    return f"{provider.display_name} (NPI {provider.npi})" if provider else None


def is_stale_report(*, study: ImagingStudy, scan: ScanCompleted, inbox_id: int) -> bool:
    """True when the study already holds a newer report than this message's.

    A preliminary after the final or corrected report, a final written before the correction
    the study already holds (`final_after_its_correction`), or a row older than the one the
    study was last updated from (a re-run of an old row) must not replace the report the
    current decision was made on.
    """
    if study.id is None:
        return False
    if scan.result_status == "P" and study.report_status in FINAL_STATUSES:
        return True
    if final_after_its_correction(
        scan, current_status=study.report_status, current_time=study.final_at
    ):
        return True
    return study.inbox_id > inbox_id


def final_after_its_correction(
    scan: ScanCompleted, *, current_status: str, current_time: datetime | None
) -> bool:
    """Whether a final (F) is the one the study's current correction (C) already replaced.

    A RIS queue can hand over the correction before the final; routed in arrival order, the
    uncorrected text and its decision would come back. The final is the older one when its
    result time (OBR-22) is not after the correction's: equal counts too, since some RISes keep
    the original OBR-22 on a correction. The rule is kept this narrow on purpose: judged by
    stamps alone, a correction could be dropped for a date-only OBR-22 or a clock change,
    so everything else, and a final without OBR-22, goes by arrival order. (The current time
    falls back to the exam time when the correction had no OBR-22; a final is written after its
    exam, so that errs towards arrival order.)
    """
    return (
        scan.result_status == "F"
        and current_status == "C"
        and scan.result_time is not None
        and current_time is not None
        and scan.result_time <= current_time
    )


def upsert_study(
    *,
    session: Session,
    scan: ScanCompleted,
    patient: Patient,
    provider: Provider | None,
    inbox_id: int,
) -> ImagingStudy:
    """Create or update the study from a result; a stale one (`is_stale_report`) changes nothing."""
    study = study_by_accession(session=session, accession=scan.accession)
    if study is None:
        study = ImagingStudy(
            accession=scan.accession,
            patient_id=patient.id,  # type: ignore[arg-type]
            report_status=scan.result_status,
            report_text=scan.report_text,
            inbox_id=inbox_id,
        )
    elif is_stale_report(study=study, scan=scan, inbox_id=inbox_id):
        return study
    study.ordering_provider_id = provider.id if provider else None
    study.ordering_provider_key = (
        scan.ordering_provider.identifier if scan.ordering_provider else None
    )
    study.procedure_code = scan.procedure_code
    study.procedure_text = scan.procedure_text
    study.performed_at = scan.exam_time
    study.final_at = scan.final_time
    study.report_status = scan.result_status
    # A cancellation often carries no text: the report it cancels stays readable.
    study.report_text = scan.report_text or study.report_text
    study.inbox_id = inbox_id
    study.updated_at = utcnow()
    session.add(study)
    session.flush()
    return study


def study_with_patient(*, session: Session, accession: str) -> tuple[ImagingStudy, Patient] | None:
    found = session.exec(
        select(ImagingStudy, Patient)
        .join(Patient, col(Patient.id) == ImagingStudy.patient_id)
        .where(ImagingStudy.accession == accession)
    ).first()
    return (found[0], found[1]) if found else None


def study_by_accession(*, session: Session, accession: str) -> ImagingStudy | None:
    return session.exec(select(ImagingStudy).where(ImagingStudy.accession == accession)).first()


# --- decisions, findings, referrals ------------------------------------------------------------


def current_decision(*, session: Session, study_id: int) -> Decision | None:
    return session.exec(
        select(Decision)
        .where(Decision.study_id == study_id, col(Decision.superseded_at).is_(None))
        .order_by(col(Decision.id).desc())
    ).first()


def record_decision(
    *,
    session: Session,
    decision: Decision,
    findings: Iterable[Finding],
    previous: Decision | None,
) -> Decision:
    """Store a new current decision for the study, superseding (not deleting) `previous`, the
    study's current decision as the caller read it in this transaction (`current_decision`).

    Idempotent per inbox row: when the current decision was made from the same message (a
    re-run of its flow), that one is returned and nothing is written.
    """
    if previous is not None and previous.inbox_id == decision.inbox_id:
        return previous
    if previous is not None:
        previous.superseded_at = utcnow()
        session.add(previous)
    session.add(decision)
    session.flush()
    for finding in findings:
        finding.decision_id = decision.id  # type: ignore[assignment]
        session.add(finding)
    session.flush()
    return decision


def withdraw_decision(*, session: Session, study_id: int) -> Decision | None:
    """Supersede the study's current decision without a successor (its report was cancelled);
    the withdrawn decision, None when there was none."""
    current = current_decision(session=session, study_id=study_id)
    if current is not None:
        current.superseded_at = utcnow()
        session.add(current)
        session.flush()
    return current


def open_referrals(*, session: Session, study_id: int) -> list[Referral]:
    return list(
        session.exec(
            select(Referral)
            .where(Referral.study_id == study_id, Referral.status != ReferralStatus.CANCELLED)
            .order_by(col(Referral.specialty))
        )
    )


def reconcile_referrals(
    *,
    session: Session,
    decision: Decision,
    reasons: dict[str, tuple[str, bool]],
    actor: str = ENGINE,
) -> None:
    """Make the study's open referrals match the decision: add new, cancel dropped ones.

    `reasons` maps specialty → (explanation, uncertain). Cancelling goes through the referral
    state machine, so it is in the referral's history and the audit trail; a completed
    referral is left as it is. Referrals the decision keeps follow it (their overdue allowance
    is the current decision's tier).
    """
    assert decision.id is not None
    existing = {r.specialty: r for r in open_referrals(session=session, study_id=decision.study_id)}
    cancel_referrals(
        session=session,
        referrals=[r for s, r in existing.items() if s not in decision.referrals],
        actor=actor,
        reason=f"decision {decision.id} no longer refers the patient there",
    )
    kept: list[Referral] = []
    added: list[Referral] = []
    for specialty in decision.referrals:
        referral = existing.get(specialty)
        if referral is not None:
            referral.decision_id = decision.id
            kept.append(referral)
            continue
        reason, uncertain = reasons.get(specialty, ("", False))
        added.append(
            Referral(
                study_id=decision.study_id,
                decision_id=decision.id,
                specialty=specialty,
                reason=reason,
                uncertain=uncertain,
            )
        )
    session.add_all([*kept, *added])
    session.flush()
    for referral in added:
        ehr_outbox.record_referral_change(
            session=session, referral=referral, change=ehr_outbox.ReferralChange.OPENED
        )
        audit(
            session=session,
            actor=actor,
            action=f"referral.{ReferralStatus.INITIATED}",
            entity="referral",
            entity_id=referral.id,
            detail={
                "specialty": referral.specialty,
                "decision_id": decision.id,
                "uncertain": referral.uncertain,
            },
        )


def transition_referral(
    *,
    session: Session,
    referral_id: int,
    to: str,
    actor: str,
    reason: str = "",
    at: datetime | None = None,
    scheduled_for: datetime | None = None,
) -> Referral:
    """Move a referral to its next state (refusing moves the state machine does not allow),
    timestamped, kept in its history and audited. `scheduled` needs the appointment time."""
    referral = session.get(Referral, referral_id)
    if referral is None:
        raise LookupError(f"referral {referral_id} does not exist")
    target = check_transition(referral.status, to)
    if (target == ReferralStatus.SCHEDULED) != (scheduled_for is not None):
        raise BookingError("scheduled_for is given with, and only with, the scheduled state")
    at = at or utcnow()
    session.add(
        ReferralStatusChange(
            referral_id=referral_id,
            from_status=referral.status,
            to_status=target,
            at=at,
            actor=actor,
            reason=reason,
        )
    )
    audit(
        session=session,
        actor=actor,
        action=f"referral.{target}",
        entity="referral",
        entity_id=referral_id,
        detail={"from": referral.status, "to": target, "reason": reason},
    )
    referral.status = target
    referral.status_changed_at = at
    if target != ReferralStatus.COMPLETED:  # a completed referral keeps its visit's date
        referral.scheduled_for = scheduled_for
    session.add(referral)
    session.flush()
    if target == ReferralStatus.CANCELLED:
        ehr_outbox.record_referral_change(
            session=session, referral=referral, change=ehr_outbox.ReferralChange.CANCELLED
        )
    return referral


def cancel_referrals(
    *, session: Session, referrals: Iterable[Referral], actor: str, reason: str
) -> int:
    """Cancel each referral through the closed-loop state machine (history and audit kept);
    completed ones stay completed. Returns how many were cancelled."""
    cancelled = 0
    for referral in referrals:
        if referral.status in (ReferralStatus.COMPLETED, ReferralStatus.CANCELLED):
            continue
        assert referral.id is not None
        transition_referral(
            session=session,
            referral_id=referral.id,
            to=ReferralStatus.CANCELLED,
            actor=actor,
            reason=reason,
        )
        cancelled += 1
    return cancelled


# --- escalations and audit ---------------------------------------------------------------------


def record_escalation(
    *, session: Session, study_id: int, kind: str, reason: str, target: str
) -> Escalation:
    """One open escalation per study and kind: while it is unacknowledged a repeat returns it;
    after its acknowledgement the news is new and opens another (the old one stays history)."""
    existing = session.exec(
        select(Escalation).where(
            Escalation.study_id == study_id,
            Escalation.kind == kind,
            Escalation.status == EscalationStatus.OPEN,
        )
    ).first()
    if existing is not None:
        return existing
    escalation = Escalation(study_id=study_id, kind=kind, reason=reason, target=target)
    session.add(escalation)
    session.flush()
    return escalation


def close_superseded_escalations(
    *, session: Session, study_id: int, kinds: tuple[str, ...], decision_id: int
) -> list[int]:
    """Close the open escalations of these kinds: the report they were about was corrected,
    and the correction's own decision opens new ones where it still needs them. Audited."""
    open_ones = session.exec(
        select(Escalation).where(
            Escalation.study_id == study_id,
            col(Escalation.kind).in_(kinds),
            Escalation.status == EscalationStatus.OPEN,
        )
    ).all()
    for escalation in open_ones:
        escalation.status = EscalationStatus.SUPERSEDED
        escalation.acknowledged_at = utcnow()
        escalation.acknowledged_by = f"engine: superseded by decision {decision_id}"
        session.add(escalation)
        audit(
            session=session,
            actor="engine",
            action="escalation.superseded",
            entity="escalation",
            entity_id=escalation.id,
            detail={"study_id": study_id, "kind": escalation.kind, "decision_id": decision_id},
        )
    session.flush()
    return [e.id for e in open_ones if e.id is not None]


def escalations_for_study(*, session: Session, study_id: int) -> list[Escalation]:
    return list(
        session.exec(
            select(Escalation).where(Escalation.study_id == study_id).order_by(col(Escalation.id))
        )
    )


# --- outbox ------------------------------------------------------------------------------------


def enqueue_messages(
    *, session: Session, messages: Iterable[OutboundMessageBase]
) -> list[OutboundMessage]:
    """Insert planned messages unless their idempotency key is already there; the stored rows
    in the order planned. One read for all the keys and one flush for the new rows: a visit
    plans three to five texts, and a flush per row costs more than its insert."""
    planned = list(messages)
    if not planned:
        return []
    keys = [message.idempotency_key for message in planned]
    stored = {
        message.idempotency_key: message
        for message in session.exec(
            select(OutboundMessage).where(col(OutboundMessage.idempotency_key).in_(keys))
        )
    }
    for message in planned:
        if message.idempotency_key not in stored:
            row = OutboundMessage.model_validate(message)
            stored[message.idempotency_key] = row
            session.add(row)
    session.flush()
    return [stored[key] for key in keys]


def visit_message_rows(
    planned: Iterable[PlannedSms], *, appointment_id: int, patient_id: int, to_phone: str | None
) -> list[OutboundMessageBase]:
    """Outbox rows for an appointment's planned texts, keyed (appointment, kind, occurrence)."""
    return [
        outbox_row(
            sms,
            key=f"appt:{appointment_id}:{sms.kind}:{sms.occurrence}",
            patient_id=patient_id,
            appointment_id=appointment_id,
            to_phone=to_phone,
        )
        for sms in planned
    ]


def outbox_row(
    planned: PlannedSms,
    *,
    key: str,
    patient_id: int,
    appointment_id: int | None,
    to_phone: str | None,
) -> OutboundMessageBase:
    """One planned text as an outbox row under its idempotency key."""
    return OutboundMessageBase(
        idempotency_key=key,
        patient_id=patient_id,
        appointment_id=appointment_id,
        kind=planned.kind,
        language=planned.language,
        template=planned.template,
        body=planned.body,
        encoding=planned.encoding,
        segments=planned.segments,
        to_phone=to_phone,
        scheduled_for=planned.send_at,
    )


def appointment_parties(
    *, session: Session, appointment_id: int
) -> tuple[Appointment, Patient, Provider]:
    """The appointment with its patient and provider, in one read (NoResultFound if absent)."""
    appointment, patient, provider = session.exec(
        select(Appointment, Patient, Provider)
        .join(Patient, col(Patient.id) == Appointment.patient_id)
        .join(Provider, col(Provider.id) == Appointment.provider_id)
        .where(Appointment.id == appointment_id)
    ).one()
    return appointment, patient, provider


def replaced_appointment(*, session: Session, appointment_id: int) -> Appointment | None:
    """The appointment this one was booked to replace (moved), if any."""
    return session.exec(
        select(Appointment).where(Appointment.replaced_by_id == appointment_id)
    ).first()


def cancel_pending_messages(*, session: Session, appointment_id: int) -> int:
    pending = session.exec(
        select(OutboundMessage).where(
            OutboundMessage.appointment_id == appointment_id,
            OutboundMessage.status == OutboundStatus.SCHEDULED,
        )
    ).all()
    for message in pending:
        message.status = OutboundStatus.CANCELLED
        session.add(message)
    return len(pending)


def messages_for_appointment(*, session: Session, appointment_id: int) -> list[OutboundMessage]:
    return list(
        session.exec(
            select(OutboundMessage)
            .where(OutboundMessage.appointment_id == appointment_id)
            .order_by(col(OutboundMessage.scheduled_for))
        )
    )


def provider_by_npi(*, session: Session, npi: str) -> Provider | None:
    return session.exec(select(Provider).where(Provider.npi == npi)).first()


def active_providers(*, session: Session) -> list[Provider]:
    return list(
        session.exec(select(Provider).where(col(Provider.active)).order_by(col(Provider.id)))
    )


def fallback_providers(*, session: Session, provider: Provider) -> list[Provider]:
    """The provider, their covering provider and their practice's colleagues, active ones only,
    in that order (the booking fallback chain's people)."""
    chain = [provider]
    if provider.covering_provider_id is not None:
        covering = session.get(Provider, provider.covering_provider_id)
        if covering is not None:
            chain.append(covering)
    chain += session.exec(
        select(Provider)
        .where(Provider.practice == provider.practice, col(Provider.id) != provider.id)
        .order_by(col(Provider.id))
    ).all()
    unique = {p.id: p for p in chain if p.active}  # one entry each, in first-seen order
    return list(unique.values())


def finding_labels(*, session: Session, decision: Decision) -> list[str]:
    """The decision's finding labels, affirmed ones first, each once; negated ones marked."""
    findings = session.exec(
        select(Finding).where(Finding.decision_id == decision.id).order_by(col(Finding.id))
    ).all()
    labels = [f.label + (" (uncertain)" if f.uncertain else "") for f in findings if not f.negated]
    labels += [f"no {f.label}" for f in findings if f.negated]
    return list(dict.fromkeys(labels))


def review_decision(
    *, session: Session, study_id: int, urgency: str, referrals: list[str], by: str
) -> bool:
    """A person's reading of the report: when it changes the urgency or the referrals, a new
    current decision supersedes the engine's (referrals reconciled) and True; else nothing."""
    previous = current_decision(session=session, study_id=study_id)
    if previous is None:
        return False
    if previous.urgency == urgency and sorted(previous.referrals) == sorted(referrals):
        return False
    previous.superseded_at = utcnow()
    session.add(previous)
    reviewed = Decision(
        study_id=study_id,
        inbox_id=previous.inbox_id,
        urgency=urgency,
        critical=previous.critical,
        needs_review=False,
        referrals=sorted(referrals),
        additional_testing=list(previous.additional_testing),
        rules_version=previous.rules_version,
        explanation=f"reviewed by {by}: urgency {urgency}, referrals "
        f"{', '.join(sorted(referrals)) or 'none'}\n{previous.explanation}",
    )
    session.add(reviewed)
    session.flush()
    reconcile_referrals(
        session=session,
        decision=reviewed,
        reasons={s: (f"{s}: referred on review by {by}", False) for s in referrals},
        actor=by,
    )
    audit(
        session=session,
        actor=by,
        action="decision.reviewed",
        entity="study",
        entity_id=study_id,
        detail={
            "decision_id": reviewed.id,
            "supersedes": previous.id,
            "urgency": urgency,
            "referrals": sorted(referrals),
        },
    )
    return True


def studies_awaiting_provider(*, session: Session) -> list[tuple[ImagingStudy, Provider]]:
    """Studies whose ordering provider was not in the directory when they came, with the
    provider now there under that key."""
    return [
        (study, provider)
        for study, provider in session.exec(
            select(ImagingStudy, Provider)
            .join(Provider, col(Provider.npi) == col(ImagingStudy.ordering_provider_key))
            .where(col(ImagingStudy.ordering_provider_id).is_(None))
            .order_by(col(ImagingStudy.id))
        ).all()
    ]


def close_escalations(
    *, session: Session, study_id: int, kinds: tuple[str, ...], by: str, why: str
) -> list[int]:
    """Close the study's open escalations of `kinds` (nobody needs to act on them any more)."""
    closed = []
    for escalation in escalations_for_study(session=session, study_id=study_id):
        if escalation.kind in kinds and escalation.status == EscalationStatus.OPEN:
            escalation.status = EscalationStatus.ACKNOWLEDGED
            escalation.acknowledged_at = utcnow()
            escalation.acknowledged_by = by
            session.add(escalation)
            assert escalation.id is not None
            closed.append(escalation.id)
            audit(
                session=session,
                actor=by,
                action="escalation.acknowledged",
                entity="escalation",
                entity_id=escalation.id,
                detail={"kind": escalation.kind, "via": by, "why": why},
            )
    session.flush()
    return closed


# A text in one of these states reached Twilio (or the dry-run outbox that stands in for it).
TOLD_STATUSES = (
    OutboundStatus.QUEUED,
    OutboundStatus.SENDING,
    OutboundStatus.SENT,
    OutboundStatus.DELIVERED,
    OutboundStatus.DRY_RUN,
)


def patient_told_of(*, session: Session, appointment_id: int) -> bool:
    """Whether any text about this visit, or a visit it replaced, has gone out: until one
    has, the patient's first message about it must be its confirmation (a "moved" or
    "cancelled" text about a visit they never heard of is noise, or alarming)."""
    current: int | None = appointment_id
    while current is not None:
        told = session.exec(
            select(OutboundMessage.id).where(
                OutboundMessage.appointment_id == current,
                col(OutboundMessage.status).in_(TOLD_STATUSES),
            )
        ).first()
        if told is not None:
            return True
        replaced = replaced_appointment(session=session, appointment_id=current)
        current = replaced.id if replaced is not None else None
    return False
