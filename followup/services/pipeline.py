"""The engine's use cases, one function per step of the scan-completed flow.

Each step takes its database session as an argument (the adapter is passed in, never built
here) and calls the pure core (parsing, routing, scheduling, messaging). The Prefect flow in
flows/ only sequences these; the CLI and the tests call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session

from followup.core import inbox_lifecycle, routing
from followup.core.rules import RoutingRules
from followup.core.scheduling import EMERGENT, BookingWindow, WindowPolicy, booking_window
from followup.errors import FollowupError, InboundMessageError
from followup.ris.scan import PersonName, ScanCompleted
from followup.services import intake, moves, visits
from followup.settings import Settings
from models import booking, calendar_queries, ehr_outbox, inbox_queries, queries
from models.ehr_outbox import VisitChange
from models.tables import (
    Appointment,
    Decision,
    Finding,
    ImagingStudy,
    InboxStatus,
    Patient,
)
from models.types import utcnow

ACTOR = "engine"


# --- the scan-completed steps ------------------------------------------------------------------

CANCELLED_RESULT = "X"


class InboxRowNotClaimable(FollowupError):
    """This run must not touch the inbox row: another run owns it, or it is finished."""


class InboxRowClaimed(InboxRowNotClaimable):
    """Another flow run holds the inbox row under a live lease."""


class InboxRowFinished(InboxRowNotClaimable):
    """The row was processed (or held, or refused) already: a stray or repeated run must not
    redo its booking and texts, and answers with the row's stored summary instead. A person
    re-runs a failed row through `followup inbox retry`."""

    def __init__(self, message: str, *, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def load_scan(
    *, session: Session, inbox_id: int, settings: Settings, now: datetime | None = None
) -> ScanCompleted:
    """Claim the row for this run and re-read the stored raw message; the inbox row, not the
    event, is the record. A row another run claimed less than the lease ago is refused, one
    whose run died (older claim) is taken over."""
    now = now or utcnow()
    row = queries.get_inbox_message(session=session, inbox_id=inbox_id)
    lease = timedelta(seconds=settings.processing_lease_seconds)
    if not inbox_queries.claim_message(
        session=session, inbox_id=inbox_id, now=now, stale_before=now - lease
    ):
        if row.status == InboxStatus.PROCESSING:
            raise InboxRowClaimed(f"inbox message {inbox_id} is being processed by another run")
        raise InboxRowFinished(
            f"inbox message {inbox_id} is {row.status} already; not processed again",
            summary=dict(row.summary or {}),
        )
    return intake.parse_stored(row, settings)


def read_scan(*, session: Session, inbox_id: int, settings: Settings) -> ScanCompleted:
    """The stored message of a row, parsed, without claiming it (the run has the claim)."""
    return intake.parse_stored(
        queries.get_inbox_message(session=session, inbox_id=inbox_id), settings
    )


@dataclass(frozen=True, slots=True)
class RecordedStudy:
    study_id: int
    patient_id: int
    decision_id: int | None  # None when the report was cancelled (no current decision)
    ordering_provider_id: int | None
    urgency: str
    critical: bool
    held: bool  # nothing to book: a preliminary, or a report older than the study's
    escalation_ids: tuple[int, ...] = field(default_factory=tuple)
    withdrawn: bool = False  # the result was cancelled (X): its follow-up goes too


def record_decision(
    *,
    session: Session,
    inbox_id: int,
    scan: ScanCompleted,
    decision: routing.Decision,
    rules: RoutingRules,
    on_call_npi: str | None = None,
) -> RecordedStudy:
    """Store patient, study, decision, findings, referrals and the escalations it calls for.

    A critical finding goes to the ordering provider; when they are not in the directory, to
    the on-call provider (`on_call_npi`), else to the schedulers' queue: never to a bare key
    nobody owns.

    A corrected report supersedes the decision and reconciles the referrals; a cancelled one
    withdraws both; a report older than the study's current one changes nothing (held).
    """
    patient = queries.upsert_patient(session=session, scan=scan)
    provider = queries.find_provider(session=session, ref=scan.ordering_provider)
    study = queries.upsert_study(
        session=session, scan=scan, patient=patient, provider=provider, inbox_id=inbox_id
    )
    assert study.id is not None and patient.id is not None
    recorded = RecordedStudy(
        study_id=study.id,
        patient_id=patient.id,
        decision_id=None,
        ordering_provider_id=provider.id if provider else None,
        urgency=decision.urgency,
        critical=decision.critical,
        held=False,
    )
    if queries.is_stale_report(study=study, scan=scan, inbox_id=inbox_id):
        return _stale(session, recorded, scan, inbox_id)
    if scan.result_status == CANCELLED_RESULT:
        return _withdraw(session, recorded, inbox_id)
    previous = queries.current_decision(session=session, study_id=study.id)
    stored = queries.record_decision(
        session=session,
        previous=previous,
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
    if previous is not None and previous.id != stored.id:
        # A review asked about the superseded text is moot; the corrected text's own decision
        # asks again below if it still needs one. Critical findings stay open until a doctor
        # acknowledges them, correction or not.
        queries.close_superseded_escalations(
            session=session, study_id=study.id, kinds=("needs_review",), decision_id=stored.id
        )
    escalations = []
    target = provider.npi if provider is not None else (on_call_npi or booking.SCHEDULER_QUEUE)
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
    if previous is None or previous.id != stored.id:
        queries.audit(
            session=session,
            actor=ACTOR,
            action="decision.recorded",
            entity="study",
            entity_id=study.id,
            detail={
                "decision_id": stored.id,
                "inbox_id": inbox_id,
                "result_status": scan.result_status,
                "urgency": decision.urgency,
                "referrals": list(decision.referrals),
                "held": held,
                "supersedes": previous.id if previous else None,
            },
        )
    return replace(
        recorded,
        decision_id=stored.id,
        held=held,
        escalation_ids=tuple(e.id for e in escalations if e.id is not None),
    )


def _stale(
    session: Session, recorded: RecordedStudy, scan: ScanCompleted, inbox_id: int
) -> RecordedStudy:
    """A report older than the study's current one: kept in the inbox, routed never."""
    current = queries.current_decision(session=session, study_id=recorded.study_id)
    queries.audit(
        session=session,
        actor=ACTOR,
        action="report.stale",
        entity="study",
        entity_id=recorded.study_id,
        detail={"inbox_id": inbox_id, "result_status": scan.result_status},
    )
    return replace(
        recorded,
        decision_id=current.id if current else None,
        urgency=current.urgency if current else recorded.urgency,
        critical=current.critical if current else False,
        held=True,
    )


