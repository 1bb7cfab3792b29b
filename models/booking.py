"""Booking, waitlist, cancel and reschedule-hold queries: keyword-only functions taking a session.

The caller owns the transaction. What fits, in which order providers are tried and who on the
waitlist is offered a freed slot (and until when, around quiet hours) are decided by the pure
core (followup.core.scheduling); moving a visit and importing calendars are use cases in
followup.services. Calendars (hours, slots, blocks, closures) are in models.calendar_queries,
referral tracking in models.referral_queries. This module reads and writes the rows and records
every step in the audit trail.

No double booking: a slot changes hands by one conditional write (free → booked) that only one
transaction can win; on PostgreSQL the winner is picked with `FOR UPDATE SKIP LOCKED`, so
racing bookers move on to another slot instead of queueing behind each other. The partial
unique index `uq_appointment_active_slot` stays the last guard: a violation raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple, cast
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BindParameter,
    CursorResult,
    Integer,
    and_,
    bindparam,
    insert,
    or_,
    update,
)
from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel, col, select

from followup.core.scheduling import (
    NO_PREFERENCES,
    BookingWindow,
    DayPart,
    FreedSlot,
    OfferTiming,
    Preferences,
    SlotStatus,
    WaitingPatient,
    choose_waitlist_offer,
    fallback_chain,
    fitting_slots,
)
from followup.errors import BookingError
from followup.settings import Settings
from models.calendar_queries import provider_by_id, site_closed_days
from models.ehr_outbox import (
    VisitChange,
    record_visit_change,
)
from models.messaging_queries import cancel_offer_message
from models.queries import audit, cancel_pending_messages
from models.tables import (
    ACTIVE_APPOINTMENT_STATUSES,
    OPEN_WAITLIST_STATUSES,
    Appointment,
    AppointmentKind,
    AppointmentStatus,
    BlockedPeriod,
    Escalation,
    EscalationStatus,
    HoldStatus,
    ImagingStudy,
    OfferStatus,
    Patient,
    Provider,
    RescheduleHold,
    SiteClosure,
    Slot,
    WaitlistEntry,
    WaitlistOffer,
    WaitlistStatus,
)
from models.types import utcnow

ACTOR = "engine"
SCHEDULER_QUEUE = "scheduler-queue"
PAGE_SIZE = 16  # free slots read per round trip while looking for one that fits


def provider_by_npi(*, session: Session, npi: str) -> Provider | None:
    return session.exec(select(Provider).where(Provider.npi == npi)).first()


def overlapping_open_slot(
    *, session: Session, provider_id: int, start: datetime, end: datetime
) -> Slot | None:
    """A slot of the provider not blocked that overlaps [start, end), if any."""
    return session.exec(
        select(Slot).where(
            Slot.provider_id == provider_id,
            Slot.status != SlotStatus.BLOCKED,
            Slot.start < end,
            Slot.end > start,
        )
    ).first()


# --- booking -----------------------------------------------------------------------------------


def active_follow_up(*, session: Session, study_id: int) -> Appointment | None:
    return session.exec(
        select(Appointment).where(
            Appointment.study_id == study_id,
            col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES),
        )
    ).first()


def active_follow_up_with_provider(
    *, session: Session, study_id: int
) -> tuple[Appointment, Provider] | None:
    """The study's active follow-up and the provider it is with, in one read."""
    found = session.exec(
        select(Appointment, Provider)
        .join(Provider, col(Provider.id) == Appointment.provider_id)
        .where(
            Appointment.study_id == study_id,
            col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES),
        )
    ).first()
    return (found[0], found[1]) if found else None


def patient_preferences(patient: Patient) -> Preferences:
    return Preferences(
        day_part=DayPart(patient.preferred_day_part) if patient.preferred_day_part else None,
        weekdays=frozenset(patient.preferred_weekdays or ()),
    )


@dataclass(frozen=True, slots=True)
class Booked:
    appointment_id: int
    slot_id: int
    provider_id: int
    start: datetime


@dataclass(frozen=True, slots=True)
class BookingResult:
    booked: Booked | None
    reason: str  # what happened, step by step, for the BookingOutcome and the escalation
    fallbacks: tuple[str, ...]  # why each earlier step of the chain could not book


class _ProviderRow(NamedTuple):
    id: int
    family_name: str
    practice: str
    covering_provider_id: int | None
    active: bool
    timezone: str

    @property
    def display_name(self) -> str:
        return f"Dr. {self.family_name}"


class _FreeSlot(NamedTuple):
    id: int
    provider_id: int
    start: datetime
    end: datetime


