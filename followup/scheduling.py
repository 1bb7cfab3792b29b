"""Booking windows and slot choice: plain functions over plain values.

The window is counted in the site's local calendar from the final report time (OBR-22, else
OBR-7), per DOMAIN.md §2: routine 7–14 days after, urgent within 1–3 business days, emergent
no booking at all (an escalation for an immediate call instead).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo

import holidays as holidays_lib

ROUTINE = "routine"
URGENT = "urgent"
EMERGENT = "emergent"


@dataclass(frozen=True, slots=True)
class BookingWindow:
    """Half-open [earliest, latest) interval of acceptable appointment starts."""

    earliest: datetime
    latest: datetime
    tier: str

    def contains(self, moment: datetime) -> bool:
        return self.earliest <= moment < self.latest


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    routine_min_days: int = 7
    routine_max_days: int = 14
    urgent_business_days: int = 3


class SlotLike(Protocol):
    @property
    def start(self) -> datetime: ...


S = TypeVar("S", bound=SlotLike)


def site_holidays(country: str, subdivision: str | None, years: Iterable[int]) -> Container[date]:
    """Public holidays of the site from the `holidays` package."""
    return holidays_lib.country_holidays(country, subdiv=subdivision, years=list(years))


def is_business_day(day: date, closed_days: Container[date]) -> bool:
    return day.weekday() < 5 and day not in closed_days


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


def fitting_slots(
    slots: Iterable[S], window: BookingWindow, *, zone: ZoneInfo, closed_days: Container[date]
) -> list[S]:
    """Slots inside the window and on a business day, earliest first."""
    return sorted(
        (
            slot
            for slot in slots
            if window.contains(slot.start)
            and is_business_day(slot.start.astimezone(zone).date(), closed_days)
        ),
        key=lambda slot: slot.start,
    )


@dataclass(frozen=True, slots=True)
class ClinicHours:
    """Weekly working hours: sessions of (start, end) local times on Monday–Friday."""

    sessions: tuple[tuple[time, time], ...] = ((time(9), time(12)), (time(13), time(17)))
    slot_minutes: int = 30


def business_hour_slots(
    first_day: date,
    days: int,
    *,
    zone: ZoneInfo,
    closed_days: Container[date],
    hours: ClinicHours = ClinicHours(),
) -> Iterator[tuple[datetime, datetime]]:
    """Slot (start, end) pairs in clinic hours on business days, as aware local datetimes."""
    length = timedelta(minutes=hours.slot_minutes)
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        if not is_business_day(day, closed_days):
            continue
        for session_start, session_end in hours.sessions:
            start = datetime.combine(day, session_start, tzinfo=zone)
            close = datetime.combine(day, session_end, tzinfo=zone)
            while start + length <= close:
                yield start, start + length
                start += length
