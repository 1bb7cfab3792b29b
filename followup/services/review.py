"""A scan that needs a person: what the engine found, why it stopped, what it can offer, and
what the person's answer does.

`open_review` gathers the case (the study's open tasks that only a person can close: a report
to read, no slot, an unknown ordering provider, no phone) and the slots on offer, computed here
and not in the flow; `describe` renders it for the review form (accession, initials, findings,
times in the site's zone with the zone named, providers by name with the NPI beside);
`apply_review` acts on the answer: the urgency and referrals confirmed or changed, the chosen
slot booked (with its confirmation and reminders), or the patient called; audited as the
person who answered. A review nobody answers leaves its tasks open on the worklist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session

from followup.core.scheduling import EMERGENT, BookingWindow
from followup.core.worklist import REVIEWED_KINDS
from followup.errors import FollowupError
from followup.ris.scan import PersonName
from followup.services import moves, visits
from followup.settings import Settings
from models import booking, ehr_outbox, queries
from models.ehr_outbox import VisitChange
from models.tables import (
    Appointment,
    Escalation,
    EscalationStatus,
    ImagingStudy,
    Patient,
    Provider,
)
from models.types import utcnow

# Escalation kinds a review run can close: each is a scan the engine could not finish alone.
REVIEW_KINDS = REVIEWED_KINDS
OFFERED_SLOTS = 8
BOOK = "book the chosen slot"
CALLED = "called the patient"
CONFIRM = "confirm, nothing to book"
ACTIONS = (BOOK, CALLED, CONFIRM)
NO_SLOT = "none"


class ReviewError(FollowupError):
    """The review cannot act on the answer as given (an unknown slot, no name)."""


@dataclass(frozen=True, slots=True)
class OfferedSlot:
    slot_id: int
    start: datetime
    provider: str  # "Dr. Okafor (NPI 1000000005)"

    def label(self, zone: ZoneInfo) -> str:
        """The choice as the form lists it; the slot id ends it, so an answer maps back."""
        when = self.start.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")
        return f"{when} · {self.provider} · slot {self.slot_id}"


@dataclass(frozen=True, slots=True)
class ReviewCase:
    study_id: int
    accession: str
    initials: str
    urgency: str
    referrals: tuple[str, ...]
    findings: tuple[str, ...]  # labels, affirmed first; no report text
    tasks: tuple[tuple[str, str], ...]  # (kind, reason) of each open task, the why
    booked: str | None  # the visit already booked, as a scheduler reads it
    offered: tuple[OfferedSlot, ...]
    offered_from: str  # which providers the slots are with, and the window searched


@dataclass(frozen=True, slots=True)
class ReviewAnswer:
    action: str
    by: str
    urgency: str
    referrals: tuple[str, ...]
    slot: str = NO_SLOT  # an offered slot's label, or "none"
    note: str = ""


def tasks_for_a_person(summary: dict[str, Any]) -> list[int]:
    """The open tasks in a scan's summary that a review run can close (empty: none needed)."""
    return [
        e["id"]
        for e in summary.get("escalations", [])
        if e["kind"] in REVIEW_KINDS and e["status"] == EscalationStatus.OPEN
    ]


def open_review(
    *, session: Session, accession: str, settings: Settings, now: datetime | None = None
) -> ReviewCase | None:
    """The study's case for a person, None when nothing is left for one to do."""
    now = now or utcnow()
    found = queries.study_with_patient(session=session, accession=accession)
    if found is None:
        return None
    study, patient = found
    assert study.id is not None
    tasks = _open_tasks(session, study.id)
    if not tasks:
        return None
    decision = queries.current_decision(session=session, study_id=study.id)
    urgency = decision.urgency if decision else "routine"
    active = booking.active_follow_up_with_provider(session=session, study_id=study.id)
    booked = (
        f"{active[0].start.astimezone(settings.site_zone):%a %Y-%m-%d %H:%M %Z} with "
        f"{_named(active[1])}"
        if active
        else None
    )
    providers, who = review_providers(session=session, study=study, settings=settings)
    window = offer_window(session=session, study=study, urgency=urgency, settings=settings, now=now)
    offered = (
        booking.free_slots(
            session=session,
            provider_ids=[p.id for p in providers if p.id is not None],
            earliest=window.earliest,
            latest=window.latest,
            limit=OFFERED_SLOTS,
        )
        if providers and urgency != EMERGENT
        else []
    )
    names = {p.id: _named(p) for p in providers}
    return ReviewCase(
        study_id=study.id,
        accession=accession,
        initials=PersonName(patient.family_name, patient.given_name).initials,
        urgency=urgency,
        referrals=tuple(decision.referrals) if decision else (),
        findings=tuple(queries.finding_labels(session=session, decision=decision))
        if decision
        else (),
        tasks=tuple((t.kind, t.reason) for t in tasks),
        booked=booked,
        offered=tuple(OfferedSlot(s.id, s.start, names[s.provider_id]) for s in offered),
        offered_from=f"{who}, {window.describe(settings.site_zone)}",
    )