# The booking path runs on prebuilt Core statements: building and ORM-loading them per call
# cost more than the queries themselves (bench/results/booking.md).
_ORDERING: BindParameter[int] = bindparam("ordering", type_=Integer)
_DIRECTORY = sa_select(
    col(Provider.id),
    col(Provider.family_name),
    col(Provider.practice),
    col(Provider.covering_provider_id),
    col(Provider.active),
    col(Provider.timezone),
).where(
    or_(
        col(Provider.id) == _ORDERING,
        col(Provider.id)
        == select(col(Provider.covering_provider_id))
        .where(col(Provider.id) == _ORDERING)
        .scalar_subquery(),
        col(Provider.practice)
        == select(col(Provider.practice)).where(col(Provider.id) == _ORDERING).scalar_subquery(),
    )
)
_FREE_PAGE = (
    select(col(Slot.id), col(Slot.provider_id), col(Slot.start), col(Slot.end))
    .where(
        col(Slot.provider_id).in_(bindparam("providers", expanding=True)),
        col(Slot.status) == SlotStatus.FREE,
        col(Slot.start) >= bindparam("earliest"),
        col(Slot.start) < bindparam("latest"),
        or_(
            col(Slot.start) > bindparam("after_start"),
            and_(col(Slot.start) == bindparam("after_start"), col(Slot.id) > bindparam("after_id")),
        ),
    )
    .order_by(col(Slot.start), col(Slot.id))
    .limit(PAGE_SIZE)
)
_SLOTS = SQLModel.metadata.tables["slot"]
# Take the first candidate still free, in one statement: on PostgreSQL the row is locked with
# SKIP LOCKED, so a booker never waits for another's uncommitted booking but moves on to the
# next candidate; SQLite runs the whole statement under its single write lock.
_TAKE_FIRST_FREE = (
    update(_SLOTS)
    .where(
        _SLOTS.c.id
        == sa_select(_SLOTS.c.id)
        .where(
            _SLOTS.c.id.in_(bindparam("ids", expanding=True)),
            _SLOTS.c.status == SlotStatus.FREE,
        )
        .order_by(_SLOTS.c.start, _SLOTS.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    .values(status=SlotStatus.BOOKED)
    .returning(_SLOTS.c.id)
)
_MOVE_SLOT = (
    update(_SLOTS)
    .where(_SLOTS.c.id == bindparam("slot_id"), _SLOTS.c.status == bindparam("current"))
    .values(status=bindparam("target"))
)
_APPOINTMENTS = SQLModel.metadata.tables["appointment"]
_NEW_APPOINTMENT = insert(_APPOINTMENTS).returning(_APPOINTMENTS.c.id)


def book_with_fallback(
    *,
    session: Session,
    patient_id: int,
    study_id: int | None,
    ordering_provider_id: int,
    window: BookingWindow,
    closed_days: frozenset[date],
    preferences: Preferences = NO_PREFERENCES,
    actor: str = ACTOR,
) -> BookingResult:
    """Book the earliest fitting slot: ordering provider → covering provider → practice.

    Each step that cannot book is audited with its reason; the result says who was booked
    after which fallbacks, or why nobody could be.
    """
    directory = {
        row.id: row
        for row in map(
            _ProviderRow._make, session.execute(_DIRECTORY, {"ordering": ordering_provider_id})
        )
    }
    ordering = directory.get(ordering_provider_id)
    if ordering is None:
        raise LookupError(f"provider {ordering_provider_id} does not exist")
    covering = directory.get(ordering.covering_provider_id or 0)
    colleagues = [p for p in directory.values() if p.practice == ordering.practice]
    zone = ZoneInfo(ordering.timezone)
    wanted = window.describe(zone)
    if preferences != NO_PREFERENCES:
        wanted += f" matching the patient's preferences ({preferences.describe()})"
    fallbacks: list[str] = []
    for link in fallback_chain(ordering, covering=covering, practice=colleagues):
        providers = [directory[pid] for pid in link.provider_ids]
        taken = _take_first_fitting(
            session, providers, window=window, closed_days=closed_days, preferences=preferences
        )
        who = " or ".join(p.display_name for p in providers)
        if taken is None:
            fallbacks.append(f"{link.step} {who}: no free slot in the {wanted}")
            audit(
                session=session,
                actor=actor,
                action="booking.fallback",
                entity="study",
                entity_id=study_id,
                detail={
                    "step": link.step,
                    "providers": list(link.provider_ids),
                    "reason": fallbacks[-1],
                },
            )
            continue
        appointment_id = _insert_appointment(
            session, taken, patient_id=patient_id, study_id=study_id, window=window
        )
        booked_with = directory[taken.provider_id].display_name
        reason = f"booked with the {link.step} {booked_with} in the {window.describe(zone)}"
        if fallbacks:
            reason += " after: " + "; ".join(fallbacks)
        audit(
            session=session,
            actor=actor,
            action="appointment.booked",
            entity="appointment",
            entity_id=appointment_id,
            detail={
                "study_id": study_id,
                "slot_id": taken.id,
                "provider_id": taken.provider_id,
                "step": link.step,
                "fallbacks": fallbacks,
            },
        )
        booked = Booked(appointment_id, taken.id, taken.provider_id, taken.start)
        return BookingResult(booked=booked, reason=reason, fallbacks=tuple(fallbacks))
    if not ordering.active:
        fallbacks.insert(0, f"ordering provider {ordering.display_name} is inactive")
    return BookingResult(booked=None, reason="; ".join(fallbacks), fallbacks=tuple(fallbacks))


def free_slots(
    *,
    session: Session,
    provider_ids: Sequence[int],
    earliest: datetime,
    latest: datetime,
    limit: int,
) -> list[_FreeSlot]:
    """The earliest free slots of these providers in [earliest, latest), by time: what a
    person reviewing a scan is offered (nothing is taken)."""
    return list(
        map(
            _FreeSlot._make,
            session.execute(
                _FREE_PAGE.limit(limit),
                {
                    "providers": list(provider_ids),
                    "earliest": earliest,
                    "latest": latest,
                    "after_start": earliest,
                    "after_id": 0,
                },
            ),
        )
    )


def book_slot(
    *,
    session: Session,
    slot_id: int,
    patient_id: int,
    study_id: int | None,
    window: BookingWindow,
    actor: str,
) -> int | None:
    """Book the slot a person chose; None when it is no longer free."""
    slot = session.get(Slot, slot_id)
    if slot is None:
        raise BookingError(f"slot {slot_id} does not exist")
    if not _move_slot(session, slot_id, SlotStatus.FREE, SlotStatus.BOOKED):
        return None
    appointment_id = _insert_appointment(
        session, slot, patient_id=patient_id, study_id=study_id, window=window
    )
    audit(
        session=session,
        actor=actor,
        action="appointment.booked",
        entity="appointment",
        entity_id=appointment_id,
        detail={
            "study_id": study_id,
            "slot_id": slot_id,
            "provider_id": slot.provider_id,
            "step": "chosen by a person",
        },
    )
    return appointment_id


def _take_first_fitting(
    session: Session,
    providers: Sequence[_ProviderRow],
    *,
    window: BookingWindow,
    closed_days: frozenset[date],
    preferences: Preferences,
) -> _FreeSlot | None:
    """Read the providers' free slots in the window page by page and take the first that fits."""
    for candidates in _fitting_free_pages(
        session, providers, window=window, closed_days=closed_days, preferences=preferences
    ):
        taken = _take_first(session, candidates)
        if taken is not None:
            return taken
    return None


def _take_first(session: Session, candidates: Sequence[_FreeSlot]) -> _FreeSlot | None:
    """Mark the first candidate that is still free as booked; None when others took them all."""
    if not candidates:
        return None
    by_id = {slot.id: slot for slot in candidates}
    slot_id = session.execute(_TAKE_FIRST_FREE, {"ids": list(by_id)}).scalar()
    return None if slot_id is None else by_id[slot_id]


def _move_slot(session: Session, slot_id: int, current: SlotStatus, target: SlotStatus) -> bool:
    """Compare-and-set of a slot's status: True when this transaction made the change.

    A Core write: a Slot object this session already holds is expired, so it reloads.
    """
    result = session.execute(_MOVE_SLOT, {"slot_id": slot_id, "current": current, "target": target})
    loaded = session.identity_map.get(session.identity_key(Slot, slot_id))
    if loaded is not None:
        session.expire(loaded, ["status"])
    return cast(CursorResult[Any], result).rowcount == 1


def _insert_appointment(
    session: Session,
    slot: _FreeSlot | Slot,
    *,
    patient_id: int,
    study_id: int | None,
    window: BookingWindow,
) -> int:
    assert slot.id is not None
    appointment_id: int = session.execute(
        _NEW_APPOINTMENT,
        {
            "patient_id": patient_id,
            "provider_id": slot.provider_id,
            "slot_id": slot.id,
            "study_id": study_id,
            "kind": AppointmentKind.FOLLOW_UP,
            "start": slot.start,
            "status": AppointmentStatus.BOOKED,
            "tier": window.tier,
            "window_start": window.earliest,
            "window_end": window.latest,
            "booked_at": utcnow(),
        },
    ).scalar_one()
    return appointment_id


# --- the waitlist ------------------------------------------------------------------------------


def open_waitlist_entry(*, session: Session, study_id: int) -> WaitlistEntry | None:
    """The study's entry still waiting or holding an offer (at most one: a unique index)."""
    return session.exec(
        select(WaitlistEntry).where(
            WaitlistEntry.study_id == study_id,
            col(WaitlistEntry.status).in_(OPEN_WAITLIST_STATUSES),
        )
    ).first()


def add_to_waitlist(
    *,
    session: Session,
    patient_id: int,
    study_id: int | None,
    provider_id: int,
    window: BookingWindow,
    reason: str,
    actor: str = ACTOR,
) -> WaitlistEntry:
    """Put the patient on the waitlist for the window; a study already waiting keeps its entry."""
    if study_id is not None:
        existing = open_waitlist_entry(session=session, study_id=study_id)
        if existing is not None:
            return existing
    entry = WaitlistEntry(
        patient_id=patient_id,
        study_id=study_id,
        provider_id=provider_id,
        practice=provider_by_id(session=session, provider_id=provider_id).practice,
        urgency=window.tier,
        window_start=window.earliest,
        window_end=window.latest,
        reason=reason,
    )
    session.add(entry)
    session.flush()
    audit(
        session=session,
        actor=actor,
        action="waitlist.added",
        entity="waitlist_entry",
        entity_id=entry.id,
        detail={"study_id": study_id, "urgency": window.tier, "reason": reason},
    )
    return entry


def offer_freed_slot(
    *,
    session: Session,
    slot_id: int,
    now: datetime,
    timing: OfferTiming,
    actor: str = ACTOR,
) -> WaitlistOffer | None:
    """Hold a free slot for the waitlisted patient the core chooses
    (`followup.core.scheduling.choose_waitlist_offer`); None when nobody fits or it is too late.

    The text itself is enqueued by the caller (followup.services.visits); `accept_offer` books
    the slot, `expire_offers` moves it on.
    """
    slot = session.get(Slot, slot_id)
    if slot is None or slot.status != SlotStatus.FREE:
        return None
    provider = provider_by_id(session=session, provider_id=slot.provider_id)
    covers_for = session.exec(
        select(Provider.id).where(Provider.covering_provider_id == provider.id)
    ).all()
    already_offered = select(WaitlistOffer.entry_id).where(WaitlistOffer.slot_id == slot_id)
    rows = session.exec(
        select(WaitlistEntry, Patient)
        .join(Patient, col(Patient.id) == col(WaitlistEntry.patient_id))
        .where(
            WaitlistEntry.status == WaitlistStatus.WAITING,
            col(WaitlistEntry.id).not_in(already_offered),
        )
    ).all()
    entries = {entry.id: entry for entry, _ in rows}
    chosen = choose_waitlist_offer(
        FreedSlot(
            start=slot.start,
            provider_id=provider.id or 0,
            practice=provider.practice,
            zone=ZoneInfo(provider.timezone),
            covers_for=frozenset(pid for pid in covers_for if pid is not None),
        ),
        [
            WaitingPatient(
                entry_id=entry.id or 0,
                provider_id=entry.provider_id,
                practice=entry.practice,
                urgency=entry.urgency,
                waiting_since=entry.created_at,
                window=BookingWindow(entry.window_start, entry.window_end, entry.urgency),
                preferences=patient_preferences(patient),
                zone=ZoneInfo(patient.timezone) if patient.timezone else None,
            )
            for entry, patient in rows
        ],
        now=now,
        timing=timing,
    )
    if chosen is None:
        return None
    entry_id, deadline = chosen
    entry = entries[entry_id]
    if not _move_slot(session, slot_id, SlotStatus.FREE, SlotStatus.HELD):
        return None
    entry.status = WaitlistStatus.OFFERED
    offer = WaitlistOffer(entry_id=entry_id, slot_id=slot_id, offered_at=now, expires_at=deadline)
    session.add_all([entry, offer])
    session.flush()
    audit(
        session=session,
        actor=actor,
        action="waitlist.offered",
        entity="waitlist_offer",
        entity_id=offer.id,
        detail={"entry_id": entry.id, "slot_id": slot_id, "expires_at": deadline.isoformat()},
    )
    return offer


@dataclass(frozen=True, slots=True)
class Acceptance:
    appointment: Appointment | None  # None: the offer was no longer open
    next_offer: WaitlistOffer | None  # an answer past the deadline: the slot's next offer


def accept_offer(
    *, session: Session, offer_id: int, now: datetime, timing: OfferTiming, actor: str = ACTOR
) -> Acceptance:
    """Book the held slot for the patient who accepted. An offer no longer open books nothing
    (answered, expired, or past its deadline: then it is expired and the slot moves on)."""
    offer = _offer(session, offer_id)
    if offer.status != OfferStatus.PENDING:
        return Acceptance(None, None)
    if offer.expires_at <= now:
        next_offer = _close_offer(
            session, offer, OfferStatus.EXPIRED, now=now, timing=timing, actor=actor
        )
        return Acceptance(None, next_offer)
    entry = session.get(WaitlistEntry, offer.entry_id)
    slot = session.get(Slot, offer.slot_id)
    assert entry is not None and slot is not None
    if not _move_slot(session, slot.id, SlotStatus.HELD, SlotStatus.BOOKED):  # type: ignore[arg-type]
        raise BookingError(f"slot {slot.id} of pending offer {offer_id} is not held")
    window = BookingWindow(entry.window_start, entry.window_end, entry.urgency)
    appointment_id = _insert_appointment(
        session, slot, patient_id=entry.patient_id, study_id=entry.study_id, window=window
    )
    offer.status = OfferStatus.ACCEPTED
    offer.responded_at = now
    offer.appointment_id = appointment_id
    assert offer.id is not None
    cancel_offer_message(session=session, offer_id=offer.id)
    entry.status = WaitlistStatus.BOOKED
    entry.resolved_at = now
    entry.appointment_id = appointment_id
    session.add_all([offer, entry])
    if entry.study_id is not None:
        _resolve_unbookable(session, entry.study_id, now=now, by="waitlist")
    session.flush()
    audit(
        session=session,
        actor=actor,
        action="appointment.booked",
        entity="appointment",
        entity_id=appointment_id,
        detail={
            "study_id": entry.study_id,
            "slot_id": slot.id,
            "step": "waitlist",
            "offer_id": offer_id,
        },
    )
    appointment = session.get_one(Appointment, appointment_id)
    record_visit_change(session=session, appointment=appointment, change=VisitChange.BOOKED)
    return Acceptance(appointment, None)


def decline_offer(
    *, session: Session, offer_id: int, now: datetime, timing: OfferTiming, actor: str = ACTOR
) -> WaitlistOffer | None:
    """The patient said no: they wait on, and the slot goes to the next one (returned)."""
    offer = _offer(session, offer_id)
    if offer.status != OfferStatus.PENDING:
        return None
    return _close_offer(session, offer, OfferStatus.DECLINED, now=now, timing=timing, actor=actor)


def expire_offers(
    *, session: Session, now: datetime, timing: OfferTiming, actor: str = ACTOR
) -> list[WaitlistOffer]:
    """Expire unanswered offers past their deadline and offer each slot to the next patient;
    entries whose window has closed lapse. Returns the new offers (to be sent)."""
    due = session.exec(
        select(WaitlistOffer)
        .where(WaitlistOffer.status == OfferStatus.PENDING, WaitlistOffer.expires_at <= now)
        .order_by(col(WaitlistOffer.id))
    ).all()
    offers = [
        offer
        for expired in due
        if (
            offer := _close_offer(
                session, expired, OfferStatus.EXPIRED, now=now, timing=timing, actor=actor
            )
        )
    ]
    lapsed = session.exec(
        select(WaitlistEntry).where(
            WaitlistEntry.status == WaitlistStatus.WAITING, WaitlistEntry.window_end <= now
        )
    ).all()
    for entry in lapsed:
        entry.status = WaitlistStatus.LAPSED
        entry.resolved_at = now
        session.add(entry)
        audit(
            session=session,
            actor=actor,
            action="waitlist.lapsed",
            entity="waitlist_entry",
            entity_id=entry.id,
            detail={"study_id": entry.study_id},
        )
    session.flush()
    return offers


@dataclass(frozen=True, slots=True)
class Withdrawal:
    entry: WaitlistEntry | None  # the study's entry, now cancelled; None: it had none open
    next_offer: WaitlistOffer | None  # the slot its pending offer held, offered onwards


def withdraw_from_waitlist(
    *,
    session: Session,
    study_id: int,
    reason: str,
    now: datetime,
    timing: OfferTiming,
    actor: str = ACTOR,
) -> Withdrawal:
    """Cancel the study's open waitlist entry: its decision no longer wants the visit it waits
    for (the result was cancelled, turned emergent, or changed tier and so window). A pending
    offer lapses (its unsent text too) and its slot is offered to the next patient."""
    entry = open_waitlist_entry(session=session, study_id=study_id)
    if entry is None:
        return Withdrawal(None, None)
    pending = session.exec(
        select(WaitlistOffer).where(
            WaitlistOffer.entry_id == entry.id, WaitlistOffer.status == OfferStatus.PENDING
        )
    ).first()
    entry.resolved_at = now
    # Nobody needs to find this patient a slot any more (a new one opens if the study
    # comes back to the waitlist).
    _resolve_unbookable(session, study_id, now=now, by="waitlist withdrawn")
    next_offer = None
    if pending is None:
        entry.status = WaitlistStatus.CANCELLED
        session.add(entry)
        session.flush()
    else:
        next_offer = _close_offer(
            session,
            pending,
            OfferStatus.EXPIRED,
            now=now,
            timing=timing,
            actor=actor,
            entry_status=WaitlistStatus.CANCELLED,
        )
    audit(
        session=session,
        actor=actor,
        action="waitlist.withdrawn",
        entity="waitlist_entry",
        entity_id=entry.id,
        detail={
            "study_id": study_id,
            "reason": reason,
            "offer_id": pending.id if pending else None,
            "next_offer_id": next_offer.id if next_offer else None,
        },
    )
    return Withdrawal(entry, next_offer)


def _offer(session: Session, offer_id: int) -> WaitlistOffer:
    offer = session.get(WaitlistOffer, offer_id)
    if offer is None:
        raise LookupError(f"waitlist offer {offer_id} does not exist")
    return offer


def _close_offer(
    session: Session,
    offer: WaitlistOffer,
    status: OfferStatus,
    *,
    now: datetime,
    timing: OfferTiming,
    actor: str,
    entry_status: WaitlistStatus = WaitlistStatus.WAITING,
) -> WaitlistOffer | None:
    """Close a pending offer unanswered; the patient waits on (unless their entry is being
    withdrawn), the slot is offered onwards.

    Its text, if still waiting in the outbox (quiet hours, the daily cap), is cancelled: it
    would offer a slot that is no longer theirs.
    """
    assert offer.id is not None
    offer.status = status
    offer.responded_at = now if status == OfferStatus.DECLINED else None
    entry = session.get(WaitlistEntry, offer.entry_id)
    assert entry is not None
    entry.status = entry_status
    session.add_all([offer, entry])
    cancel_offer_message(session=session, offer_id=offer.id)
    _move_slot(session, offer.slot_id, SlotStatus.HELD, SlotStatus.FREE)
    session.flush()
    audit(
        session=session,
        actor=actor,
        action=f"waitlist.offer_{status}",
        entity="waitlist_offer",
        entity_id=offer.id,
        detail={"entry_id": entry.id, "slot_id": offer.slot_id},
    )
    return offer_freed_slot(
        session=session, slot_id=offer.slot_id, now=now, timing=timing, actor=actor
    )


def _resolve_unbookable(session: Session, study_id: int, *, now: datetime, by: str) -> None:
    """Close the study's open "no slot fits" escalation: the study no longer waits on it."""
    escalation = session.exec(
        select(Escalation).where(
            Escalation.study_id == study_id,
            Escalation.kind == "unbookable",
            Escalation.status == EscalationStatus.OPEN,
        )
    ).first()
    if escalation is not None:
        escalation.status = EscalationStatus.ACKNOWLEDGED
        escalation.acknowledged_at = now
        escalation.acknowledged_by = by
        session.add(escalation)
        audit(
            session=session,
            actor=ACTOR,
            action="escalation.acknowledged",
            entity="escalation",
            entity_id=escalation.id,
            detail={"kind": escalation.kind, "via": by},
        )


# --- cancel and reschedule ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelResult:
    appointment: Appointment
    messages_cancelled: int
    offer: WaitlistOffer | None  # the freed slot, offered to a waitlisted patient


def cancel_appointment(
    *,
    session: Session,
    appointment_id: int,
    reason: str,
    timing: OfferTiming,
    now: datetime | None = None,
    actor: str = ACTOR,
) -> CancelResult:
    """Cancel the appointment and its unsent messages; the slot is freed and offered to the
    waitlist. Cancelling a cancelled appointment changes nothing."""
    now = now or utcnow()
    appointment = _appointment(session, appointment_id)
    if appointment.status == AppointmentStatus.CANCELLED:
        return CancelResult(appointment=appointment, messages_cancelled=0, offer=None)
    if appointment.status not in ACTIVE_APPOINTMENT_STATUSES:
        raise BookingError(f"appointment {appointment_id} is {appointment.status}")
    appointment.status = AppointmentStatus.CANCELLED
    appointment.cancelled_at = now
    appointment.cancel_reason = reason
    session.add(appointment)
    session.flush()  # out of the active-slot index before the slot is offered again
    if appointment.replaced_by_id is None:  # a move is told as the new appointment's change
        record_visit_change(session=session, appointment=appointment, change=VisitChange.CANCELLED)
    messages = cancel_pending_messages(session=session, appointment_id=appointment_id)
    # A slot inside its provider's blocked time or on a closed day (the visit is cancelled
    # because of it) is blocked, not freed: offering it would book time nobody is there.
    released = (
        SlotStatus.BLOCKED if _in_blocked_time(session, appointment.slot_id) else SlotStatus.FREE
    )
    freed = _move_slot(session, appointment.slot_id, SlotStatus.BOOKED, released)
    offer = (
        offer_freed_slot(
            session=session, slot_id=appointment.slot_id, now=now, timing=timing, actor=actor
        )
        if freed and released == SlotStatus.FREE
        else None
    )
    audit(
        session=session,
        actor=actor,
        action="appointment.cancelled",
        entity="appointment",
        entity_id=appointment_id,
        detail={
            "reason": reason,
            "messages_cancelled": messages,
            "offer_id": offer.id if offer else None,
        },
    )
    return CancelResult(appointment=appointment, messages_cancelled=messages, offer=offer)


def _in_blocked_time(session: Session, slot_id: int) -> bool:
    """The slot lies in its provider's blocked time or on a day the site is closed (in the
    provider's zone, as the slots are laid)."""
    slot = session.get_one(Slot, slot_id)
    blocked = session.exec(
        select(BlockedPeriod.id).where(
            BlockedPeriod.provider_id == slot.provider_id,
            BlockedPeriod.start < slot.end,
            BlockedPeriod.end > slot.start,
        )
    ).first()
    if blocked is not None:
        return True
    zone = ZoneInfo(provider_by_id(session=session, provider_id=slot.provider_id).timezone)
    day = slot.start.astimezone(zone).date()
    return session.exec(select(SiteClosure.id).where(SiteClosure.day == day)).first() is not None


# --- rescheduling by the patient's choice -------------------------------------------------------


def hold_reschedule_choices(
    *,
    session: Session,
    appointment_id: int,
    settings: Settings,
    now: datetime,
    inbound_sid: str,
    count: int,
    hold_for: timedelta,
    actor: str = ACTOR,
) -> list[RescheduleHold]:
    """Hold the first free fitting slot of each of the next `count` days other than the
    visit's own (a patient who cannot come at 10:00 cannot come at 10:30 either), searching
    as booking does (ordering → covering provider → practice) in the visit's window from now
    on; numbered 1.. in time order. An earlier R's holds on the visit are released first.
    Empty when nothing fits: the patient keeps the visit they have."""
    previous = _appointment(session, appointment_id)
    # Free to be held again just below, not offered to the waitlist in between.
    release_reschedule_holds(
        session=session,
        timing=settings.offer_timing,
        now=now,
        appointment_id=appointment_id,
        offer_to_waitlist=False,
        actor=actor,
    )
    if (
        previous.status not in ACTIVE_APPOINTMENT_STATUSES
        or previous.study_id is None
        or previous.tier is None
        or previous.window_start is None
        or previous.window_end is None
    ):
        return []
    study = session.get_one(ImagingStudy, previous.study_id)
    patient = session.get_one(Patient, previous.patient_id)
    ordering_id = study.ordering_provider_id or previous.provider_id
    directory = {
        row.id: row
        for row in map(_ProviderRow._make, session.execute(_DIRECTORY, {"ordering": ordering_id}))
    }
    ordering = directory[ordering_id]
    covering = directory.get(ordering.covering_provider_id or 0)
    colleagues = [p for p in directory.values() if p.practice == ordering.practice]
    window = BookingWindow(previous.window_start, previous.window_end, previous.tier)
    window = window.starting_after(now)
    closed_days = site_closed_days(
        session=session, settings=settings, years=range(now.year, now.year + 2)
    )
    visit_provider = directory.get(previous.provider_id)
    visit_zone = ZoneInfo(visit_provider.timezone if visit_provider else ordering.timezone)
    days_used = {previous.start.astimezone(visit_zone).date()}
    chosen: list[_FreeSlot] = []
    for link in fallback_chain(ordering, covering=covering, practice=colleagues):
        providers = [directory[pid] for pid in link.provider_ids]
        zones = {p.id: ZoneInfo(p.timezone) for p in providers}
        for slot in _fitting_free_slots(
            session,
            providers,
            window=window,
            closed_days=closed_days,
            preferences=patient_preferences(patient),
        ):
            day = slot.start.astimezone(zones[slot.provider_id]).date()
            if day in days_used:
                continue
            if not _move_slot(session, slot.id, SlotStatus.FREE, SlotStatus.HELD):
                continue  # another booker took it meanwhile
            days_used.add(day)
            chosen.append(slot)
            if len(chosen) == count:
                break
        if len(chosen) == count:
            break
    holds = [
        RescheduleHold(
            appointment_id=appointment_id,
            slot_id=slot.id,
            choice=number,
            inbound_sid=inbound_sid,
            held_at=now,
            expires_at=now + hold_for,
        )
        for number, slot in enumerate(sorted(chosen, key=lambda s: (s.start, s.id)), start=1)
    ]
    session.add_all(holds)
    session.flush()
    audit(
        session=session,
        actor=actor,
        action="reschedule.choices_held",
        entity="appointment",
        entity_id=appointment_id,
        detail={"slots": [h.slot_id for h in holds], "expires_at": (now + hold_for).isoformat()},
    )
    return holds


def book_held_choice(
    *,
    session: Session,
    timing: OfferTiming,
    appointment_id: int,
    choice: int,
    now: datetime,
    actor: str = ACTOR,
) -> int | None:
    """Book the slot held for the patient under `choice` (after their R) as the visit's new
    appointment; its id, or None when that choice is not open (never offered, already
    answered, or lapsed: a lapsed hold is released here). The caller moves the visit onto it."""
    holds = _open_holds(session, appointment_id)
    chosen = next((hold for hold in holds if hold.choice == choice), None)
    previous = _appointment(session, appointment_id)
    if (
        chosen is None
        or chosen.expires_at <= now
        or previous.status not in ACTIVE_APPOINTMENT_STATUSES
    ):
        # Lapsed holds go back now; a visit no longer active gives back every one. Free, not
        # offered: this path has no one to text an offer (the next booking search finds them).
        release_reschedule_holds(
            session=session,
            timing=timing,
            now=now,
            appointment_id=appointment_id,
            expired_only=previous.status in ACTIVE_APPOINTMENT_STATUSES,
            offer_to_waitlist=False,
            actor=actor,
        )
        return None
    if not _move_slot(session, chosen.slot_id, SlotStatus.HELD, SlotStatus.BOOKED):
        raise BookingError(f"slot {chosen.slot_id} of reschedule hold {chosen.id} is not held")
    assert previous.window_start is not None and previous.window_end is not None
    assert previous.tier is not None
    slot = session.get_one(Slot, chosen.slot_id)
    window = BookingWindow(previous.window_start, previous.window_end, previous.tier)
    new_id = _insert_appointment(
        session, slot, patient_id=previous.patient_id, study_id=previous.study_id, window=window
    )
    chosen.status, chosen.resolved_at = HoldStatus.TAKEN, now
    session.add(chosen)
    audit(
        session=session,
        actor=actor,
        action="appointment.booked",
        entity="appointment",
        entity_id=new_id,
        detail={
            "study_id": previous.study_id,
            "slot_id": slot.id,
            "step": "patient's choice",
            "hold_id": chosen.id,
        },
    )
    return new_id


def release_reschedule_holds(
    *,
    session: Session,
    timing: OfferTiming,
    now: datetime,
    appointment_id: int | None = None,
    expired_only: bool = False,
    offer_to_waitlist: bool = True,
    actor: str = ACTOR,
) -> list[WaitlistOffer]:
    """Give held slots back (a visit's open holds, or every lapsed one when `appointment_id`
    is None): each is free again and offered to the waitlist; the offers made (their texts
    are the caller's)."""
    query = select(RescheduleHold).where(RescheduleHold.status == HoldStatus.HELD)
    if appointment_id is not None:
        query = query.where(RescheduleHold.appointment_id == appointment_id)
    if appointment_id is None or expired_only:
        query = query.where(col(RescheduleHold.expires_at) <= now)
    offers: list[WaitlistOffer] = []
    for hold in session.exec(query.order_by(col(RescheduleHold.id))).all():
        lapsed = hold.expires_at <= now
        hold.status = HoldStatus.EXPIRED if lapsed else HoldStatus.RELEASED
        hold.resolved_at = now
        session.add(hold)
        freed = _move_slot(session, hold.slot_id, SlotStatus.HELD, SlotStatus.FREE)
        if freed and offer_to_waitlist:
            offer = offer_freed_slot(
                session=session, timing=timing, slot_id=hold.slot_id, now=now, actor=actor
            )
            if offer is not None:
                offers.append(offer)
        audit(
            session=session,
            actor=actor,
            action=f"reschedule.hold_{hold.status}",
            entity="appointment",
            entity_id=hold.appointment_id,
            detail={"hold_id": hold.id, "slot_id": hold.slot_id},
        )
    session.flush()
    return offers


def _open_holds(session: Session, appointment_id: int) -> list[RescheduleHold]:
    return list(
        session.exec(
            select(RescheduleHold)
            .where(
                RescheduleHold.appointment_id == appointment_id,
                RescheduleHold.status == HoldStatus.HELD,
            )
            .order_by(col(RescheduleHold.choice))
        ).all()
    )


def _fitting_free_slots(
    session: Session,
    providers: Sequence[_ProviderRow],
    *,
    window: BookingWindow,
    closed_days: frozenset[date],
    preferences: Preferences,
) -> Iterable[_FreeSlot]:
    """The providers' free slots that fit the window, earliest first, read page by page."""
    for page in _fitting_free_pages(
        session, providers, window=window, closed_days=closed_days, preferences=preferences
    ):
        yield from page


def _fitting_free_pages(
    session: Session,
    providers: Sequence[_ProviderRow],
    *,
    window: BookingWindow,
    closed_days: frozenset[date],
    preferences: Preferences,
) -> Iterator[list[_FreeSlot]]:
    """Each page of the providers' free slots in the window, as the slots that fit it, earliest
    first (a page can fit none; the pages end with the window)."""
    zones = {p.id: ZoneInfo(p.timezone) for p in providers}
    params = {
        "providers": list(zones),
        "earliest": window.earliest,
        "latest": window.latest,
        "after_start": window.earliest,
        "after_id": 0,
    }
    while True:
        page = list(map(_FreeSlot._make, session.execute(_FREE_PAGE, params)))
        yield sorted(
            (
                slot
                for provider_id, zone in zones.items()
                for slot in fitting_slots(
                    [s for s in page if s.provider_id == provider_id],
                    window,
                    zone=zone,
                    closed_days=closed_days,
                    preferences=preferences,
                )
            ),
            key=lambda slot: (slot.start, slot.id),
        )
        if len(page) < PAGE_SIZE:
            return
        params |= {"after_start": page[-1].start, "after_id": page[-1].id}


def _appointment(session: Session, appointment_id: int) -> Appointment:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None:
        raise LookupError(f"appointment {appointment_id} does not exist")
    return appointment
