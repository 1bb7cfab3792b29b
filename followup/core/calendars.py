"""Calendar imports: FHIR R4 Schedule/Slot resources and CSV files into plain values.

FHIR (validated with fhir.resources' R4B models, which read R4 Schedule and Slot unchanged):
a Bundle, a single resource, or several files imported together, so that a Slot's `schedule`
reference resolves across files. A Schedule belongs to the provider its one Practitioner actor
names by NPI: the reference's own identifier, or a Practitioner resource in the same import
carrying an NPI. Slots are availability: `free` ones become bookable slots, `busy`,
`busy-tentative` and `busy-unavailable` ones time the provider cannot be booked (blocked
periods); `entered-in-error` ones are ignored. What cannot be mapped is skipped with its reason,
never guessed.

CSV, told apart by its header:

    npi,family_name,given_name,practice,timezone,covering_npi,slot_minutes,hours
    1000000001,Okafor,Ada,Riverside,America/New_York,1000000002,30,Mon-Fri 09:00-12:00 13:00-17:00

    npi,start,end,status,comment
    1000000001,2026-12-24T09:00:00-05:00,2026-12-31T17:00:00-05:00,busy-unavailable,vacation

`hours` lists weekly sessions: groups separated by ";", each a day or day range (`Mon-Fri`,
`Tue,Thu`, `Wed`) followed by one or more `HH:MM-HH:MM` ranges in the provider's local time.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from followup.core.scheduling import WEEKDAY_NAMES, WorkingSession
from followup.errors import FollowupError

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
FREE = "free"
BUSY_STATUSES = frozenset({"busy", "busy-tentative", "busy-unavailable"})
PROVIDER_COLUMNS = (
    "npi",
    "family_name",
    "given_name",
    "practice",
    "timezone",
    "covering_npi",
    "slot_minutes",
    "hours",
)
AVAILABILITY_COLUMNS = ("npi", "start", "end", "status")


class CalendarImportError(FollowupError):
    """An import file that cannot be read as it is; the message names the file and place."""


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    npi: str
    family_name: str
    given_name: str
    practice: str
    timezone: str
    covering_npi: str | None
    slot_minutes: int
    sessions: tuple[WorkingSession, ...]


@dataclass(frozen=True, slots=True)
class AvailabilityRecord:
    """A stretch of one provider's time: bookable when `status` is free, blocked otherwise."""

    npi: str
    start: datetime
    end: datetime
    status: str
    source: str  # where it came from, e.g. "fhir:Slot/1" or "availability.csv:3"
    comment: str = ""

    @property
    def bookable(self) -> bool:
        return self.status == FREE


@dataclass(frozen=True, slots=True)
class CalendarImport:
    providers: tuple[ProviderRecord, ...] = ()
    availability: tuple[AvailabilityRecord, ...] = ()
    skipped: tuple[str, ...] = field(default=())

    def __add__(self, other: CalendarImport) -> CalendarImport:
        return CalendarImport(
            providers=self.providers + other.providers,
            availability=self.availability + other.availability,
            skipped=self.skipped + other.skipped,
        )


# --- files -------------------------------------------------------------------------------------


def read_calendar_files(paths: Sequence[Path]) -> CalendarImport:
    """Read CSV and FHIR JSON files; the FHIR ones are resolved together."""
    result = CalendarImport()
    resources: list[tuple[str, Mapping[str, Any]]] = []
    for path in paths:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".csv":
            result += parse_csv(text, source=path.name)
            continue
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise CalendarImportError(f"{path.name}: not JSON or CSV ({error})") from error
        resources.extend((path.name, resource) for resource in _flatten(document, path.name))
    return result + parse_fhir(resources)


def _flatten(document: Any, source: str) -> Iterator[Mapping[str, Any]]:
    if not isinstance(document, Mapping) or "resourceType" not in document:
        raise CalendarImportError(f"{source}: not a FHIR resource (no resourceType)")
    if document["resourceType"] != "Bundle":
        yield document
        return
    for entry in document.get("entry") or []:
        resource = entry.get("resource")
        if isinstance(resource, Mapping):
            # A bundle may reference its entries by fullUrl (urn:uuid:...) instead of Type/id.
            yield {**resource, "_fullUrl": entry.get("fullUrl")}


# --- FHIR --------------------------------------------------------------------------------------


