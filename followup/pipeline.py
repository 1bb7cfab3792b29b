"""The engine's use cases, one function per step of the scan-completed flow.

Each step takes its database session as an argument (the adapter is passed in, never built
here) and calls the pure core (parsing, routing, scheduling, messaging). The Prefect flow in
flows/ only sequences these; the CLI and the tests call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session

from followup import intake, routing
from followup.errors import InboundMessageError
from followup.messaging.plan import VisitDetails, plan_booking_messages
from followup.ris.scan import PersonName, ScanCompleted
from followup.rules import RoutingRules
from followup.scheduling import EMERGENT, WindowPolicy, booking_window
from followup.settings import Settings
from models import booking, queries
from models.tables import (
    Appointment,
    Decision,
    Finding,
    ImagingStudy,
    InboxStatus,
    Patient,
    Provider,
)
from models.types import utcnow

ACTOR = "engine"


# --- the scan-completed steps ------------------------------------------------------------------


def load_scan(*, session: Session, inbox_id: int, settings: Settings) -> ScanCompleted:
    """Re-read the stored raw message; the inbox row, not the event, is the record."""
    row = queries.get_inbox_message(session=session, inbox_id=inbox_id)
    row.status = InboxStatus.PROCESSING
    session.add(row)
    return intake.parse_stored(row, settings)


@dataclass(frozen=True, slots=True)
class RecordedStudy:
    study_id: int
    patient_id: int
    decision_id: int
    ordering_provider_id: int | None
    urgency: str
    critical: bool
    held: bool
    escalation_ids: tuple[int, ...] = field(default_factory=tuple)


def record_decision(
    *,
    session: Session,
    inbox_id: int,
    scan: ScanCompleted,
    decision: routing.Decision,
    rules: RoutingRules,
) -> RecordedStudy:
    """Store patient, study, decision, findings, referrals and the escalations it calls for."""
    patient = queries.upsert_patient(session=session, scan=scan)
    provider = queries.find_provider(session=session, ref=scan.ordering_provider)
    study = queries.upsert_study(
        session=session, scan=scan, patient=patient, provider=provider, inbox_id=inbox_id
    )
    assert study.id is not None and patient.id is not None
    stored = queries.record_decision(
        session=session,
        decision=Decision(
            study_id=study.id,
            inbox_id=inbox_id,
            urgency=decision.urgency,
            critical=decision.critical,
            needs_review=decision.needs_review,
            referrals=list(decision.referrals),
            additional_testing=list(decision.additional_testing),
            rules_version=decision.rules_version,
            explanation="\n".join(decision.explanations),
        ),
        findings=[
            Finding(
                study_id=study.id,
                decision_id=0,  # set by record_decision once the decision has its id
                label=finding.label,
                text=finding.text,
                negated=finding.negated,
                uncertain=finding.uncertain,
                section=finding.section,
            )
            for finding in decision.findings
        ],
    )
    assert stored.id is not None
    # A preliminary report waits for the final one, unless it is critical (DOMAIN.md §5).
    held = scan.result_status == "P" and not decision.critical
    if not held:
        queries.reconcile_referrals(
            session=session, decision=stored, reasons=referral_reasons(decision, rules)
        )
    escalations = []
    target = scan.ordering_provider.identifier if scan.ordering_provider else "scheduler-queue"
    if decision.critical:
        escalations.append(
            queries.record_escalation(
                session=session,
                study_id=study.id,
                kind="critical_finding",
                reason="; ".join(decision.explanations) or "critical finding",
                target=target,
            )
        )
    if decision.needs_review:
        escalations.append(
            queries.record_escalation(
                session=session,
                study_id=study.id,
                kind="needs_review",
                reason="report language the rules could not route; a human must read it",
                target="scheduler-queue",
            )
        )
    queries.audit(
        session=session,
        actor=ACTOR,
        action="decision.recorded",
        entity="study",
        entity_id=study.id,
        detail={"urgency": decision.urgency, "referrals": list(decision.referrals), "held": held},
    )
    return RecordedStudy(
        study_id=study.id,
        patient_id=patient.id,
        decision_id=stored.id,
        ordering_provider_id=provider.id if provider else None,
        urgency=decision.urgency,
        critical=decision.critical,
        held=held,
        escalation_ids=tuple(e.id for e in escalations if e.id is not None),
    )


def referral_reasons(
    decision: routing.Decision, rules: RoutingRules
) -> dict[str, tuple[str, bool]]:
    """specialty → (the decision's explanation for it, whether it rests on uncertain findings)."""
    reasons: dict[str, tuple[str, bool]] = {}
    for specialty in decision.referrals:
        explanation = next(
            (line for line in decision.explanations if line.startswith(f"{specialty}:")), ""
        )
        supporting = [
            finding
            for finding in decision.findings
            if not (finding.negated or finding.historical or finding.hypothetical)
            and specialty in rules.rule(finding.label).referrals
        ]
        uncertain = bool(supporting) and all(finding.uncertain for finding in supporting)
        reasons[specialty] = (explanation, uncertain)
    return reasons


@dataclass(frozen=True, slots=True)
class BookingOutcome:
    appointment_id: int | None
    escalation_id: int | None
    reason: str


def book_follow_up(
    *, session: Session, recorded: RecordedStudy, settings: Settings
) -> BookingOutcome:
    """Book the follow-up in the tier's window: ordering provider, else their covering provider,
    else another provider of the practice; else waitlist the patient and escalate to the
    schedulers' queue. Idempotent: a study that already holds an active follow-up keeps it.
    """
    study = session.get(ImagingStudy, recorded.study_id)
    assert study is not None
    existing = booking.active_follow_up(session=session, study_id=recorded.study_id)
    if existing is not None:
        return BookingOutcome(existing.id, None, "already booked")
    if recorded.urgency == EMERGENT:
        return BookingOutcome(
            None, None, "emergent: no routine booking; escalated to the ordering provider"
        )
    if recorded.ordering_provider_id is None or study.final_at is None:
        reason = (
            f"ordering provider {study.ordering_provider_key or '(none)'} not in the directory"
            if recorded.ordering_provider_id is None
            else "no exam or result time to count the window from"
        )
        return _unbookable(session, study, reason)
    closed_days = booking.site_closed_days(
        session=session,
        settings=settings,
        years=range(study.final_at.year, study.final_at.year + 2),
    )
    window = booking_window(
        study.final_at,
        recorded.urgency,
        zone=settings.site_zone,
        closed_days=closed_days,
        policy=WindowPolicy(
            routine_min_days=settings.routine_window_min_days,
            routine_max_days=settings.routine_window_max_days,
            urgent_business_days=settings.urgent_window_business_days,
        ),
    )
    assert window is not None
    patient = session.get(Patient, recorded.patient_id)
    assert patient is not None
    result = booking.book_with_fallback(
        session=session,
        patient_id=recorded.patient_id,
        study_id=recorded.study_id,
        ordering_provider_id=recorded.ordering_provider_id,
        window=window,
        closed_days=closed_days,
        preferences=booking.patient_preferences(patient),
        actor=ACTOR,
    )
    if result.booked is not None:
        return BookingOutcome(result.booked.appointment_id, None, result.reason)
    booking.add_to_waitlist(
        session=session,
        patient_id=recorded.patient_id,
        study_id=recorded.study_id,
        provider_id=recorded.ordering_provider_id,
        window=window,
        reason=result.reason,
        actor=ACTOR,
    )
    return _unbookable(session, study, f"{result.reason}; waitlisted for a freed slot")


def _unbookable(session: Session, study: ImagingStudy, reason: str) -> BookingOutcome:
    """Escalate to the schedulers' queue; the reason says what was tried and why it failed."""
    assert study.id is not None
    escalation = queries.record_escalation(
        session=session,
        study_id=study.id,
        kind="unbookable",
        reason=reason,
        target=booking.SCHEDULER_QUEUE,
    )
    queries.audit(
        session=session,
        actor=ACTOR,
        action="booking.escalated",
        entity="study",
        entity_id=study.id,
        detail={"escalation_id": escalation.id, "reason": reason},
    )
    return BookingOutcome(None, escalation.id, reason)


def schedule_reminders(
    *, session: Session, appointment_id: int, settings: Settings, now: datetime
) -> list[int]:
    """Render and store the confirmation and reminders (idempotent per appointment and kind)."""
    appointment = session.get(Appointment, appointment_id)
    assert appointment is not None
    patient = session.get(Patient, appointment.patient_id)
    provider = session.get(Provider, appointment.provider_id)
    assert patient is not None and provider is not None
    patient_zone = _zone_or_none(patient.timezone)
    planned = plan_booking_messages(
        VisitDetails(
            start=appointment.start,
            provider_name=provider.display_name,
            clinic_name=settings.site_name,
            clinic_phone=settings.clinic_phone,
        ),
        language=patient.language,
        zone=patient_zone,  # None: the strict all-US quiet-hours window, as the dispatcher checks
        site_zone=settings.site_zone,
        now=now,
        reminder_days=tuple(settings.reminder_days_before),
        templates_dir=settings.templates_dir,
    )
    assert patient.id is not None
    stored = queries.enqueue_messages(
        session=session,
        messages=queries.visit_message_rows(
            planned,
            appointment_id=appointment_id,
            patient_id=patient.id,
            to_phone=patient.phone_e164,
        ),
    )
    return [message.id for message in stored if message.id is not None]


def _zone_or_none(name: str | None) -> ZoneInfo | None:
    return ZoneInfo(name) if name else None


# --- the summary every edge prints or answers with ---------------------------------------------


def summarize(*, session: Session, inbox_id: int) -> dict[str, Any]:
    row = queries.get_inbox_message(session=session, inbox_id=inbox_id)
    summary: dict[str, Any] = {
        "inbox_id": inbox_id,
        "status": row.status,
        "accession": row.accession,
        "error": row.error,
        "error_location": row.error_location,
        "duplicate_of": row.duplicate_of_id,
    }
    if row.status == InboxStatus.DUPLICATE and row.summary:
        return {**row.summary, **summary}
    study = (
        queries.study_by_accession(session=session, accession=row.accession)
        if row.accession
        else None
    )
    if study is None or study.id is None:
        return summary
    patient = session.get(Patient, study.patient_id)
    summary["patient_initials"] = (
        PersonName(patient.family_name, patient.given_name).initials if patient else ""
    )
    decision = queries.current_decision(session=session, study_id=study.id)
    appointment = booking.active_follow_up(session=session, study_id=study.id)
    summary["decision"] = (
        {
            "urgency": decision.urgency,
            "critical": decision.critical,
            "referrals": decision.referrals,
            "additional_testing": decision.additional_testing,
            "needs_review": decision.needs_review,
            "rules_version": decision.rules_version,
            "explanation": decision.explanation.splitlines(),
        }
        if decision
        else None
    )
    summary["appointment"] = _appointment_summary(session, appointment) if appointment else None
    summary["referrals"] = [
        {"specialty": r.specialty, "status": r.status, "uncertain": r.uncertain}
        for r in queries.open_referrals(session=session, study_id=study.id)
    ]
    summary["escalations"] = [
        {"id": e.id, "kind": e.kind, "status": e.status, "target": e.target}
        for e in queries.escalations_for_study(session=session, study_id=study.id)
    ]
    messages = (
        queries.messages_for_appointment(session=session, appointment_id=appointment.id)
        if appointment is not None and appointment.id is not None
        else []
    )
    summary["scheduled_messages"] = [
        {
            "kind": m.kind,
            "scheduled_for": m.scheduled_for.isoformat(),
            "status": m.status,
            "segments": m.segments,
            "body": m.body,
        }
        for m in messages
    ]
    return summary


def _appointment_summary(session: Session, appointment: Appointment) -> dict[str, Any]:
    provider = session.get(Provider, appointment.provider_id)
    return {
        "id": appointment.id,
        "start": appointment.start.isoformat(),
        "provider_npi": provider.npi if provider else None,
        "provider": provider.display_name if provider else None,
        "status": appointment.status,
    }


def finish(*, session: Session, inbox_id: int, held: bool) -> dict[str, Any]:
    """Mark the inbox row done and keep the summary on it, so a resend gets the same answer."""
    row = queries.get_inbox_message(session=session, inbox_id=inbox_id)
    row.status = InboxStatus.HELD if held else InboxStatus.PROCESSED
    row.processed_at = utcnow()
    session.add(row)
    session.flush()
    summary = summarize(session=session, inbox_id=inbox_id)
    row.summary = summary
    session.add(row)
    return summary


def fail(*, session: Session, inbox_id: int, error: Exception) -> None:
    row = queries.get_inbox_message(session=session, inbox_id=inbox_id)
    row.status = InboxStatus.ERROR
    row.error = str(error)
    row.error_location = error.location if isinstance(error, InboundMessageError) else None
    session.add(row)


def run_tags(decision: routing.Decision, *, site: str) -> list[str]:
    """`route:<specialty>` per referral (or the ordering provider), `urgency:<tier>`, `site:`."""
    routes = list(decision.referrals) or ["ordering-provider"]
    if decision.critical:
        routes.append("critical-escalation")
    if decision.needs_review:
        routes.append("needs-review")
    return [*(f"route:{route}" for route in routes), f"urgency:{decision.urgency}", f"site:{site}"]


def artifact_key(accession: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in accession.lower())
    return f"scan-{cleaned}".strip("-")


def scheduler_markdown(summary: dict[str, Any]) -> str:
    """What a scheduler sees in the Prefect UI: accession, initials, times; no names or text."""
    decision = summary.get("decision") or {}
    appointment = summary.get("appointment")
    follow_up = (
        f"{appointment['start']} with {appointment['provider']}" if appointment else "not booked"
    )
    lines = [
        f"# Scan {summary['accession']} ({summary.get('patient_initials', '')})",
        "",
        "| item | value |",
        "|---|---|",
        f"| status | {summary['status']} |",
        f"| urgency | {decision.get('urgency', '-')} |",
        f"| critical | {'yes' if decision.get('critical') else 'no'} |",
        f"| referrals | {', '.join(decision.get('referrals', [])) or 'none'} |",
        f"| additional testing | {', '.join(decision.get('additional_testing', [])) or 'none'} |",
        f"| needs review | {'yes' if decision.get('needs_review') else 'no'} |",
        f"| follow-up | {follow_up} |",
        f"| messages scheduled | {len(summary.get('scheduled_messages', []))} |",
        f"| rules version | {decision.get('rules_version', '-')} |",
    ]
    escalations = summary.get("escalations", [])
    if escalations:
        lines += ["", "## Escalations", ""]
        lines += [f"- {e['kind']} ({e['status']}) → {e['target']}" for e in escalations]
    explanation = decision.get("explanation", [])
    if explanation:
        lines += ["", "## Why", ""] + [f"- {line}" for line in explanation]
    return "\n".join(lines)
