"""Property tests over random calendars, in the real database (SQLite and PostgreSQL).

Random providers (weekly hours, slot length, vacations, covering provider), random site
closures (some known only after the slots were laid), random hour changes mid-way, and random
booking requests (tier, report day, preferences). Every booking must start inside its window,
inside the provider's hours at that time, on an open business day, outside blocked time, as the
patient prefers, with a provider of the fallback chain and overlapping none of that provider's
other appointments. A request that books nothing must have had no fitting slot.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, col, select

from followup.core.scheduling import (
    DayPart,
    Period,
    Preferences,
    WorkingSession,
    booking_window,
    is_business_day,
)
from models import booking, calendar_queries
from models.db import session_scope
from models.tables import ACTIVE_APPOINTMENT_STATUSES, Appointment, Provider, Slot
from tests.booking.conftest import NY, REPORT_DAY, US_HOLIDAYS, Clinic

FIRST_DAY = REPORT_DAY
HORIZON = 28
_practices = itertools.count(1)


def _clock(minutes: int) -> time:
    return time(minutes // 60, minutes % 60)


@st.composite
def hours(draw: st.DrawFn) -> tuple[tuple[WorkingSession, ...], int]:
    sessions = []
    for weekday in draw(st.sets(st.integers(0, 4), min_size=1, max_size=5)):
        start = draw(st.integers(7 * 60, 11 * 60))
        end = start + draw(st.integers(30, 4 * 60))
        sessions.append(WorkingSession(weekday, _clock(start), _clock(end)))
        if draw(st.booleans()):
            later = end + draw(st.integers(0, 60))
            sessions.append(WorkingSession(weekday, _clock(later), _clock(later + 150)))
    return tuple(sessions), draw(st.sampled_from([15, 20, 30, 45, 60]))


@dataclass(frozen=True)
class ProviderPlan:
    sessions: tuple[WorkingSession, ...]
    slot_minutes: int
    covering: int | None  # index of another provider of the example
    vacations: tuple[tuple[int, int], ...]  # (start minute from FIRST_DAY, length in minutes)


@dataclass(frozen=True)
class Request:
    ordering: int
    tier: str
    report_offset: int  # days after FIRST_DAY
    preferences: Preferences


@dataclass(frozen=True)
class Scenario:
    providers: tuple[ProviderPlan, ...]
    closures: frozenset[date]
    closures_known_when_laying: bool
    requests: tuple[Request, ...]
    change_after: int  # requests before provider 0's hours change
    new_hours: tuple[tuple[WorkingSession, ...], int]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(1, 3))
    providers = []
    for index in range(count):
        sessions, minutes = draw(hours())
        others = [i for i in range(count) if i != index]
        providers.append(
            ProviderPlan(
                sessions=sessions,
                slot_minutes=minutes,
                covering=draw(st.none() | st.sampled_from(others)) if others else None,
                vacations=tuple(
                    draw(
                        st.lists(
                            st.tuples(
                                st.integers(0, HORIZON * 24 * 60), st.integers(30, 4 * 24 * 60)
                            ),
                            max_size=2,
                        )
                    )
                ),
            )
        )
    preferences = st.builds(
        Preferences,
        day_part=st.none() | st.sampled_from(list(DayPart)),
        weekdays=st.frozensets(st.integers(0, 4), max_size=3),
    )
    requests = draw(
        st.lists(
            st.builds(
                Request,
                ordering=st.integers(0, count - 1),
                tier=st.sampled_from(["routine", "urgent"]),
                report_offset=st.integers(0, 6),
                preferences=st.just(Preferences()) | preferences,
            ),
            min_size=1,
            max_size=12,
        )
    )
    return Scenario(
        providers=tuple(providers),
        closures=draw(
            st.frozensets(st.dates(FIRST_DAY, FIRST_DAY + timedelta(days=HORIZON)), max_size=3)
        ),
        closures_known_when_laying=draw(st.booleans()),
        requests=tuple(requests),
        change_after=draw(st.integers(0, len(requests))),
        new_hours=draw(hours()),
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_bookings_on_random_calendars_respect_every_constraint(
    clinic: Clinic, scenario: Scenario
) -> None:
    practice = f"P{next(_practices)}"
    ids: list[int] = []
    for plan in scenario.providers:
        ids.append(
            clinic.provider(
                practice=practice, sessions=plan.sessions, slot_minutes=plan.slot_minutes
            )
        )
    start_of_horizon = datetime.combine(FIRST_DAY, time.min, tzinfo=NY)
    with session_scope(clinic.url) as session:
        for provider_id, plan in zip(ids, scenario.providers, strict=True):
            provider = session.get_one(Provider, provider_id)
            provider.covering_provider_id = (
                ids[plan.covering] if plan.covering is not None else None
            )
            session.add(provider)
            for offset, length in plan.vacations:
                begin = start_of_horizon + timedelta(minutes=offset)
                calendar_queries.add_blocked_period(
                    session=session,
                    provider_id=provider_id,
                    start=begin,
                    end=begin + timedelta(minutes=length),
                    reason="vacation",
                )
    closed = US_HOLIDAYS | scenario.closures
    laid_with = closed if scenario.closures_known_when_laying else US_HOLIDAYS
    for provider_id in ids:
        clinic.lay_slots(provider_id, first_day=FIRST_DAY, days=HORIZON, closed=laid_with)

    for number, request in enumerate(scenario.requests):
        if number == scenario.change_after:
            _change_hours(clinic, ids[0], scenario.new_hours, laid_with)
        final_at = datetime.combine(
            FIRST_DAY + timedelta(days=request.report_offset), time(16), tzinfo=NY
        )
        window = booking_window(final_at, request.tier, zone=NY, closed_days=closed)
        assert window is not None
        result = clinic.book(
            clinic.patient(),
            ids[request.ordering],
            window=window,
            preferences=request.preferences,
            closed=closed,
        )
        with session_scope(clinic.url) as session:
            chain = _chain(session, ids[request.ordering])
            if result.booked is None:
                assert _fitting_free_slots(session, chain, window, closed, request) == []
                continue
            slot = session.get_one(Slot, result.booked.slot_id)
            provider = session.get_one(Provider, slot.provider_id)
            calendar = calendar_queries.provider_calendar(session=session, provider=provider)
            local_day = slot.start.astimezone(NY).date()

            assert slot.provider_id in chain
            assert window.contains(slot.start)
            assert calendar.within_hours(slot.start, slot.end)
            assert is_business_day(local_day, closed)
            assert not any(p.overlaps(slot.start, slot.end) for p in calendar.blocked)
            assert request.preferences.accepts(slot.start, NY)
            others = _active_periods(session, slot.provider_id, exclude=slot.id)
            assert not any(p.overlaps(slot.start, slot.end) for p in others)


def _change_hours(
    clinic: Clinic,
    provider_id: int,
    new_hours: tuple[tuple[WorkingSession, ...], int],
    closed: frozenset[date],
) -> None:
    sessions, minutes = new_hours
    with session_scope(clinic.url) as session:
        calendar_queries.set_working_hours(
            session=session, provider_id=provider_id, sessions=sessions
        )
        session.get_one(Provider, provider_id).slot_minutes = minutes
    clinic.lay_slots(provider_id, first_day=FIRST_DAY, days=HORIZON, closed=closed)


def _chain(session: Session, ordering_id: int) -> set[int]:
    ordering = session.get_one(Provider, ordering_id)
    members = session.exec(select(Provider.id).where(Provider.practice == ordering.practice))
    return {i for i in members if i is not None} | {ordering.covering_provider_id or ordering_id}


def _fitting_free_slots(
    session: Session,
    chain: set[int],
    window: booking.BookingWindow,
    closed: frozenset[date],
    request: Request,
) -> list[Slot]:
    free = session.exec(
        select(Slot).where(col(Slot.provider_id).in_(chain), Slot.status == "free")
    ).all()
    return [
        slot
        for slot in free
        if window.contains(slot.start)
        and is_business_day(slot.start.astimezone(NY).date(), closed)
        and request.preferences.accepts(slot.start, NY)
    ]


def _active_periods(session: Session, provider_id: int, *, exclude: int | None) -> list[Period]:
    rows = session.exec(
        select(Slot)
        .join(Appointment, col(Appointment.slot_id) == col(Slot.id))
        .where(
            Slot.provider_id == provider_id,
            col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES),
            Slot.id != exclude,
        )
    ).all()
    return [Period(s.start, s.end) for s in rows]
