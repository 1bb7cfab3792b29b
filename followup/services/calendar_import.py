"""Importing providers and their availability (CSV, FHIR Schedule/Slot, parsed by
followup.core.calendars) into the directory and the slot calendar, idempotently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session

from followup.core.calendars import CalendarImport
from followup.core.scheduling import is_business_day
from models import booking, calendar_queries
from models.queries import audit
from models.tables import Provider, Slot, SlotSource


@dataclass(frozen=True, slots=True)
class ImportReport:
    providers_created: int
    providers_updated: int
    slots_created: int
    slots_blocked: int
    blocked_periods: int
    skipped: tuple[str, ...]
    conflicts: tuple[int, ...]


def import_calendars(
    *,
    session: Session,
    data: CalendarImport,
    first_day: date,
    days: int,
    closed_days: Iterable[date],
    actor: str = booking.ACTOR,
) -> ImportReport:
    """Store imported providers and availability, then lay the providers' slots (idempotent)."""
    closed = frozenset(closed_days)
    skipped = list(data.skipped)
    created = updated = slots_created = slots_blocked = periods = 0
    by_npi: dict[str, Provider] = {}
    for record in data.providers:
        provider = booking.provider_by_npi(session=session, npi=record.npi)
        if provider is None:
            provider = Provider(
                npi=record.npi, family_name=record.family_name, practice="", timezone=""
            )
            created += 1
        else:
            updated += 1
        provider.family_name = record.family_name
        provider.given_name = record.given_name
        provider.practice = record.practice
        provider.timezone = record.timezone
        provider.slot_minutes = record.slot_minutes
        session.add(provider)
        session.flush()
        by_npi[record.npi] = provider
    for record in data.providers:
        provider = by_npi[record.npi]
        covering = (
            booking.provider_by_npi(session=session, npi=record.covering_npi)
            if record.covering_npi
            else None
        )
        if record.covering_npi and covering is None:
            skipped.append(
                f"provider {record.npi}: covering provider {record.covering_npi} unknown"
            )
        provider.covering_provider_id = covering.id if covering else None
        session.add(provider)
        assert provider.id is not None
        calendar_queries.set_working_hours(
            session=session, provider_id=provider.id, sessions=record.sessions
        )
    conflicts: list[int] = []
    touched: set[int] = {p.id for p in by_npi.values() if p.id is not None}
    for row in data.availability:
        provider = by_npi.get(row.npi) or booking.provider_by_npi(session=session, npi=row.npi)
        if provider is None or provider.id is None:
            skipped.append(f"{row.source}: provider NPI {row.npi} is not in the directory")
            continue
        touched.add(provider.id)
        if not row.bookable:
            result = calendar_queries.add_blocked_period(
                session=session,
                provider_id=provider.id,
                start=row.start,
                end=row.end,
                reason=row.comment or row.status,
                source=row.source[:64],
                actor=actor,
            )
            periods += 1
            slots_blocked += result.blocked_slots
            conflicts.extend(result.conflicts)
            continue
        problem = _imported_slot_problem(session, provider, row.start, row.end, closed)
        if problem == "already there":
            continue
        if problem:
            skipped.append(f"{row.source}: {problem}")
            continue
        session.add(
            Slot(provider_id=provider.id, start=row.start, end=row.end, source=SlotSource.IMPORT)
        )
        session.flush()
        slots_created += 1
    for provider_id in sorted(touched):
        sync = calendar_queries.materialize_slots(
            session=session,
            provider_id=provider_id,
            first_day=first_day,
            days=days,
            closed_days=closed,
        )
        slots_created += sync.created
        slots_blocked += sync.blocked
    audit(
        session=session,
        actor=actor,
        action="calendar.imported",
        entity="provider",
        entity_id=None,
        detail={"providers": sorted(by_npi), "slots_created": slots_created, "skipped": skipped},
    )
    return ImportReport(
        providers_created=created,
        providers_updated=updated,
        slots_created=slots_created,
        slots_blocked=slots_blocked,
        blocked_periods=periods,
        skipped=tuple(skipped),
        conflicts=tuple(sorted(set(conflicts))),
    )


def _imported_slot_problem(
    session: Session, provider: Provider, start: datetime, end: datetime, closed: frozenset[date]
) -> str:
    """Why an imported free slot is not laid ("already there": the same slot is); "" when it
    is laid."""
    local_day = start.astimezone(ZoneInfo(provider.timezone)).date()
    if not is_business_day(local_day, closed):
        return f"{local_day} is not a business day of the site"
    assert provider.id is not None
    clash = booking.overlapping_open_slot(
        session=session, provider_id=provider.id, start=start, end=end
    )
    if clash is None:
        return ""
    if clash.start == start and clash.end == end:
        return "already there"
    return f"overlaps the provider's slot at {clash.start.isoformat()}"