def review_providers(
    *, session: Session, study: ImagingStudy, settings: Settings
) -> tuple[list[Provider], str]:
    """Whom the review offers slots with: the ordering provider, their covering provider and
    practice; for an unknown ordering provider, the on-call provider from the settings and
    their practice; with neither, every active provider."""
    anchor = (
        session.get(Provider, study.ordering_provider_id) if study.ordering_provider_id else None
    )
    if anchor is None and settings.on_call_provider_npi:
        anchor = queries.provider_by_npi(session=session, npi=settings.on_call_provider_npi)
    if anchor is None:
        return queries.active_providers(session=session), "any provider"
    chain = queries.fallback_providers(session=session, provider=anchor)
    return chain, f"{_named(anchor)}, covering and practice"


def offer_window(
    *, session: Session, study: ImagingStudy, urgency: str, settings: Settings, now: datetime
) -> BookingWindow:
    """The tier's window; once it has passed (or nearly), as long a window from now."""
    from followup.services.pipeline import due_window  # the booking step's own window rules

    if study.final_at is None or urgency == EMERGENT:
        return BookingWindow(now, now + timedelta(days=settings.routine_window_max_days), urgency)
    window, _closed = due_window(session=session, study=study, urgency=urgency, settings=settings)
    return window.from_now(now)


