"""Site and provider calendars: working hours, the slots laid from them, blocked periods and
site closures. Keyword-only functions taking a session; the caller owns the transaction.

Which slot times a calendar wants and what changes when it changes are decided by the pure core
(followup.core.scheduling: `ProviderCalendar.slot_times`, `plan_slot_sync`); this module reads and
writes the rows and records every change in the audit trail. Visits displaced by a change are
moved by followup.services.moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, update
from sqlmodel import Session, col, select

from followup.core.scheduling import (
    Period,
    ProviderCalendar,
    SlotStatus,
    WorkingSession,
    plan_slot_sync,
    site_holidays,
)
from followup.errors import BookingError
from followup.settings import Settings
from models.queries import ENGINE, audit
from models.tables import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    BlockedPeriod,
    Provider,
    SiteClosure,
    Slot,
    WorkingHours,
)
from models.types import utcnow


def provider_by_id(*, session: Session, provider_id: int) -> Provider:
    provider = session.get(Provider, provider_id)
    if provider is None:
        raise LookupError(f"provider {provider_id} does not exist")
    return provider


def site_closed_days(
    *, session: Session, settings: Settings, years: Iterable[int]
) -> frozenset[date]:
    """Public holidays of the site's country and subdivision, plus the site's own closures."""
    years = tuple(years)
    closures = session.exec(
        select(col(SiteClosure.day)).where(
            col(SiteClosure.day) >= date(min(years), 1, 1),
            col(SiteClosure.day) <= date(max(years), 12, 31),
        )
    ).all()
    return site_holidays(settings.site_country, settings.site_subdivision, years) | set(closures)


def provider_calendar(*, session: Session, provider: Provider) -> ProviderCalendar:
    hours = session.exec(
        select(WorkingHours).where(
            WorkingHours.provider_id == provider.id, col(WorkingHours.superseded_at).is_(None)
        )
    ).all()
    blocked = session.exec(
        select(BlockedPeriod).where(BlockedPeriod.provider_id == provider.id)
    ).all()
    return ProviderCalendar(
        zone=ZoneInfo(provider.timezone),
        sessions=tuple(sorted(WorkingSession(h.weekday, h.start, h.end) for h in hours)),
        slot_minutes=provider.slot_minutes,
        blocked=tuple(Period(b.start, b.end) for b in blocked),
    )


def set_working_hours(
    *, session: Session, provider_id: int, sessions: Iterable[WorkingSession]
) -> bool:
    """Make `sessions` the provider's weekly hours, superseding the old ones. True if changed."""
    wanted = sorted(set(sessions))
    current = session.exec(
        select(WorkingHours).where(
            WorkingHours.provider_id == provider_id, col(WorkingHours.superseded_at).is_(None)
        )
    ).all()
    if sorted(WorkingSession(h.weekday, h.start, h.end) for h in current) == wanted:
        return False
    now = utcnow()
    for row in current:
        row.superseded_at = now
        session.add(row)
    session.add_all(
        WorkingHours(provider_id=provider_id, weekday=s.weekday, start=s.start, end=s.end)
        for s in wanted
    )
    session.flush()
    return True


@dataclass(frozen=True, slots=True)
class SlotSync:
    created: int
    blocked: int
    reopened: int


def materialize_slots(
    *,
    session: Session,
    provider_id: int,
    first_day: date,
    days: int,
    closed_days: Iterable[date],
) -> SlotSync:
    """Lay the provider's slots for `days` days from `first_day` from its calendar (idempotent).

    Slots the calendar no longer wants (changed hours, a new blocked period or closure) are
    blocked when free; booked ones are left to the schedulers (`add_blocked_period` names them).
    """
    provider = provider_by_id(session=session, provider_id=provider_id)
    calendar = provider_calendar(session=session, provider=provider)
    zone = calendar.zone
    first = datetime.combine(first_day, time.min, tzinfo=zone)
    last = datetime.combine(first_day + timedelta(days=days), time.min, tzinfo=zone)
    existing = session.exec(
        select(Slot).where(Slot.provider_id == provider_id, Slot.start >= first, Slot.start < last)
    ).all()
    wanted = [
        (start.astimezone(UTC), end.astimezone(UTC))
        for start, end in calendar.slot_times(first_day, days, closed_days=frozenset(closed_days))
    ]
    plan = plan_slot_sync(wanted, existing)
    for slot in plan.block:
        slot.status = SlotStatus.BLOCKED
    for slot in plan.reopen:
        slot.status = SlotStatus.FREE
    session.add_all([*plan.block, *plan.reopen])
    session.flush()  # blocked rows leave the open-slot unique index before new ones arrive
    session.add_all(
        Slot(provider_id=provider_id, start=start, end=end) for start, end in plan.create
    )
    session.flush()
    return SlotSync(created=len(plan.create), blocked=len(plan.block), reopened=len(plan.reopen))