def _validated(source: str, raw: Mapping[str, Any]) -> Any:
    kind = str(raw.get("resourceType"))
    payload = {key: value for key, value in raw.items() if key != "_fullUrl"}
    try:
        return get_fhir_model_class(kind).model_validate(payload)
    except (KeyError, ValueError, ValidationError) as error:
        first = error.errors()[0]["msg"] if isinstance(error, ValidationError) else str(error)
        raise CalendarImportError(f"{source}: invalid FHIR {kind}: {first}") from error


def _npi(identifiers: Iterable[Any] | None) -> str | None:
    return next((i.value for i in identifiers or () if i.system == NPI_SYSTEM and i.value), None)


def parse_fhir(resources: Iterable[tuple[str, Mapping[str, Any]]]) -> CalendarImport:
    """(source name, resource) pairs → availability; Schedules and Practitioners are lookups."""
    practitioners: dict[str, str] = {}  # "Practitioner/<id>" (or fullUrl) → NPI
    schedules: dict[str, Any] = {}  # "Schedule/<id>" (or fullUrl) → the Schedule
    slots: list[tuple[str, Any]] = []
    skipped: list[str] = []
    for source, raw in resources:
        resource = _validated(source, raw)
        keys = [f"{resource.get_resource_type()}/{resource.id}", raw.get("_fullUrl")]
        match resource.get_resource_type():
            case "Practitioner":
                npi = _npi(resource.identifier)
                practitioners.update({key: npi for key in keys if key and npi})
            case "Schedule":
                schedules.update({key: resource for key in keys if key})
            case "Slot":
                slots.append((source, resource))
            case other:
                skipped.append(f"{source}: {other}/{resource.id} is not a Schedule or Slot")
    owners: dict[int, str | None] = {}
    for schedule in schedules.values():
        if id(schedule) not in owners:
            npi, problem = _schedule_owner(schedule, practitioners)
            owners[id(schedule)] = npi
            if problem:
                skipped.append(f"Schedule/{schedule.id}: {problem}")
    availability = []
    for _source, slot in slots:
        label = f"Slot/{slot.id}"
        schedule = schedules.get(slot.schedule.reference or "")
        if schedule is None:
            skipped.append(f"{label}: its schedule {slot.schedule.reference} is not in the import")
        elif owners[id(schedule)] is None:
            skipped.append(f"{label}: Schedule/{schedule.id} names no provider")
        elif schedule.active is False:
            skipped.append(f"{label}: Schedule/{schedule.id} is inactive")
        elif slot.status != FREE and slot.status not in BUSY_STATUSES:
            skipped.append(f"{label}: status {slot.status}")
        else:
            availability.append(
                AvailabilityRecord(
                    npi=owners[id(schedule)] or "",
                    start=slot.start,
                    end=slot.end,
                    status=slot.status,
                    source=f"fhir:{label}",
                    comment=slot.comment or "",
                )
            )
    return CalendarImport(availability=tuple(availability), skipped=tuple(skipped))


def _schedule_owner(schedule: Any, practitioners: Mapping[str, str]) -> tuple[str | None, str]:
    """The NPI of the schedule's one practitioner, or None and why not."""
    actors = [
        actor
        for actor in schedule.actor or ()
        if (actor.reference or "").startswith("Practitioner/") or actor.type == "Practitioner"
    ]
    if len(actors) != 1:
        return None, f"has {len(actors)} Practitioner actors; exactly one is needed"
    actor = actors[0]
    npi = _npi([actor.identifier] if actor.identifier else []) or practitioners.get(
        actor.reference or ""
    )
    if npi is None:
        return None, f"{actor.reference or actor.display} carries no NPI identifier"
    return npi, ""


# --- CSV ---------------------------------------------------------------------------------------


def parse_csv(text: str, *, source: str) -> CalendarImport:
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or ()]
    reader.fieldnames = header
    if set(PROVIDER_COLUMNS) <= set(header):
        return CalendarImport(
            providers=tuple(
                _provider_row(row, f"{source}:{reader.line_num}") for row in _rows(reader)
            )
        )
    if set(AVAILABILITY_COLUMNS) <= set(header):
        return CalendarImport(
            availability=tuple(
                _availability_row(row, f"{source}:{reader.line_num}") for row in _rows(reader)
            )
        )
    raise CalendarImportError(
        f"{source}: unknown CSV header {','.join(header)}; expected "
        f"{','.join(PROVIDER_COLUMNS)} or {','.join(AVAILABILITY_COLUMNS)}[,comment]"
    )