def _withdraw(session: Session, recorded: RecordedStudy, inbox_id: int) -> RecordedStudy:
    """A cancelled result: its decision is superseded with no successor and its referrals are
    cancelled (the follow-up goes in book_follow_up). A repeat finds nothing left to do."""
    withdrawn = queries.withdraw_decision(session=session, study_id=recorded.study_id)
    cancelled = queries.cancel_referrals(
        session=session,
        referrals=queries.open_referrals(session=session, study_id=recorded.study_id),
        actor=ACTOR,
        reason="the result was cancelled by the RIS (OBR-25 X)",
    )
    if withdrawn is not None or cancelled:
        queries.audit(
            session=session,
            actor=ACTOR,
            action="decision.withdrawn",
            entity="study",
            entity_id=recorded.study_id,
            detail={
                "inbox_id": inbox_id,
                "decision_id": withdrawn.id if withdrawn else None,
                "referrals_cancelled": cancelled,
            },
        )
    return replace(recorded, critical=False, withdrawn=True)


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
    *,
    session: Session,
    recorded: RecordedStudy,
    settings: Settings,
    now: datetime | None = None,
) -> BookingOutcome:
    """Make the study's follow-up match its current decision.

    No follow-up yet: book in the tier's window with the ordering provider, else their
    covering provider, else another provider of the practice; else waitlist the patient and
    escalate to the schedulers' queue. A follow-up already booked (the report was corrected,
    or the flow runs again) is kept while it lies in the tier's window, moved into it when it
    does not, and cancelled when the result was cancelled or is now emergent.
    """
    now = now or utcnow()
    study = session.get(ImagingStudy, recorded.study_id)
    assert study is not None
    existing = booking.active_follow_up(session=session, study_id=recorded.study_id)
    if recorded.withdrawn:
        why = "the result was cancelled by the RIS"
        _withdraw_waitlisted(session, study, settings, now=now, why=why)
        if existing is None:
            return BookingOutcome(None, None, "result cancelled: no follow-up to cancel")
        return _cancel_follow_up(session, study, existing, settings, now=now, why=why)
    if recorded.urgency == EMERGENT:
        reason = "emergent: no routine booking; escalated to the ordering provider"
        why = f"the corrected report is {reason}"
        _withdraw_waitlisted(session, study, settings, now=now, why=why)
        if existing is None:
            return BookingOutcome(None, None, reason)
        return _cancel_follow_up(session, study, existing, settings, now=now, why=why)
    if existing is not None and (existing.tier == recorded.urgency or study.final_at is None):
        # Same tier: the window it was booked in still holds, whatever time the correction
        # has (counting again from it would move a visit for nothing).
        return BookingOutcome(existing.id, None, "already booked")
    if recorded.ordering_provider_id is None and existing is None:
        key = study.ordering_provider_key or "(none)"
        unknown = f"ordering provider {key} not in the directory"
        on_call = (
            queries.provider_by_npi(session=session, npi=settings.on_call_provider_npi)
            if settings.on_call_provider_npi
            else None
        )
        if on_call is None or on_call.id is None:
            return _unbookable(session, study, unknown)
        # The visit must not wait for the directory: the on-call provider takes it, and a
        # person learns whose patient it is (a later import of the provider closes the task).
        queries.record_escalation(
            session=session,
            study_id=recorded.study_id,
            kind="unknown_provider",
            reason=f"{unknown}: booked with the on-call {on_call.display_name} (NPI "
            f"{on_call.npi}); import the provider (followup providers import) or confirm",
            target=booking.SCHEDULER_QUEUE,
        )
        recorded = replace(recorded, ordering_provider_id=on_call.id)
    if study.final_at is None:
        return _unbookable(session, study, "no exam or result time to count the window from")
    window, closed_days = due_window(
        session=session, study=study, urgency=recorded.urgency, settings=settings
    )
    if window.latest <= now:
        # A late report (its window passed before it arrived): the earliest slot from now
        # within the tier's length, said in the audit trail and the booking's reason; its
        # waitlist entry, if any, waits in that window rather than lapsing at once.
        passed = window.describe(settings.site_zone)
        window = window.from_now(now)
        queries.audit(
            session=session,
            actor=ACTOR,
            action="booking.window_passed",
            entity="study",
            entity_id=study.id,
            detail={"passed": passed, "searching": window.describe(settings.site_zone)},
        )
    patient = session.get(Patient, recorded.patient_id)
    assert patient is not None
    if existing is not None:
        return _follow_up_for_new_tier(session, existing, window, settings, now=now)
    assert recorded.ordering_provider_id is not None
    waiting = booking.open_waitlist_entry(session=session, study_id=recorded.study_id)
    if waiting is not None and waiting.urgency != window.tier:
        # Its entry waits in the old tier's window: an offer there is no longer the visit due.
        _withdraw_waitlisted(
            session, study, settings, now=now, why=f"the corrected report is {window.tier}"
        )
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
        booked = session.get_one(Appointment, result.booked.appointment_id)
        ehr_outbox.record_visit_change(
            session=session, appointment=booked, change=VisitChange.BOOKED
        )
        # Booked on a later run: an entry still waiting would be offered a second visit.
        _withdraw_waitlisted(session, study, settings, now=now, why="the follow-up is booked")
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