def describe(case: ReviewCase, zone: ZoneInfo) -> str:
    """The review form's description (markdown): what the engine found and why it stopped."""
    lines = [
        f"### Scan {case.accession} ({case.initials}): a person must decide",
        "",
        "**Why it stopped**",
        "",
        *(f"- **{kind}**: {reason}" for kind, reason in case.tasks),
        "",
        f"**What the engine found**: urgency **{case.urgency}**; referrals "
        f"**{', '.join(case.referrals) or 'none'}**; findings "
        f"{', '.join(case.findings) or 'none recorded'}.",
        "",
        f"**Booked**: {case.booked or 'nothing yet'}.",
        "",
        f"**Slots offered** ({case.offered_from}; times in {zone.key}):",
        "",
        *(f"- {slot.label(zone)}" for slot in case.offered),
    ]
    if not case.offered:
        lines.append("- none free: call the patient, or book by hand and mark it here")
    lines += [
        "",
        f"Choose an action: **{BOOK}** (pick the slot), **{CALLED}**, or **{CONFIRM}**; "
        "change urgency or referrals if the engine read the report wrong; say who you are.",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    appointment_id: int | None
    closed: tuple[int, ...]  # escalation ids the review closed
    said: str


def apply_review(
    *,
    session: Session,
    accession: str,
    answer: ReviewAnswer,
    settings: Settings,
    now: datetime | None = None,
) -> ReviewOutcome:
    """Act on a person's answer, audited as them. A slot taken since it was offered books
    nothing and leaves the tasks open (the worklist keeps them), saying so."""
    now = now or utcnow()
    by = answer.by.strip()
    if not by:
        raise ReviewError("say who reviewed the scan (by)")
    if answer.action not in ACTIONS:
        raise ReviewError(f"unknown action {answer.action!r}: one of {', '.join(ACTIONS)}")
    found = queries.study_with_patient(session=session, accession=accession)
    if found is None:
        raise ReviewError(f"no study with accession {accession}")
    study, patient = found
    assert study.id is not None and patient.id is not None
    changed = queries.review_decision(
        session=session,
        study_id=study.id,
        urgency=answer.urgency,
        referrals=list(answer.referrals),
        by=by,
    )
    appointment_id = None
    if answer.action == BOOK:
        appointment_id = _book_chosen(session, study, patient, answer, settings, now=now)
        if appointment_id is None:
            return ReviewOutcome(
                None, (), f"slot {answer.slot} is no longer free: nothing booked, tasks left open"
            )
    closed = _close_tasks(session, study.id, by=by, now=now)
    queries.audit(
        session=session,
        actor=by,
        action="review.answered",
        entity="study",
        entity_id=study.id,
        detail={
            "action": answer.action,
            "appointment_id": appointment_id,
            "decision_changed": changed,
            "escalations_closed": list(closed),
            "note": answer.note,
            "via": "prefect-ui",
        },
    )
    said = f"{accession}: {answer.action} by {by}"
    if appointment_id is not None:
        said += f" (appointment {appointment_id})"
    return ReviewOutcome(appointment_id, closed, said)


def slot_id_of(label: str) -> int | None:
    """The slot id an offered label ends with; None for "none"."""
    head, _, number = label.rpartition("slot ")
    return int(number) if head and number.isdigit() else None


def _book_chosen(
    session: Session,
    study: ImagingStudy,
    patient: Patient,
    answer: ReviewAnswer,
    settings: Settings,
    *,
    now: datetime,
) -> int | None:
    slot_id = slot_id_of(answer.slot)
    if slot_id is None:
        raise ReviewError(f"{BOOK!r} needs one of the offered slots, not {answer.slot!r}")
    assert study.id is not None and patient.id is not None
    window = offer_window(
        session=session, study=study, urgency=answer.urgency, settings=settings, now=now
    )
    by = answer.by.strip()
    existing = booking.active_follow_up(session=session, study_id=study.id)
    if existing is not None and existing.id is not None:
        move = moves.move_appointment(
            session=session,
            appointment_id=existing.id,
            reason="moved on review",
            policy=moves.NothingFits.KEEP,
            settings=settings,
            now=now,
            actor=by,
            after=now,
            window=window,
            chosen_slot=slot_id,
        )
        booked = move.appointment.id if move.appointment is not None else None
    else:
        booked = booking.book_slot(
            session=session,
            slot_id=slot_id,
            patient_id=patient.id,
            study_id=study.id,
            window=window,
            actor=by,
        )
        if booked is not None:
            ehr_outbox.record_visit_change(
                session=session,
                appointment=session.get_one(Appointment, booked),
                change=VisitChange.BOOKED,
            )
            visits.plan_visit_texts(
                session=session, appointment_id=booked, settings=settings, now=now
            )
    if booked is None:
        return None
    withdrawal = booking.withdraw_from_waitlist(
        session=session,
        timing=settings.offer_timing,
        study_id=study.id,
        reason="booked on review",
        now=now,
        actor=by,
    )
    # The slot the study's pending offer held goes to the next patient: tell them by text.
    visits.enqueue_offer_texts(
        session=session, offers=[withdrawal.next_offer], settings=settings, now=now
    )
    return booked


def _open_tasks(session: Session, study_id: int) -> list[Escalation]:
    return [
        e
        for e in queries.escalations_for_study(session=session, study_id=study_id)
        if e.kind in REVIEW_KINDS and e.status == EscalationStatus.OPEN
    ]


def _close_tasks(session: Session, study_id: int, *, by: str, now: datetime) -> tuple[int, ...]:
    closed = []
    for task in _open_tasks(session, study_id):
        task.status = EscalationStatus.ACKNOWLEDGED
        task.acknowledged_at = now
        task.acknowledged_by = by
        session.add(task)
        assert task.id is not None
        closed.append(task.id)
    session.flush()
    return tuple(closed)


def _named(provider: Provider) -> str:
    return f"{provider.display_name} (NPI {provider.npi})"
