"""The demo clinic: five providers in two practices with business-hours slots."""

from __future__ import annotations

from collections.abc import Container
from datetime import date
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from followup.scheduling import business_hour_slots
from models.tables import Provider, Slot

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
    closed_days: Container[date],
    days: int = 28,
) -> tuple[int, int]:
    """Create the demo providers and their slots; idempotent. Returns (providers, new slots)."""
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
        existing = set(
            session.exec(select(Slot.start).where(Slot.provider_id == provider.id)).all()
        )
        for start, end in business_hour_slots(first_day, days, zone=zone, closed_days=closed_days):
            if start in existing:
                continue
            session.add(Slot(provider_id=provider.id, start=start, end=end))  # type: ignore[arg-type]
            created += 1
    session.flush()
    return len(providers), created