def due_window(
    *, session: Session, study: ImagingStudy, urgency: str, settings: Settings
) -> tuple[BookingWindow, frozenset[date]]:
    """The tier's booking window counted from the study's result, and the site's closed days."""
    assert study.final_at is not None
    closed_days = calendar_queries.site_closed_days(
        session=session,
        settings=settings,
        years=range(study.final_at.year, study.final_at.year + 2),
    )
    window = booking_window(
        study.final_at,
        urgency,
        zone=settings.site_zone,
        closed_days=closed_days,
        policy=WindowPolicy(
            routine_min_days=settings.routine_window_min_days,
            routine_max_days=settings.routine_window_max_days,
            urgent_business_days=settings.urgent_window_business_days,
        ),
    )
    assert window is not None  # emergent never gets here
    return window, closed_days


def _follow_up_for_new_tier(
    session: Session,
    existing: Appointment,
    window: BookingWindow,
    settings: Settings,
    *,
    now: datetime,
) -> BookingOutcome:
    """The tier changed: keep the visit if it lies in the new window, else move it into it;
    when nothing fits there the patient keeps the visit and a scheduler moves it by hand (no
    waitlist entry: an offer accepted later would book a second visit beside the kept one)."""
    assert existing.id is not None
    if window.contains(existing.start):
        from_tier = existing.tier
        _retier(session, existing, window)
        queries.audit(
            session=session,
            actor=ACTOR,
            action="follow_up.kept",
            entity="appointment",
            entity_id=existing.id,
            detail={
                "appointment_id": existing.id,
                "tier": from_tier,
                "to_tier": window.tier,
                "reason": "still in the new tier's window",
            },
        )
        return BookingOutcome(existing.id, None, f"already booked, in the {window.tier} window")
    move = moves.move_appointment(
        session=session,
        appointment_id=existing.id,
        reason=f"report corrected to {window.tier}",
        policy=moves.NothingFits.KEEP,
        settings=settings,
        now=now,
        actor=ACTOR,
        after=now,
        window=window,
    )
    if move.appointment is None:
        return BookingOutcome(existing.id, move.task_id, move.reason)
    return BookingOutcome(move.appointment.id, None, f"moved: {move.reason}")