def _rows(reader: csv.DictReader[str]) -> Iterator[dict[str, str]]:
    for row in reader:
        cleaned = {key: (value or "").strip() for key, value in row.items() if key}
        if any(cleaned.values()):
            yield cleaned


def _required(row: Mapping[str, str], column: str, where: str) -> str:
    if not row.get(column):
        raise CalendarImportError(f"{where}: {column} is empty")
    return row[column]


def _provider_row(row: Mapping[str, str], where: str) -> ProviderRecord:
    timezone = _required(row, "timezone", where)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise CalendarImportError(f"{where}: unknown time zone {timezone!r}") from error
    minutes = _required(row, "slot_minutes", where)
    if not minutes.isdigit() or int(minutes) == 0:
        raise CalendarImportError(f"{where}: slot_minutes must be a positive whole number")
    try:
        sessions = parse_hours(_required(row, "hours", where))
    except ValueError as error:
        raise CalendarImportError(f"{where}: {error}") from error
    return ProviderRecord(
        npi=_required(row, "npi", where),
        family_name=_required(row, "family_name", where),
        given_name=row.get("given_name", ""),
        practice=_required(row, "practice", where),
        timezone=timezone,
        covering_npi=row.get("covering_npi") or None,
        slot_minutes=int(minutes),
        sessions=sessions,
    )


def _availability_row(row: Mapping[str, str], where: str) -> AvailabilityRecord:
    status = _required(row, "status", where)
    if status != FREE and status not in BUSY_STATUSES:
        raise CalendarImportError(f"{where}: status {status!r} is not free or busy*")
    start, end = (_instant(_required(row, column, where), where) for column in ("start", "end"))
    if not start < end:
        raise CalendarImportError(f"{where}: end {end} is not after start {start}")
    return AvailabilityRecord(
        npi=_required(row, "npi", where),
        start=start,
        end=end,
        status=status,
        source=where,
        comment=row.get("comment", ""),
    )


def _instant(value: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise CalendarImportError(f"{where}: {value!r} is not an ISO 8601 time") from error
    if moment.tzinfo is None:
        raise CalendarImportError(f"{where}: {value!r} has no UTC offset")
    return moment


_DAY_INDEX = {name.lower(): index for index, name in enumerate(WEEKDAY_NAMES)}


def parse_hours(spec: str) -> tuple[WorkingSession, ...]:
    """ "Mon-Fri 09:00-12:00 13:00-17:00; Wed 18:00-20:00" → weekly working sessions."""
    sessions: list[WorkingSession] = []
    for group in filter(None, (part.strip() for part in spec.split(";"))):
        days, *ranges = group.split()
        if not ranges:
            raise ValueError(f"hours {group!r}: no HH:MM-HH:MM range after the days")
        weekdays = _weekdays(days)
        for stretch in ranges:
            start, end = _time_range(stretch)
            sessions.extend(WorkingSession(day, start, end) for day in weekdays)
    if not sessions:
        raise ValueError("hours are empty")
    ordered = sorted(sessions)
    for earlier, later in pairwise(ordered):
        if earlier.weekday == later.weekday and later.start < earlier.end:
            raise ValueError(f"hours overlap: {earlier} and {later}")
    return tuple(ordered)


def _weekdays(spec: str) -> list[int]:
    days: list[int] = []
    for part in spec.lower().split(","):
        first, _, last = part.partition("-")
        if first not in _DAY_INDEX or (last and last not in _DAY_INDEX):
            raise ValueError(f"unknown day {part!r}; use Mon, Tue, ... or a range like Mon-Fri")
        end = _DAY_INDEX[last or first]
        if end < _DAY_INDEX[first]:
            raise ValueError(f"day range {part!r} runs backwards")
        days.extend(range(_DAY_INDEX[first], end + 1))
    return days


def _time_range(spec: str) -> tuple[time, time]:
    first, separator, last = spec.partition("-")
    try:
        if not separator:
            raise ValueError
        return time.fromisoformat(first), time.fromisoformat(last)
    except ValueError as error:
        raise ValueError(f"time range {spec!r} is not HH:MM-HH:MM") from error
