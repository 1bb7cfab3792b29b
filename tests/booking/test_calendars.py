"""Calendar imports (pure): FHIR Schedule/Slot resources and CSV files into plain values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from followup.core.calendars import (
    CalendarImportError,
    parse_csv,
    parse_hours,
    read_calendar_files,
)
from followup.core.scheduling import WorkingSession
from tests.conftest import THIRD_PARTY

FHIR_EXAMPLES = THIRD_PARTY / "fhir-r4"
NPI = "http://hl7.org/fhir/sid/us-npi"


def test_the_shared_fhir_examples_parse_and_say_why_nothing_is_bookable() -> None:
    files = sorted(FHIR_EXAMPLES.glob("Schedule-*.json")) + sorted(
        FHIR_EXAMPLES.glob("Slot-*.json")
    )

    data = read_calendar_files(files)

    assert data.availability == ()
    assert data.skipped == (
        "Schedule/example: has 0 Practitioner actors; exactly one is needed",
        "Schedule/exampleloc1: Practitioner/1 carries no NPI identifier",
        "Schedule/exampleloc2: Practitioner/1 carries no NPI identifier",
        "Slot/1: Schedule/example names no provider",
        "Slot/2: Schedule/example names no provider",
        "Slot/3: Schedule/example names no provider",
        "Slot/example: Schedule/example names no provider",
    )


def _bundle(tmp_path: Path) -> Path:
    """The shared examples, given an NPI through a Practitioner in the same bundle."""
    schedule = json.loads((FHIR_EXAMPLES / "Schedule-exampleloc1.json").read_text())
    slots = [
        json.loads((FHIR_EXAMPLES / f"Slot-{n}.json").read_text())
        for n in ("1", "2", "3", "example")
    ]
    entries = [
        {
            "fullUrl": "urn:uuid:practitioner-1",
            "resource": {
                "resourceType": "Practitioner",
                "id": "1",
                "identifier": [{"system": NPI, "value": "1000000001"}],
            },
        },
        {"fullUrl": "urn:uuid:schedule-1", "resource": schedule},
        *(
            {"resource": {**slot, "schedule": {"reference": "urn:uuid:schedule-1"}}}
            for slot in slots
        ),
        {
            "resource": {
                **slots[3],
                "id": "oops",
                "status": "entered-in-error",
                "schedule": {"reference": "Schedule/exampleloc1"},
            }
        },
    ]
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    return path


def test_a_bundle_maps_free_slots_to_availability_and_busy_ones_to_blocked_time(
    tmp_path: Path,
) -> None:
    data = read_calendar_files([_bundle(tmp_path)])

    assert [(a.npi, a.start, a.status, a.bookable, a.source) for a in data.availability] == [
        ("1000000001", datetime(2013, 12, 25, 9, tzinfo=UTC), "busy", False, "fhir:Slot/1"),
        (
            "1000000001",
            datetime(2013, 12, 25, 9, 45, tzinfo=UTC),
            "busy-tentative",
            False,
            "fhir:Slot/2",
        ),
        (
            "1000000001",
            datetime(2013, 12, 25, 9, 30, tzinfo=UTC),
            "busy-unavailable",
            False,
            "fhir:Slot/3",
        ),
        (
            "1000000001",
            datetime(2013, 12, 25, 9, 15, tzinfo=UTC),
            "free",
            True,
            "fhir:Slot/example",
        ),
    ]
    assert data.skipped == ("Slot/oops: status entered-in-error",)


def test_invalid_fhir_is_refused_with_the_file_name(tmp_path: Path) -> None:
    bad = tmp_path / "slot.json"
    bad.write_text(json.dumps({"resourceType": "Slot", "status": "free", "start": "tomorrow"}))
    with pytest.raises(CalendarImportError, match=r"slot\.json: invalid FHIR Slot"):
        read_calendar_files([bad])
    bad.write_text("{not json")
    with pytest.raises(CalendarImportError, match=r"slot\.json: not JSON or CSV"):
        read_calendar_files([bad])


def test_provider_csv_reads_hours_covering_and_slot_length() -> None:
    data = parse_csv(
        "npi,family_name,given_name,practice,timezone,covering_npi,slot_minutes,hours\n"
        "1,Okafor,Ada,Riverside,America/New_York,2,20,"
        '"Mon,Wed 08:00-12:00 13:00-16:30; Fri 09:00-11:00"\n'
        "\n"
        "2,Lindqvist,,Riverside,America/Chicago,,30,Tue-Thu 09:00-17:00\n",
        source="providers.csv",
    )
    okafor, lindqvist = data.providers
    assert (okafor.covering_npi, okafor.slot_minutes, lindqvist.covering_npi) == ("2", 20, None)
    assert okafor.sessions == (
        WorkingSession(0, time(8), time(12)),
        WorkingSession(0, time(13), time(16, 30)),
        WorkingSession(2, time(8), time(12)),
        WorkingSession(2, time(13), time(16, 30)),
        WorkingSession(4, time(9), time(11)),
    )
    assert [s.weekday for s in lindqvist.sessions] == [1, 2, 3]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("1,A,,P,Mars/Olympus,,30,Mon 09:00-10:00", "providers.csv:2: unknown time zone"),
        ("1,A,,P,UTC,,0,Mon 09:00-10:00", "slot_minutes must be a positive"),
        ("1,A,,P,UTC,,30,Sat 09:00-10:00", "Monday–Friday"),
        ("1,A,,P,UTC,,30,Mon 09:00-10:00 09:30-11:00", "hours overlap"),
        ("1,A,,P,UTC,,30,Fri-Mon 09:00-10:00", "runs backwards"),
        ("1,A,,P,UTC,,30,Mon 9am-5pm", "is not HH:MM-HH:MM"),
        (",A,,P,UTC,,30,Mon 09:00-10:00", "npi is empty"),
    ],
)
def test_provider_csv_errors_name_the_line_and_the_problem(row: str, problem: str) -> None:
    header = "npi,family_name,given_name,practice,timezone,covering_npi,slot_minutes,hours\n"
    with pytest.raises(CalendarImportError, match=problem):
        parse_csv(header + row + "\n", source="providers.csv")


def test_availability_csv_needs_offsets_and_known_statuses() -> None:
    header = "npi,start,end,status,comment\n"
    [row] = parse_csv(
        header
        + "1,2027-03-08T09:00:00-05:00,2027-03-08T12:00:00-05:00,busy-unavailable,vacation\n",
        source="a.csv",
    ).availability
    assert (row.start.hour, row.bookable, row.comment, row.source) == (
        9,
        False,
        "vacation",
        "a.csv:2",
    )
    for bad, problem in (
        ("1,2027-03-08T09:00:00,2027-03-08T12:00:00-05:00,free,", "has no UTC offset"),
        ("1,2027-03-08T09:00:00-05:00,2027-03-08T08:00:00-05:00,free,", "is not after start"),
        ("1,2027-03-08T09:00:00-05:00,2027-03-08T12:00:00-05:00,maybe,", "is not free or busy"),
    ):
        with pytest.raises(CalendarImportError, match=problem):
            parse_csv(header + bad + "\n", source="a.csv")
    with pytest.raises(CalendarImportError, match="unknown CSV header"):
        parse_csv("who,when\n", source="a.csv")


def test_hours_spec_round_trips_through_its_sessions() -> None:
    sessions = parse_hours("Mon-Fri 09:00-12:00 13:00-17:00")
    assert len(sessions) == 10
    assert [str(s) for s in sessions[:2]] == ["Mon 09:00-12:00", "Mon 13:00-17:00"]
    with pytest.raises(ValueError, match="no HH:MM-HH:MM range"):
        parse_hours("Mon")
    with pytest.raises(ValueError, match="empty"):
        parse_hours(" ; ")