def book_waiting_scans(
    *, session: Session, settings: Settings, now: datetime | None = None
) -> list[BookingOutcome]:
    """After a provider import: scans whose ordering provider was unknown are linked to them,
    their unknown-provider and no-slot tasks closed, and those with nothing booked yet booked
    as their first run would have (with reminders)."""
    now = now or utcnow()
    outcomes = []
    for study, provider in queries.studies_awaiting_provider(session=session):
        assert study.id is not None and provider.id is not None
        study.ordering_provider_id = provider.id
        session.add(study)
        queries.close_escalations(
            session=session,
            study_id=study.id,
            kinds=("unknown_provider", "unbookable"),
            by="provider-import",
            why=f"ordering provider {provider.display_name} (NPI {provider.npi}) imported",
        )
        decision = queries.current_decision(session=session, study_id=study.id)
        if decision is None or booking.active_follow_up(session=session, study_id=study.id):
            continue
        recorded = RecordedStudy(
            study_id=study.id,
            patient_id=study.patient_id,
            decision_id=decision.id,
            ordering_provider_id=provider.id,
            urgency=decision.urgency,
            critical=decision.critical,
            held=False,
        )
        outcome = book_follow_up(session=session, recorded=recorded, settings=settings, now=now)
        if outcome.appointment_id is not None:
            schedule_reminders(
                session=session, appointment_id=outcome.appointment_id, settings=settings, now=now
            )
        outcomes.append(outcome)
    return outcomes


def _retier(session: Session, kept: Appointment, window: BookingWindow) -> None:
    """A visit kept through a tier change belongs to the new decision: a reschedule asked
    later searches the window it is due in now, not the one it was booked in."""
    kept.tier = window.tier
    kept.window_start = window.earliest
    kept.window_end = window.latest
    session.add(kept)


