"""Booking windows and slot choice (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.core.scheduling import (
    NO_PREFERENCES,
    BookingWindow,
    ChainStep,
    DayPart,
    FreedSlot,
    OfferTiming,
    Period,
    Preferences,
    ProviderCalendar,
    Step,
    WaitingPatient,
    WorkingSession,
    booking_window,
    choose_waitlist_offer,
    fallback_chain,
    fitting_slots,
    offer_deadline,
    plan_slot_sync,
    site_holidays,
    waitlist_priority,
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


def test_calendar_slots_skip_weekends_holidays_and_blocked_time() -> None:
    calendar = ProviderCalendar(
        zone=NY,
        blocked=(Period(datetime(2026, 11, 27, 13, tzinfo=NY), datetime(2026, 11, 28, tzinfo=NY)),),
    )
    slots = list(calendar.slot_times(date(2026, 11, 25), 5, closed_days=US_HOLIDAYS))
    by_day: dict[date, int] = {}
    for start, _ in slots:
        by_day[start.date()] = by_day.get(start.date(), 0) + 1
    # Wed 25: 09–12 and 13–17 in 30-minute slots; Thu 26 Thanksgiving; Fri 27 morning only.
    assert by_day == {date(2026, 11, 25): 14, date(2026, 11, 27): 6}
    assert all(end - start == timedelta(minutes=30) for start, end in slots)


def test_calendar_lays_slots_from_each_session_start_and_drops_a_short_remainder() -> None:
    calendar = ProviderCalendar(
        zone=NY, sessions=(WorkingSession(0, time(8, 10), time(9, 55)),), slot_minutes=45
    )
    starts = [s.time() for s, _ in calendar.slot_times(date(2027, 3, 1), 1, closed_days=())]
    assert starts == [time(8, 10), time(8, 55)]
    assert calendar.within_hours(
        datetime(2027, 3, 1, 8, 55, tzinfo=NY), datetime(2027, 3, 1, 9, 40, tzinfo=NY)
    )
    assert not calendar.within_hours(
        datetime(2027, 3, 1, 9, 40, tzinfo=NY), datetime(2027, 3, 1, 10, 25, tzinfo=NY)
    )


def test_weekend_hours_and_inverted_sessions_are_refused() -> None:
    with pytest.raises(ValueError, match="Monday–Friday"):
        WorkingSession(5, time(9), time(12))
    with pytest.raises(ValueError, match="ends before"):
        WorkingSession(1, time(12), time(9))


def test_preferences_accept_only_the_stated_day_part_and_weekdays() -> None:
    thursday_afternoons = Preferences(day_part=DayPart.AFTERNOON, weekdays=frozenset({3}))
    assert thursday_afternoons.accepts(datetime(2027, 3, 4, 13, tzinfo=NY), NY)
    assert not thursday_afternoons.accepts(datetime(2027, 3, 4, 11, 30, tzinfo=NY), NY)
    assert not thursday_afternoons.accepts(datetime(2027, 3, 5, 13, tzinfo=NY), NY)
    # Judged in the clinic's zone: 16:00 UTC is 11:00 in New York, a morning.
    assert Preferences(day_part=DayPart.MORNING).accepts(datetime(2027, 3, 4, 16, tzinfo=UTC), NY)
    assert thursday_afternoons.describe() == "afternoons, Thu"
    assert NO_PREFERENCES.describe() == "none"


@dataclass(frozen=True)
class FakeProvider:
    id: int
    practice: str = "Riverside"
    covering_provider_id: int | None = None
    active: bool = True


def test_fallback_chain_is_ordering_then_covering_then_the_rest_of_the_practice() -> None:
    ordering = FakeProvider(1, covering_provider_id=4)
    covering = FakeProvider(4, practice="Harbor")
    practice = [FakeProvider(3), FakeProvider(2), FakeProvider(5, active=False), FakeProvider(4)]
    chain = fallback_chain(ordering, covering=covering, practice=practice)
    assert chain == [
        ChainStep(Step.ORDERING, (1,)),
        ChainStep(Step.COVERING, (4,)),
        ChainStep(Step.PRACTICE, (2, 3)),
    ]


def test_fallback_chain_leaves_out_inactive_providers() -> None:
    ordering = FakeProvider(1, covering_provider_id=2, active=False)
    chain = fallback_chain(ordering, covering=FakeProvider(2, active=False), practice=[])
    assert chain == []


def test_window_starting_after_keeps_the_tier_and_never_inverts() -> None:
    window = BookingWindow(
        datetime(2027, 3, 8, tzinfo=NY), datetime(2027, 3, 16, tzinfo=NY), "routine"
    )
    later = window.starting_after(datetime(2027, 3, 10, 9, tzinfo=NY))
    assert later.earliest == datetime(2027, 3, 10, 9, 0, 1, tzinfo=NY)
    assert later.latest == window.latest and later.tier == "routine"
    assert not later.contains(datetime(2027, 3, 10, 9, tzinfo=NY))
    past = window.starting_after(datetime(2027, 4, 1, tzinfo=NY))
    assert past.earliest == past.latest
    assert window.describe(NY) == "routine window 2027-03-08–2027-03-15"


def test_waitlist_priority_puts_urgent_first_then_the_longest_waiting() -> None:
    day = datetime(2027, 3, 1, tzinfo=UTC)
    entries = [
        ("routine-old", "routine", day),
        ("urgent-new", "urgent", day + timedelta(days=2)),
        ("urgent-old", "urgent", day + timedelta(days=1)),
        ("routine-new", "routine", day + timedelta(days=3)),
    ]
    ordered = sorted(entries, key=lambda e: waitlist_priority(e[1], e[2]))
    assert [name for name, _, _ in ordered] == [
        "urgent-old",
        "urgent-new",
        "routine-old",
        "routine-new",
    ]


def test_offer_deadline_leaves_notice_before_the_visit() -> None:
    now = datetime(2027, 3, 1, 9, tzinfo=UTC)
    ttl, notice = timedelta(hours=4), timedelta(hours=12)
    assert offer_deadline(now, now + timedelta(days=3), ttl=ttl, notice=notice) == now + ttl
    assert offer_deadline(
        now, now + timedelta(hours=14), ttl=ttl, notice=notice
    ) == now + timedelta(hours=2)
    assert offer_deadline(now, now + timedelta(hours=12), ttl=ttl, notice=notice) is None


@dataclass
class StoredSlot:
    start: datetime
    end: datetime
    status: str
    generated: bool = True


def _at(hour: int, minute: int = 0) -> datetime:
    return datetime(2027, 3, 1, hour, minute, tzinfo=UTC)


def test_slot_sync_blocks_unwanted_free_slots_and_never_overlaps_a_booked_one() -> None:
    booked = StoredSlot(_at(9), _at(9, 30), "booked")
    unwanted = StoredSlot(_at(9, 30), _at(10), "free")
    imported = StoredSlot(_at(11), _at(11, 30), "free", generated=False)
    back = StoredSlot(_at(12), _at(12, 20), "blocked")
    # The provider switched to 20-minute slots from 09:00 to 12:40.
    wanted = [
        (_at(9) + timedelta(minutes=20 * i), _at(9) + timedelta(minutes=20 * (i + 1)))
        for i in range(11)
    ]
    plan = plan_slot_sync(wanted, [booked, unwanted, imported, back])
    assert plan.block == (unwanted,)
    assert plan.reopen == (back,)
    assert [s.time() for s, _ in plan.create] == [
        time(9, 40),
        time(10),
        time(10, 20),
        time(10, 40),
        time(11, 40),
        time(12, 20),
    ]


def test_slot_sync_is_idempotent() -> None:
    wanted = [(_at(9), _at(9, 30)), (_at(9, 30), _at(10))]
    stored = [StoredSlot(s, e, "free") for s, e in wanted]
    plan = plan_slot_sync(wanted, stored)
    assert plan == type(plan)(create=(), block=(), reopen=())


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
        for start, _ in ProviderCalendar(zone=NY).slot_times(
            final.date(),
            30,
            closed_days=(),  # include holidays on purpose
        )
    ]
    chosen = fitting_slots(candidates, window, zone=NY, closed_days=US_HOLIDAYS)
    assert chosen, "a 30-day calendar always has business days inside a 3- or 8-day window"
    for slot in chosen:
        assert window.contains(slot.start)
        local_day = slot.start.astimezone(NY).date()
        assert local_day.weekday() < 5 and local_day not in US_HOLIDAYS
    assert chosen == sorted(chosen, key=lambda slot: slot.start)


@st.composite
def calendars(draw: st.DrawFn) -> ProviderCalendar:
    sessions = []
    for weekday in draw(st.sets(st.integers(0, 4), min_size=1)):
        first = draw(st.integers(6 * 60, 11 * 60))
        length = draw(st.integers(30, 5 * 60))
        sessions.append(WorkingSession(weekday, _clock(first), _clock(first + length)))
        if draw(st.booleans()):
            second = first + length + draw(st.integers(0, 90))
            sessions.append(
                WorkingSession(weekday, _clock(second), _clock(min(second + 180, 23 * 60)))
            )
    blocked = []
    for _ in range(draw(st.integers(0, 3))):
        start = datetime(2027, 3, 1, tzinfo=NY) + timedelta(
            minutes=draw(st.integers(0, 14 * 24 * 60))
        )
        blocked.append(Period(start, start + timedelta(minutes=draw(st.integers(15, 3 * 24 * 60)))))
    return ProviderCalendar(
        zone=NY,
        sessions=tuple(sessions),
        slot_minutes=draw(st.sampled_from([10, 15, 20, 30, 45, 60])),
        blocked=tuple(blocked),
    )


def _clock(minutes: int) -> time:
    return time(minutes // 60, minutes % 60)


@given(calendar=calendars(), closed=st.sets(st.dates(date(2027, 3, 1), date(2027, 3, 14))))
def test_calendar_slots_are_in_hours_on_open_days_unblocked_and_never_overlap(
    calendar: ProviderCalendar, closed: set[date]
) -> None:
    slots = list(calendar.slot_times(date(2027, 3, 1), 14, closed_days=closed))
    for start, end in slots:
        assert end - start == timedelta(minutes=calendar.slot_minutes)
        assert calendar.within_hours(start, end)
        assert start.weekday() < 5 and start.date() not in closed
        assert not any(period.overlaps(start, end) for period in calendar.blocked)
    ordered = sorted(slots)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(ordered))


@given(
    old=calendars(),
    new=calendars(),
    statuses=st.lists(
        st.sampled_from(["free", "booked", "blocked", "held"]), min_size=200, max_size=200
    ),
)
def test_slot_sync_never_creates_or_reopens_an_overlap(
    old: ProviderCalendar, new: ProviderCalendar, statuses: list[str]
) -> None:
    stored = [
        StoredSlot(start, end, status)
        for (start, end), status in zip(
            old.slot_times(date(2027, 3, 1), 7, closed_days=()), statuses, strict=False
        )
    ]
    plan = plan_slot_sync(list(new.slot_times(date(2027, 3, 1), 7, closed_days=())), stored)
    blocked = {id(s) for s in plan.block}
    reopened = {id(s) for s in plan.reopen}
    in_use = [
        (s.start, s.end)
        for s in stored
        if id(s) not in blocked and (s.status != "blocked" or id(s) in reopened)
    ]
    ordered = sorted(in_use + list(plan.create))
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(ordered))


# --- who is offered a freed slot (pure) ---------------------------------------------------------

_NY = ZoneInfo("America/New_York")
_SLOT = FreedSlot(
    start=datetime(2027, 3, 9, 10, tzinfo=_NY),
    provider_id=1,
    practice="Riverside",
    zone=_NY,
    covers_for=frozenset({7}),
)
_TIMING = OfferTiming(ttl=timedelta(hours=4), notice=timedelta(hours=12))


def _waiting(entry_id: int, **changes: object) -> WaitingPatient:
    values: dict[str, object] = {
        "entry_id": entry_id,
        "provider_id": 99,
        "practice": "Elsewhere",
        "urgency": "routine",
        "waiting_since": datetime(2027, 3, 1, tzinfo=_NY),
        "window": BookingWindow(
            datetime(2027, 3, 8, tzinfo=_NY), datetime(2027, 3, 16, tzinfo=_NY), "routine"
        ),
        "preferences": Preferences(),
        "zone": _NY,
    }
    return WaitingPatient(**(values | changes))  # type: ignore[arg-type]


def test_a_freed_slot_goes_to_the_first_suited_patient_urgent_then_longest_waiting() -> None:
    now = datetime(2027, 3, 8, 9, tzinfo=_NY)
    waiting = [
        _waiting(1),  # another practice, another provider: not theirs
        _waiting(2, provider_id=1, waiting_since=datetime(2027, 3, 2, tzinfo=_NY)),
        _waiting(3, practice="Riverside", waiting_since=datetime(2027, 2, 20, tzinfo=_NY)),
        _waiting(4, provider_id=7, preferences=Preferences(day_part=DayPart.AFTERNOON)),
        _waiting(
            5,
            provider_id=7,
            urgency="urgent",
            window=BookingWindow(
                datetime(2027, 3, 10, tzinfo=_NY), datetime(2027, 3, 12, tzinfo=_NY), "urgent"
            ),
        ),  # its window does not hold the slot
    ]

    chosen = choose_waitlist_offer(_SLOT, waiting, now=now, timing=_TIMING)

    assert chosen == (3, now + timedelta(hours=4))
    urgent = _waiting(6, provider_id=7, urgency="urgent")
    assert choose_waitlist_offer(_SLOT, [*waiting, urgent], now=now, timing=_TIMING) == (
        6,
        now + timedelta(hours=4),
    )


def test_an_offer_made_at_night_counts_from_the_morning_and_passes_over_the_unreachable() -> None:
    patient = _waiting(1, provider_id=1)
    night = datetime(2027, 3, 7, 23, tzinfo=_NY)
    assert choose_waitlist_offer(_SLOT, [patient], now=night, timing=_TIMING) == (
        1,
        datetime(2027, 3, 8, 12, tzinfo=_NY),  # 08:00, when a text may go, + 4 hours
    )
    # 21:00 the evening before: a text waits until 08:00, past the 12 hours' notice.
    evening = datetime(2027, 3, 8, 21, tzinfo=_NY)
    assert choose_waitlist_offer(_SLOT, [patient], now=evening, timing=_TIMING) is None
