"""Booking windows, provider calendars and slot choice: plain functions over plain values.

The window is counted in the site's local calendar from the final report time (OBR-22, else
OBR-7), per DOMAIN.md §2: routine 7–14 days after, urgent within 1–3 business days, emergent
no booking at all (an escalation for an immediate call instead).

A provider's calendar (weekly working sessions, slot length, time zone, blocked periods) turns
into bookable slot times here; the database layer stores them (see docs/booking.md for why the
slots are materialized) and this module decides which of them a booking may take, in which
order providers are tried, and who on the waitlist is offered a freed slot.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Generic, Protocol, TypeVar
from zoneinfo import ZoneInfo

import holidays as holidays_lib

from followup.core.messaging.policy import next_allowed_send_time

ROUTINE = "routine"
URGENT = "urgent"
EMERGENT = "emergent"

WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
BUSINESS_WEEKDAYS = range(5)  # the site's business days: Monday–Friday, minus closed days


@dataclass(frozen=True, slots=True)
class BookingWindow:
    """Half-open [earliest, latest) interval of acceptable appointment starts."""

    earliest: datetime
    latest: datetime
    tier: str

    def contains(self, moment: datetime) -> bool:
        return self.earliest <= moment < self.latest

    def starting_after(self, moment: datetime) -> BookingWindow:
        """The part of the window that starts strictly after `moment` (whole-second starts)."""
        earliest = max(self.earliest, moment + timedelta(seconds=1))
        return BookingWindow(earliest=earliest, latest=max(earliest, self.latest), tier=self.tier)

    def from_now(self, now: datetime) -> BookingWindow:
        """The part still ahead of `now`; a window already passed becomes one as long, from
        now (a late report is still seen within its tier's length, the earliest slot first)."""
        if self.latest > now:
            return self.starting_after(now)
        length = self.latest - self.earliest
        return BookingWindow(earliest=now, latest=now + length, tier=self.tier)

    def describe(self, zone: ZoneInfo) -> str:
        first = self.earliest.astimezone(zone).date()
        last = (self.latest.astimezone(zone) - timedelta(microseconds=1)).date()
        return f"{self.tier} window {first}–{last}"


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    routine_min_days: int = 7
    routine_max_days: int = 14
    urgent_business_days: int = 3


class SlotLike(Protocol):
    @property
    def start(self) -> datetime: ...


S = TypeVar("S", bound=SlotLike)


def site_holidays(country: str, subdivision: str | None, years: Iterable[int]) -> frozenset[date]:
    """Public holidays of the site from the `holidays` package (cached: building them is slow)."""
    return _holidays(country, subdivision, tuple(sorted(set(years))))


@lru_cache(maxsize=32)
def _holidays(country: str, subdivision: str | None, years: tuple[int, ...]) -> frozenset[date]:
    return frozenset(holidays_lib.country_holidays(country, subdiv=subdivision, years=years))


def is_business_day(day: date, closed_days: Container[date]) -> bool:
    return day.weekday() in BUSINESS_WEEKDAYS and day not in closed_days


def business_days_after(start: date, closed_days: Container[date]) -> Iterator[date]:
    day = start
    while True:
        day += timedelta(days=1)
        if is_business_day(day, closed_days):
            yield day


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone)


def booking_window(
    final_at: datetime,
    urgency: str,
    *,
    zone: ZoneInfo,
    closed_days: Container[date],
    policy: WindowPolicy = WindowPolicy(),
) -> BookingWindow | None:
    """The window a follow-up must start in, or None when the tier forbids routine booking."""
    if final_at.tzinfo is None:
        raise ValueError("final_at must be timezone-aware")
    report_day = final_at.astimezone(zone).date()
    if urgency == EMERGENT:
        return None
    if urgency == URGENT:
        days = business_days_after(report_day, closed_days)
        first = next(days)
        last = first
        for _ in range(policy.urgent_business_days - 1):
            last = next(days)
        return BookingWindow(
            earliest=_local_midnight(first, zone),
            latest=_local_midnight(last + timedelta(days=1), zone),
            tier=URGENT,
        )
    if urgency == ROUTINE:
        first = report_day + timedelta(days=policy.routine_min_days)
        last = report_day + timedelta(days=policy.routine_max_days)
        return BookingWindow(
            earliest=_local_midnight(first, zone),
            latest=_local_midnight(last + timedelta(days=1), zone),
            tier=ROUTINE,
        )
    raise ValueError(f"unknown urgency tier {urgency!r}")