@dataclass(frozen=True, slots=True)
class CalendarChange:
    blocked_slots: int  # free slots that may no longer be booked
    conflicts: tuple[int, ...]  # active appointments in the closed time: schedulers move them


def add_blocked_period(
    *,
    session: Session,
    provider_id: int,
    start: datetime,
    end: datetime,
    reason: str,
    source: str = "manual",
    actor: str = ENGINE,
) -> CalendarChange:
    """Block the provider's time from `start` to `end` (vacation, busy elsewhere); idempotent."""
    if not start < end:
        raise BookingError(f"blocked period ends ({end}) before it starts ({start})")
    known = session.exec(
        select(BlockedPeriod.id).where(
            BlockedPeriod.provider_id == provider_id,
            BlockedPeriod.start == start,
            BlockedPeriod.end == end,
        )
    ).first()
    if known is None:
        session.add(
            BlockedPeriod(
                provider_id=provider_id, start=start, end=end, reason=reason, source=source
            )
        )
    overlapping = [
        col(Slot.provider_id) == provider_id,
        col(Slot.start) < end,
        col(Slot.end) > start,
    ]
    change = _block_free_slots(session, overlapping)
    audit(
        session=session,
        actor=actor,
        action="calendar.blocked",
        entity="provider",
        entity_id=provider_id,
        detail={
            "start": start.isoformat(),
            "end": end.isoformat(),
            "reason": reason,
            "slots_blocked": change.blocked_slots,
            "conflicting_appointments": list(change.conflicts),
        },
    )
    return change


def add_site_closure(
    *, session: Session, day: date, reason: str, zone: ZoneInfo, actor: str = ENGINE
) -> CalendarChange | None:
    """Close the whole site on `day` (local): every provider's free slots that day are blocked.

    Returns None when the day was already closed.
    """
    if session.exec(select(SiteClosure).where(SiteClosure.day == day)).first() is not None:
        return None
    session.add(SiteClosure(day=day, reason=reason))
    start = datetime.combine(day, time.min, tzinfo=zone)
    end = start + timedelta(days=1)
    overlapping = [col(Slot.start) < end, col(Slot.end) > start]
    change = _block_free_slots(session, overlapping)
    audit(
        session=session,
        actor=actor,
        action="calendar.site_closed",
        entity="site",
        entity_id=None,
        detail={
            "day": day.isoformat(),
            "reason": reason,
            "slots_blocked": change.blocked_slots,
            "conflicting_appointments": list(change.conflicts),
        },
    )
    return change


def _block_free_slots(
    session: Session, overlapping: Sequence[ColumnElement[bool]]
) -> CalendarChange:
    """Block the free slots matching `overlapping`; the active appointments in the others."""
    blocked = session.exec(
        update(Slot)
        .where(*overlapping, col(Slot.status) == SlotStatus.FREE)
        .values(status=SlotStatus.BLOCKED)
    ).rowcount
    conflicts = _active_appointments(session, overlapping)
    session.flush()
    return CalendarChange(blocked_slots=blocked, conflicts=conflicts)


def _active_appointments(
    session: Session, slot_conditions: Sequence[ColumnElement[bool]]
) -> tuple[int, ...]:
    return tuple(
        appointment_id
        for appointment_id in session.exec(
            select(Appointment.id)
            .join(Slot, col(Slot.id) == col(Appointment.slot_id))
            .where(*slot_conditions, col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES))
            .order_by(col(Appointment.start))
        ).all()
        if appointment_id is not None
    )