def _cancel_follow_up(
    session: Session,
    study: ImagingStudy,
    existing: Appointment,
    settings: Settings,
    *,
    now: datetime,
    why: str,
) -> BookingOutcome:
    """Cancel the visit and its unsent texts; the schedulers tell the patient (a text saying
    only "cancelled" could read as "no care needed"). The freed slot is offered by text."""
    assert existing.id is not None and study.id is not None
    cancelled = booking.cancel_appointment(
        session=session,
        timing=settings.offer_timing,
        appointment_id=existing.id,
        reason=why,
        now=now,
        actor=ACTOR,
    )
    visits.enqueue_offer_texts(
        session=session, offers=[cancelled.offer], settings=settings, now=now
    )
    escalation = queries.record_escalation(
        session=session,
        study_id=study.id,
        kind="visit_cancelled",
        reason=f"follow-up appointment {existing.id} cancelled: {why}; tell the patient",
        target=booking.SCHEDULER_QUEUE,
    )
    return BookingOutcome(None, escalation.id, f"follow-up cancelled: {why}")


def _withdraw_waitlisted(
    session: Session, study: ImagingStudy, settings: Settings, *, now: datetime, why: str
) -> None:
    """Take the study off the waitlist (no-op when it is not on it); the slot its pending
    offer held goes to the next patient, by text."""
    assert study.id is not None
    withdrawal = booking.withdraw_from_waitlist(
        session=session,
        timing=settings.offer_timing,
        study_id=study.id,
        reason=why,
        now=now,
        actor=ACTOR,
    )
    visits.enqueue_offer_texts(
        session=session, offers=[withdrawal.next_offer], settings=settings, now=now
    )


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
    """Store the visit's notice and reminders (idempotent per appointment and kind), planned
    as the CLI and SMS paths plan them.

    A visit that replaced another (moved after a corrected report) gets the `reschedule` text
    instead of the confirmation when the patient was told of the old time.
    """
    replaced = queries.replaced_appointment(session=session, appointment_id=appointment_id)
    told = (
        replaced is not None
        and replaced.id is not None
        and queries.patient_told_of(session=session, appointment_id=replaced.id)
    )
    texts = visits.plan_visit_texts(
        session=session,
        appointment_id=appointment_id,
        settings=settings,
        now=now,
        notice="reschedule" if told else "confirmation",
    )
    return [*([texts.notice] if texts.notice is not None else []), *texts.reminders]


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
    found = (
        queries.study_with_patient(session=session, accession=row.accession)
        if row.accession
        else None
    )
    if found is None:
        return summary
    study, patient = found
    assert study.id is not None
    summary["patient_initials"] = PersonName(patient.family_name, patient.given_name).initials
    decision = queries.current_decision(session=session, study_id=study.id)
    appointment, provider = booking.active_follow_up_with_provider(
        session=session, study_id=study.id
    ) or (None, None)
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
    summary["appointment"] = (
        {
            "id": appointment.id,
            "start": appointment.start.isoformat(),
            "provider_npi": provider.npi,
            "provider": provider.display_name,
            "status": appointment.status,
        }
        if appointment and provider
        else None
    )
    summary["referrals"] = [
        {"specialty": r.specialty, "status": r.status, "uncertain": r.uncertain}
        for r in queries.open_referrals(session=session, study_id=study.id)
    ]
    summary["escalations"] = [
        {
            "id": e.id,
            "kind": e.kind,
            "status": e.status,
            "target": e.target,
            "target_name": queries.provider_label(session=session, key=e.target),
        }
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


def finish(*, session: Session, inbox_id: int, held: bool) -> dict[str, Any]:
    """Mark the inbox row done and keep the summary on it, so a resend gets the same answer."""
    row = queries.get_inbox_message(session=session, inbox_id=inbox_id)
    row.status = InboxStatus.HELD if held else InboxStatus.PROCESSED
    row.processed_at = utcnow()
    # summarize reads the status from this object, not the table: unflushed, one UPDATE
    # writes both.
    with session.no_autoflush:
        summary = summarize(session=session, inbox_id=inbox_id)
    row.summary = summary
    session.add(row)
    return summary


def fail(
    *,
    session: Session,
    inbox_id: int,
    error: Exception,
    settings: Settings,
    now: datetime | None = None,
) -> inbox_lifecycle.FailureOutcome | None:
    """Record a failed attempt: the row goes to `retry` or, when retrying cannot help or the
    attempts are spent, to `needs_action` with what a person must do. None when the row was
    not this run's to record (another run holds it, or it was finished before)."""
    if isinstance(error, InboxRowNotClaimable):
        return None
    now = now or utcnow()
    row = queries.get_inbox_message(session=session, inbox_id=inbox_id)
    row.attempts += 1
    outcome = inbox_lifecycle.after_failure(
        error,
        inbox_id=inbox_id,
        attempts=row.attempts,
        max_attempts=settings.inbox_max_attempts,
        now=now,
        base_seconds=settings.inbox_retry_base_seconds,
        max_seconds=settings.inbox_retry_max_seconds,
    )
    row.status = InboxStatus.NEEDS_ACTION if outcome.needs_person else InboxStatus.RETRY
    row.next_attempt_at = outcome.retry_at
    row.error = outcome.error
    row.error_location = error.location if isinstance(error, InboundMessageError) else None
    row.summary = {"action": outcome.action}
    session.add(row)
    queries.audit(
        session=session,
        actor=ACTOR,
        action="inbox.held" if outcome.needs_person else "inbox.retry_scheduled",
        entity="inbox_message",
        entity_id=inbox_id,
        detail={
            "accession": row.accession,
            "attempts": row.attempts,
            "error": outcome.error,
            "next_attempt_at": outcome.retry_at.isoformat() if outcome.retry_at else None,
        },
    )
    return outcome


def run_tags(decision: routing.Decision, *, site: str, result_status: str = "F") -> list[str]:
    """`route:<specialty>` per referral (or the ordering provider), `urgency:<tier>`, `site:`;
    `result:corrected` for a corrected report. A cancelled result routes nothing: its text
    (if any) is not what the run acts on, so it is tagged `result:cancelled` only."""
    if result_status == CANCELLED_RESULT:
        return ["result:cancelled", tag("site", site)]
    routes = list(decision.referrals) or ["ordering-provider"]
    if decision.critical:
        routes.append("critical-escalation")
    if decision.needs_review:
        routes.append("needs-review")
    tags = [*(tag("route", route) for route in routes), tag("urgency", decision.urgency)]
    tags.append(tag("site", site))
    if result_status == "C":
        tags.append("result:corrected")
    return tags


def tag(kind: str, value: str) -> str:
    """One spelling for every run tag, `kind:value` in lowercase words joined by dashes
    (`route:pain-management`, `route:needs-review`), so a filter typed once finds them all."""
    return f"{kind}:{value.strip().lower().replace('_', '-').replace(' ', '-')}"


def local_time(moment: datetime, zone: ZoneInfo) -> str:
    """A time as a scheduler reads it: the site's zone, named (`Mon 2026-12-14 09:00 EST`)."""
    return moment.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")


def artifact_key(accession: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in accession.lower())
    return f"scan-{cleaned}".strip("-")


def scheduler_markdown(summary: dict[str, Any], *, zone: ZoneInfo) -> str:
    """What a scheduler sees in the Prefect UI: accession, patient initials, the visit in the
    site's time with its zone named, the provider by name with the NPI beside; no report text.
    """
    decision = summary.get("decision") or {}
    appointment = summary.get("appointment")
    follow_up = (
        f"{local_time(datetime.fromisoformat(appointment['start']), zone)} with "
        f"{appointment['provider']} (NPI {appointment['provider_npi']})"
        if appointment
        else "not booked"
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
        lines += [
            f"- {e['kind']} ({e['status']}) → {e.get('target_name') or e['target']}"
            for e in escalations
        ]
    explanation = decision.get("explanation", [])
    if explanation:
        lines += ["", "## Why", ""] + [f"- {line}" for line in explanation]
    return "\n".join(lines)
