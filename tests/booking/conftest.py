"""A small clinic in a real database (SQLite and PostgreSQL) for the booking tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from followup.core.scheduling import (
    DEFAULT_SESSIONS,
    BookingWindow,
    Preferences,
    WorkingSession,
    site_holidays,
)
from followup.settings import Settings
from models import booking, calendar_queries
from models.db import session_scope
from models.tables import (
    Decision,
    ImagingStudy,
    InboxMessage,
    Patient,
    Provider,
    Referral,
)

NY = ZoneInfo("America/New_York")
US_HOLIDAYS = site_holidays("US", None, (2027, 2028))
# Monday 2027-03-01; the routine window for a report that day is Mon 8 – Mon 15 March.
REPORT_DAY = date(2027, 3, 1)
REPORTED = datetime(2027, 3, 1, 15, tzinfo=NY)
ROUTINE = BookingWindow(
    datetime(2027, 3, 8, tzinfo=NY), datetime(2027, 3, 16, tzinfo=NY), "routine"
)
OFFER_TIMING = Settings().offer_timing  # the defaults: 4 hours to answer, 12 hours' notice

_numbers = itertools.count(1)


@dataclass
class Clinic:
    """Rows made through the same queries the engine uses, each in its own transaction."""

    url: str
    practice: str = "Riverside"

    def provider(
        self,
        *,
        practice: str | None = None,
        covering: int | None = None,
        sessions: Iterable[WorkingSession] = DEFAULT_SESSIONS,
        slot_minutes: int = 30,
        active: bool = True,
        family_name: str = "",
    ) -> int:
        number = next(_numbers)
        with session_scope(self.url) as session:
            provider = Provider(
                npi=f"9{number:09d}",
                family_name=family_name or f"Doctor{number}",
                practice=practice or self.practice,
                timezone=NY.key,
                covering_provider_id=covering,
                slot_minutes=slot_minutes,
                active=active,
            )
            session.add(provider)
            session.flush()
            assert provider.id is not None
            calendar_queries.set_working_hours(
                session=session, provider_id=provider.id, sessions=sessions
            )
            return provider.id

    def lay_slots(
        self,
        provider_id: int,
        *,
        first_day: date = REPORT_DAY,
        days: int = 21,
        closed: Iterable[date] = US_HOLIDAYS,
    ) -> calendar_queries.SlotSync:
        with session_scope(self.url) as session:
            return calendar_queries.materialize_slots(
                session=session,
                provider_id=provider_id,
                first_day=first_day,
                days=days,
                closed_days=closed,
            )

    def patient(
        self, preferences: Preferences | None = None, *, timezone: str | None = NY.key
    ) -> int:
        with session_scope(self.url) as session:
            preferences = preferences or Preferences()
            patient = Patient(
                mrn=f"MRN{next(_numbers)}",
                family_name="Doe",
                phone_e164="+15555550123",
                timezone=timezone,
                preferred_day_part=preferences.day_part,
                preferred_weekdays=sorted(preferences.weekdays) or None,
            )
            session.add(patient)
            session.flush()
            assert patient.id is not None
            return patient.id

    def study(
        self, patient_id: int, provider_id: int | None, *, urgency: str = "routine"
    ) -> tuple[int, int]:
        """A final report from `provider_id`'s order, with its decision: (study id, decision id)."""
        with session_scope(self.url) as session:
            inbox = InboxMessage(raw=b"MSH|...", source="test", content_type="hl7v2")
            session.add(inbox)
            session.flush()
            study = ImagingStudy(
                accession=f"ACC{next(_numbers)}",
                patient_id=patient_id,
                ordering_provider_id=provider_id,
                final_at=REPORTED,
                report_status="F",
                report_text="IMPRESSION: ...",
                inbox_id=inbox.id,  # type: ignore[arg-type]
            )
            session.add(study)
            session.flush()
            decision = Decision(
                study_id=study.id,  # type: ignore[arg-type]
                inbox_id=inbox.id,  # type: ignore[arg-type]
                urgency=urgency,
                critical=False,
                needs_review=False,
                rules_version="test",
            )
            session.add(decision)
            session.flush()
            assert study.id is not None and decision.id is not None
            return study.id, decision.id

    def referral(
        self, *, urgency: str = "routine", opened: datetime, specialty: str = "neurology"
    ) -> int:
        patient_id = self.patient()
        study_id, decision_id = self.study(patient_id, None, urgency=urgency)
        with session_scope(self.url) as session:
            referral = Referral(
                study_id=study_id,
                decision_id=decision_id,
                specialty=specialty,
                created_at=opened,
                status_changed_at=opened,
            )
            session.add(referral)
            session.flush()
            assert referral.id is not None
            return referral.id

    def book(
        self,
        patient_id: int,
        provider_id: int,
        *,
        window: BookingWindow = ROUTINE,
        study_id: int | None = None,
        preferences: Preferences | None = None,
        closed: frozenset[date] = US_HOLIDAYS,
    ) -> booking.BookingResult:
        with session_scope(self.url) as session:
            return booking.book_with_fallback(
                session=session,
                patient_id=patient_id,
                study_id=study_id,
                ordering_provider_id=provider_id,
                window=window,
                closed_days=closed,
                preferences=preferences or Preferences(),
            )


@pytest.fixture
def clinic(database_url: str) -> Clinic:
    return Clinic(database_url)