# --- calendars ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class WorkingSession:
    """One weekly stretch of clinic hours, e.g. Monday 09:00–12:00 (local wall-clock time)."""

    weekday: int  # 0 = Monday
    start: time
    end: time

    def __post_init__(self) -> None:
        if self.weekday not in BUSINESS_WEEKDAYS:
            raise ValueError(
                f"working hours on {WEEKDAY_NAMES[self.weekday % 7]}: "
                "the site's business days are Monday–Friday"
            )
        if not self.start < self.end:
            raise ValueError(f"working session {self.start}–{self.end} ends before it starts")

    def __str__(self) -> str:
        return f"{WEEKDAY_NAMES[self.weekday]} {self.start:%H:%M}-{self.end:%H:%M}"


DEFAULT_SESSIONS = tuple(
    WorkingSession(weekday, start, end)
    for weekday in BUSINESS_WEEKDAYS
    for start, end in ((time(9), time(12)), (time(13), time(17)))
)


@dataclass(frozen=True, slots=True)
class Period:
    """Half-open [start, end) stretch of absolute time (a vacation, a busy block)."""

    start: datetime
    end: datetime

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and start < self.end


@dataclass(frozen=True, slots=True)
class ProviderCalendar:
    """Weekly hours, slot length, time zone and blocked periods of one provider."""

    zone: ZoneInfo
    sessions: tuple[WorkingSession, ...] = DEFAULT_SESSIONS
    slot_minutes: int = 30
    blocked: tuple[Period, ...] = ()

    def __post_init__(self) -> None:
        if self.slot_minutes <= 0:
            raise ValueError("slot length must be positive")

    def slot_times(
        self, first_day: date, days: int, *, closed_days: Container[date]
    ) -> Iterator[tuple[datetime, datetime]]:
        """(start, end) of every slot in working hours on business days, outside blocked periods.

        Slots are laid from each session's start; a remainder shorter than a slot is unused.
        Times are aware, in the provider's zone.
        """
        length = timedelta(minutes=self.slot_minutes)
        by_weekday = {
            weekday: sorted(s for s in self.sessions if s.weekday == weekday)
            for weekday in BUSINESS_WEEKDAYS
        }
        for offset in range(days):
            day = first_day + timedelta(days=offset)
            if not is_business_day(day, closed_days):
                continue
            for session in by_weekday[day.weekday()]:
                start = datetime.combine(day, session.start, tzinfo=self.zone)
                close = datetime.combine(day, session.end, tzinfo=self.zone)
                while start + length <= close:
                    end = start + length
                    if not any(period.overlaps(start, end) for period in self.blocked):
                        yield start, end
                    start = end

    def within_hours(self, start: datetime, end: datetime) -> bool:
        """Whether [start, end) lies inside one working session of its local day."""
        local_start, local_end = start.astimezone(self.zone), end.astimezone(self.zone)
        return local_start.date() == local_end.date() and any(
            s.weekday == local_start.weekday()
            and s.start <= local_start.time()
            and local_end.time() <= s.end
            for s in self.sessions
        )


# --- patient preferences -----------------------------------------------------------------------


class DayPart(StrEnum):
    MORNING = "morning"
    AFTERNOON = "afternoon"


NOON = time(12)


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the patient told us about when they can come; empty means anything goes."""

    day_part: DayPart | None = None
    weekdays: frozenset[int] = frozenset()

    def accepts(self, start: datetime, zone: ZoneInfo) -> bool:
        """Judged in the clinic's local time, where the visit happens."""
        local = start.astimezone(zone)
        if self.weekdays and local.weekday() not in self.weekdays:
            return False
        if self.day_part is DayPart.MORNING:
            return local.time() < NOON
        if self.day_part is DayPart.AFTERNOON:
            return local.time() >= NOON
        return True

    def describe(self) -> str:
        parts = [f"{self.day_part}s"] if self.day_part else []
        if self.weekdays:
            parts.append("/".join(WEEKDAY_NAMES[day] for day in sorted(self.weekdays)))
        return ", ".join(parts) or "none"


