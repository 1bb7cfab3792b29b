"""Booking windows and slot choice (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.scheduling import (
    BookingWindow,
    booking_window,
    business_hour_slots,
    fitting_slots,
    site_holidays,
)

NY = ZoneInfo("America/New_York")
US_HOLIDAYS = site_holidays("US", None, (2026, 2027))


@dataclass(frozen=True)
class FakeSlot:
    start: datetime


def test_routine_window_is_days_7_to_14_after_the_final_report_in_local_time() -> None:
    final = datetime(2026, 11, 26, 23, 30, tzinfo=NY)  # late evening: still the 26th locally
    window = booking_window(final, "routine", zone=NY, closed_days=US_HOLIDAYS)
    assert window == BookingWindow(
        earliest=datetime(2026, 12, 3, tzinfo=NY),
        latest=datetime(2026, 12, 11, tzinfo=NY),
        tier="routine",
    )


def test_urgent_window_is_the_next_three_business_days_skipping_weekend_and_holiday() -> None:
    # Wednesday before Thanksgiving 2026: Thu 26 is a holiday, then Fri, (weekend), Mon, Tue.
    final = datetime(2026, 11, 25, 15, 0, tzinfo=NY)
    window = booking_window(final, "urgent", zone=NY, closed_days=US_HOLIDAYS)
    assert window is not None
    assert window.earliest == datetime(2026, 11, 27, tzinfo=NY)
    assert window.latest == datetime(2026, 12, 2, tzinfo=NY)


def test_emergent_gets_no_window() -> None:
    final = datetime(2026, 11, 25, 15, 0, tzinfo=NY)
    assert booking_window(final, "emergent", zone=NY, closed_days=US_HOLIDAYS) is None


def test_unknown_tier_and_naive_time_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown urgency"):
        booking_window(datetime(2026, 1, 5, tzinfo=NY), "soon", zone=NY, closed_days=set())
    with pytest.raises(ValueError, match="aware"):
        booking_window(datetime(2026, 1, 5), "routine", zone=NY, closed_days=set())


def test_business_hour_slots_skip_weekends_and_holidays() -> None:
    slots = list(
        business_hour_slots(date(2026, 11, 25), 5, zone=NY, closed_days=US_HOLIDAYS)
    )
    days = sorted({start.date() for start, _ in slots})
    assert days == [date(2026, 11, 25), date(2026, 11, 27)]
    assert len(slots) == 2 * 14  # 09–12 and 13–17 in 30-minute slots
    assert all(end - start == timedelta(minutes=30) for start, end in slots)


@given(
    final=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 10, 1), timezones=st.just(NY)
    ),
    tier=st.sampled_from(["routine", "urgent"]),
)
def test_chosen_slots_are_always_inside_the_window_on_business_days(
    final: datetime, tier: str
) -> None:
    window = booking_window(final, tier, zone=NY, closed_days=US_HOLIDAYS)
    assert window is not None
    candidates = [
        FakeSlot(start)
        for start, _ in business_hour_slots(
            final.date(), 30, zone=NY, closed_days=set()  # include holidays on purpose
        )
    ]
    chosen = fitting_slots(candidates, window, zone=NY, closed_days=US_HOLIDAYS)
    assert chosen, "a 30-day calendar always has business days inside a 3- or 8-day window"
    for slot in chosen:
        assert window.contains(slot.start)
        local_day = slot.start.astimezone(NY).date()
        assert local_day.weekday() < 5 and local_day not in US_HOLIDAYS
    assert chosen == sorted(chosen, key=lambda slot: slot.start)
