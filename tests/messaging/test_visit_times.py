"""Visit times on the clinic's clock, the zone named when the patient lives elsewhere, and
Spanish titles with their article."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from followup.core.messaging.plan import VisitDetails, plan_booking_messages, plan_offer_message
from followup.core.messaging.render import with_article

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
VISIT = VisitDetails(
    start=datetime(2026, 12, 8, 15, 0, tzinfo=UTC),  # Tue Dec 8, 10:00 in New York
    provider_name="Dr. Okafor",
    clinic_name="Riverside Clinic",
    clinic_phone="+15555550100",
)


def confirmation(zone: ZoneInfo | None, language: str = "en") -> str:
    [notice, *_] = plan_booking_messages(
        VISIT,
        language=language,
        zone=zone,
        site_zone=NEW_YORK,
        now=NOW,
        reminder_days=(3, 1),
        templates_dir=TEMPLATES,
    )
    assert notice.kind == "confirmation"
    return notice.body


def test_a_patient_in_los_angeles_is_told_the_clinic_s_time_and_zone() -> None:
    body = confirmation(ZoneInfo("America/Los_Angeles"))

    assert "Tue Dec 8 at 10:00 AM New York time" in body
    assert "7:00 AM" not in body


def test_a_patient_in_the_clinic_s_zone_reads_no_zone() -> None:
    assert "Tue Dec 8 at 10:00 AM. " in confirmation(NEW_YORK)


def test_a_patient_of_unknown_zone_is_told_the_zone() -> None:
    assert "10:00 AM New York time" in confirmation(None)


def test_spanish_names_the_zone_and_gives_the_title_its_article() -> None:
    body = confirmation(ZoneInfo("America/Chicago"), "es")

    assert "con el Dr. Okafor es el martes 8 de diciembre a las 10:00, hora de Nueva York" in body


def test_a_waitlist_offer_s_deadline_is_on_the_clinic_s_clock_too() -> None:
    offer = plan_offer_message(
        VISIT,
        expires_at=datetime(2026, 12, 7, 22, 0, tzinfo=UTC),
        language="es",
        zone=ZoneInfo("America/Los_Angeles"),
        site_zone=NEW_YORK,
        now=NOW,
        templates_dir=TEMPLATES,
    )

    assert offer.body.startswith("Riverside Clinic: El Dr. Okafor puede atenderle el martes 8")
    assert "responda C antes del lunes 7 de diciembre a las 17:00, hora de Nueva York." in (
        offer.body
    )


@pytest.mark.parametrize(
    ("name", "capital", "expected"),
    [
        ("Dr. Okafor", False, "el Dr. Okafor"),
        ("Dr. Okafor", True, "El Dr. Okafor"),
        ("Dra. Ruiz", False, "la Dra. Ruiz"),
        ("Nurse Ruiz", False, "Nurse Ruiz"),
    ],
)
def test_with_article(name: str, capital: bool, expected: str) -> None:
    assert with_article(name, capital) == expected
