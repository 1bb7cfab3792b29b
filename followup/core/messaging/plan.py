"""Which texts a booked appointment gets, and when: a notice now, reminders before; and the
text offering a freed slot to a waitlisted patient.

Pure: rendering and send-time policy only; storing and sending happen elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers

from followup.core.messaging.policy import apply_caps, next_allowed_send_time, reminder_send_times
from followup.core.messaging.render import format_visit_time, render_sms


def display_phone(e164: str) -> str:
    """A callback number as patients dial it: national format for the number's own country."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


@dataclass(frozen=True, slots=True)
class PlannedSms:
    kind: str
    occurrence: str  # distinguishes the 3-day from the 1-day reminder in the idempotency key
    language: str
    template: str
    body: str
    encoding: str
    segments: int
    send_at: datetime


@dataclass(frozen=True, slots=True)
class VisitDetails:
    start: datetime
    provider_name: str
    clinic_name: str
    clinic_phone: str


def plan_booking_messages(
    visit: VisitDetails,
    *,
    language: str,
    zone: ZoneInfo | None,
    site_zone: ZoneInfo,
    now: datetime,
    reminder_days: tuple[int, ...],
    templates_dir: Path,
    notice: str | None = "confirmation",
) -> list[PlannedSms]:
    """The notice (`confirmation` at booking, `reschedule` when moved; None when it goes as an
    answer to the patient's own text instead) plus reminders, all inside quiet hours and
    within the caps. `zone` None: the strict all-US window, as the dispatcher checks."""
    base_context = _visit_context(visit, language=language, zone=zone, site_zone=site_zone)
    wanted: list[tuple[str, str, datetime, dict[str, object]]] = []
    if notice is not None:
        wanted.append((notice, "0", next_allowed_send_time(now, zone), base_context))
    for days_before, send_at in reminder_send_times(
        visit.start, zone, days_before=reminder_days, now=now
    ):
        wanted.append(
            ("reminder", f"d{days_before}", send_at, {**base_context, "days_before": days_before})
        )

    kept_times = set(apply_caps([send_at for _, _, send_at, _ in wanted], zone=zone))
    return [
        _planned(kind, occurrence, send_at, language, context, templates_dir)
        for kind, occurrence, send_at, context in wanted
        if send_at in kept_times
    ]


def plan_visit_notice(
    visit: VisitDetails,
    kind: str,
    *,
    language: str,
    zone: ZoneInfo | None,
    site_zone: ZoneInfo,
    send_at: datetime,
    templates_dir: Path,
) -> PlannedSms:
    """One notice about the visit (`confirmation`, `reschedule`, `cancellation`) due at
    `send_at`, its time on the clinic's clock (the zone named when the patient's differs)."""
    context = _visit_context(visit, language=language, zone=zone, site_zone=site_zone)
    return _planned(kind, "0", send_at, language, context, templates_dir)


def plan_offer_message(
    visit: VisitDetails,
    *,
    expires_at: datetime,
    language: str,
    zone: ZoneInfo | None,
    site_zone: ZoneInfo,
    now: datetime,
    templates_dir: Path,
) -> PlannedSms:
    """The text offering a freed slot: its time and the answer's deadline in the clinic's zone
    (named when the patient's differs), due at the first moment quiet hours allow."""
    context = {
        **_visit_context(visit, language=language, zone=zone, site_zone=site_zone),
        "offer_expires": format_visit_time(
            expires_at, site_zone, language, name_zone=_elsewhere(zone, site_zone)
        ),
    }
    send_at = next_allowed_send_time(now, zone)
    return _planned("waitlist_offer", "0", send_at, language, context, templates_dir)


def plan_reschedule_choices(
    visit: VisitDetails,
    *,
    choices: list[datetime],
    expires_at: datetime,
    language: str,
    zone: ZoneInfo | None,
    site_zone: ZoneInfo,
    send_at: datetime,
    templates_dir: Path,
) -> PlannedSms:
    """The answer to R: the held slots, numbered in order, and until when they are held, on
    the clinic's clock (the zone named when the patient's differs)."""
    elsewhere = _elsewhere(zone, site_zone)
    context = {
        **_visit_context(visit, language=language, zone=zone, site_zone=site_zone),
        "choices": [
            format_visit_time(start, site_zone, language, name_zone=elsewhere) for start in choices
        ],
        "offer_expires": format_visit_time(expires_at, site_zone, language, name_zone=elsewhere),
    }
    return _planned("reschedule_choices", "0", send_at, language, context, templates_dir)


def _visit_context(
    visit: VisitDetails, *, language: str, zone: ZoneInfo | None, site_zone: ZoneInfo
) -> dict[str, object]:
    """The visit's time on the clinic's clock, where the patient has to be: a patient in Los
    Angeles told "7:00 AM" for a 10:00 New York visit comes three hours early. The zone is
    named when the patient's differs from the clinic's, or is unknown."""
    return {
        "clinic_name": visit.clinic_name,
        "clinic_phone": display_phone(visit.clinic_phone),
        "provider_name": visit.provider_name,
        "visit_time": format_visit_time(
            visit.start, site_zone, language, name_zone=_elsewhere(zone, site_zone)
        ),
    }


def _elsewhere(zone: ZoneInfo | None, site_zone: ZoneInfo) -> bool:
    return zone is None or zone.key != site_zone.key


def _planned(
    kind: str,
    occurrence: str,
    send_at: datetime,
    language: str,
    context: dict[str, object],
    templates_dir: Path,
) -> PlannedSms:
    rendered = render_sms(kind, language, context, templates_dir=templates_dir)
    return PlannedSms(
        kind=kind,
        occurrence=occurrence,
        language=rendered.language,
        template=f"sms/{rendered.language}/{kind}.j2",
        body=rendered.body,
        encoding=rendered.encoding,
        segments=rendered.segments,
        send_at=send_at,
    )