NO_PREFERENCES = Preferences()


def fitting_slots(
    slots: Iterable[S],
    window: BookingWindow,
    *,
    zone: ZoneInfo,
    closed_days: Container[date],
    preferences: Preferences = NO_PREFERENCES,
) -> list[S]:
    """Slots inside the window, on a business day and as the patient prefers, earliest first."""
    return sorted(
        (
            slot
            for slot in slots
            if window.contains(slot.start)
            and is_business_day(slot.start.astimezone(zone).date(), closed_days)
            and preferences.accepts(slot.start, zone)
        ),
        key=lambda slot: slot.start,
    )


# --- the fallback chain ------------------------------------------------------------------------


class Step(StrEnum):
    ORDERING = "ordering provider"
    COVERING = "covering provider"
    PRACTICE = "practice"


class ProviderLike(Protocol):
    @property
    def id(self) -> int | None: ...
    @property
    def practice(self) -> str: ...
    @property
    def covering_provider_id(self) -> int | None: ...
    @property
    def active(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChainStep:
    step: Step
    provider_ids: tuple[int, ...]


def fallback_chain(
    ordering: ProviderLike, *, covering: ProviderLike | None, practice: Iterable[ProviderLike]
) -> list[ChainStep]:
    """Ordering provider → covering provider → the rest of the ordering provider's practice.

    Inactive providers are left out; a provider appears in one step only.
    """
    chain: list[ChainStep] = []
    seen: set[int] = set()
    for step, members in (
        (Step.ORDERING, [ordering]),
        (Step.COVERING, [covering] if covering is not None else []),
        (Step.PRACTICE, sorted(practice, key=lambda p: p.id or 0)),
    ):
        ids = tuple(p.id for p in members if p.active and p.id is not None and p.id not in seen)
        seen.update(ids)
        if ids:
            chain.append(ChainStep(step, ids))
    return chain


# --- slot maintenance --------------------------------------------------------------------------


class SlotStatus(StrEnum):
    FREE = "free"
    HELD = "held"  # offered to a waitlisted patient, waiting for the answer
    BOOKED = "booked"
    BLOCKED = "blocked"


class ExistingSlot(Protocol):
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...
    @property
    def status(self) -> str: ...
    @property
    def generated(self) -> bool: ...


E = TypeVar("E", bound=ExistingSlot)


@dataclass(frozen=True, slots=True)
class SlotPlan(Generic[E]):
    create: tuple[tuple[datetime, datetime], ...]
    block: tuple[E, ...]
    reopen: tuple[E, ...]


class _Occupancy:
    """Non-overlapping [start, end) intervals kept sorted, for overlap checks by bisection."""

    def __init__(self, intervals: Iterable[tuple[datetime, datetime]]) -> None:
        self._items = sorted(intervals)

    def overlaps(self, start: datetime, end: datetime) -> bool:
        # Of the intervals starting before `end`, the last one ends latest (they do not overlap).
        before = bisect_left(self._items, (end,))
        return before > 0 and self._items[before - 1][1] > start

    def add(self, start: datetime, end: datetime) -> None:
        insort(self._items, (start, end))


def plan_slot_sync(
    wanted: Iterable[tuple[datetime, datetime]], existing: Sequence[E]
) -> SlotPlan[E]:
    """Bring stored slots in line with the calendar without ever creating an overlap.

    `existing` are the provider's stored slots in the range; `generated` tells calendar-made
    slots from imported ones, which the calendar never touches. Calendar-made free slots the
    calendar no longer wants are blocked; blocked ones it wants again are reopened, and missing
    ones created, only where they overlap no slot that stays in use (free, held or booked).
    """
    wanted_set = set(wanted)
    block = tuple(
        s
        for s in existing
        if s.generated and s.status == SlotStatus.FREE and (s.start, s.end) not in wanted_set
    )
    blocking = {id(s) for s in block}
    occupied = _Occupancy(
        (s.start, s.end)
        for s in existing
        if s.status != SlotStatus.BLOCKED and id(s) not in blocking
    )
    reopen = []
    for slot in sorted(existing, key=lambda s: s.start):
        wanted_again = slot.generated and (slot.start, slot.end) in wanted_set
        blocked = slot.status == SlotStatus.BLOCKED
        if blocked and wanted_again and not occupied.overlaps(slot.start, slot.end):
            reopen.append(slot)
            occupied.add(slot.start, slot.end)
    stored = {(s.start, s.end) for s in existing}
    create = []
    for start, end in sorted(wanted_set - stored):
        if not occupied.overlaps(start, end):
            create.append((start, end))
            occupied.add(start, end)
    return SlotPlan(create=tuple(create), block=block, reopen=tuple(reopen))


# --- the waitlist ------------------------------------------------------------------------------


def waitlist_priority(urgency: str, waiting_since: datetime) -> tuple[int, datetime]:
    """Sort key: urgent before routine, then whoever has waited longest."""
    return (0 if urgency == URGENT else 1, waiting_since)


@dataclass(frozen=True, slots=True)
class OfferTiming:
    """How long a waitlisted patient has to answer an offer, from when its text may reach
    them (the hours texts may be sent), and how long before the visit an offer lapses at the
    latest. From Settings (`Settings.offer_timing`)."""

    ttl: timedelta
    notice: timedelta
    send_from_hour: int = 8
    send_until_hour: int = 20


@dataclass(frozen=True, slots=True)
class FreedSlot:
    start: datetime
    provider_id: int
    practice: str
    zone: ZoneInfo  # the provider's: preferences are judged where the visit happens
    covers_for: frozenset[int]  # providers whose covering provider the slot's provider is


@dataclass(frozen=True, slots=True)
class WaitingPatient:
    entry_id: int
    provider_id: int  # their ordering provider
    practice: str
    urgency: str
    waiting_since: datetime
    window: BookingWindow
    preferences: Preferences
    zone: ZoneInfo | None  # the patient's, for quiet hours; None: the strict all-US window


def choose_waitlist_offer(
    slot: FreedSlot,
    waiting: Iterable[WaitingPatient],
    *,
    now: datetime,
    timing: OfferTiming,
) -> tuple[int, datetime] | None:
    """Who is offered the freed slot, and until when: the first waitlisted patient it suits
    (urgent first, then longest waiting; the slot's provider is theirs, their covering provider
    or in their practice; the slot lies in their window and as they prefer) who can be texted
    in time. The deadline counts `timing.ttl` from when the text may reach them (quiet hours
    in their zone), so an offer made at night does not lapse unread. None when nobody fits or
    it is too late to offer the slot at all."""
    if offer_deadline(now, slot.start, ttl=timing.ttl, notice=timing.notice) is None:
        return None
    suited = sorted(
        (
            patient
            for patient in waiting
            if patient.window.contains(slot.start)
            and (
                patient.provider_id == slot.provider_id
                or patient.practice == slot.practice
                or patient.provider_id in slot.covers_for
            )
            and patient.preferences.accepts(slot.start, slot.zone)
        ),
        key=lambda patient: waitlist_priority(patient.urgency, patient.waiting_since),
    )
    for patient in suited:
        reachable = next_allowed_send_time(
            now,
            patient.zone,
            start_hour=timing.send_from_hour,
            end_hour=timing.send_until_hour,
        )
        deadline = offer_deadline(reachable, slot.start, ttl=timing.ttl, notice=timing.notice)
        if deadline is not None:
            return patient.entry_id, deadline
    return None


def offer_deadline(
    now: datetime, slot_start: datetime, *, ttl: timedelta, notice: timedelta
) -> datetime | None:
    """When an offer for a freed slot lapses: after `ttl`, and early enough to still give the
    patient `notice` before the visit. None when it is already too late to offer the slot."""
    deadline = min(now + ttl, slot_start - notice)
    return deadline if deadline > now else None
