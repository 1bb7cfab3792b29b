"""The demo clinic: five providers in two practices, business hours, slots laid from them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from followup.core.scheduling import DEFAULT_SESSIONS
from models.calendar_queries import materialize_slots, set_working_hours
from models.tables import Provider, WorkingHours

# (NPI, family, given, practice). The bundled demo messages order from these NPIs.
DEMO_PROVIDERS = (
    ("1000000001", "Okafor", "Adaeze", "Riverside Primary Care"),
    ("1000000002", "Lindqvist", "Erik", "Riverside Primary Care"),
    ("1000000003", "Ramanathan", "Priya", "Riverside Primary Care"),
    ("1000000004", "Castillo", "Mateo", "Harbor Family Medicine"),
    ("1000000005", "Brennan", "Siobhan", "Harbor Family Medicine"),
)


def seed_demo_clinic(
    *,
    session: Session,
    zone: ZoneInfo,
    first_day: date,
    closed_days: Iterable[date],
    days: int = 28,
) -> tuple[int, int]:
    """Create the demo providers, their hours (Mon–Fri 09–12, 13–17, 30-minute slots) and
    their slots for `days` days; idempotent. Returns (providers, new slots)."""
    closed = frozenset(closed_days)
    providers: list[Provider] = []
    for npi, family, given, practice in DEMO_PROVIDERS:
        provider = session.exec(select(Provider).where(Provider.npi == npi)).first()
        if provider is None:
            provider = Provider(
                npi=npi, family_name=family, given_name=given, practice=practice, timezone=zone.key
            )
            session.add(provider)
            session.flush()
        providers.append(provider)
    # Each provider covers for the next one in the same practice.
    for provider in providers:
        colleagues = [p for p in providers if p.practice == provider.practice and p is not provider]
        if provider.covering_provider_id is None and colleagues:
            provider.covering_provider_id = colleagues[0].id
            session.add(provider)

    created = 0
    for provider in providers:
        assert provider.id is not None
        has_hours = session.exec(
            select(WorkingHours.id).where(WorkingHours.provider_id == provider.id)
        ).first()
        if has_hours is None:  # hours set since (an import) are the clinic's, not the demo's
            set_working_hours(session=session, provider_id=provider.id, sessions=DEFAULT_SESSIONS)
        created += materialize_slots(
            session=session,
            provider_id=provider.id,
            first_day=first_day,
            days=days,
            closed_days=closed,
        ).created
    return len(providers), created
