"""Which texts a booked appointment gets, and when: confirmation now, reminders before.

Pure: rendering and send-time policy only; storing and sending happen elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers

from followup.messaging.policy import apply_caps, next_allowed_send_time, reminder_send_times
from followup.messaging.render import format_visit_time, render_sms


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
) -> list[PlannedSms]:
    """Confirmation at booking plus reminders, all inside quiet hours and within the caps."""
    shown_zone = zone or site_zone
    base_context: dict[str, object] = {
        "clinic_name": visit.clinic_name,
        "clinic_phone": display_phone(visit.clinic_phone),
        "provider_name": visit.provider_name,
        "visit_time": format_visit_time(visit.start, shown_zone, language),
    }
    wanted: list[tuple[str, str, datetime, dict[str, object]]] = [
        ("confirmation", "0", next_allowed_send_time(now, zone), base_context)
    ]
    for days_before, send_at in reminder_send_times(
        visit.start, zone, days_before=reminder_days, now=now
    ):
        wanted.append(
            ("reminder", f"d{days_before}", send_at, {**base_context, "days_before": days_before})
        )

    kept_times = set(apply_caps([send_at for _, _, send_at, _ in wanted], zone=zone))
    planned = []
    for kind, occurrence, send_at, context in wanted:
        if send_at not in kept_times:
            continue
        rendered = render_sms(kind, language, context, templates_dir=templates_dir)
        planned.append(
            PlannedSms(
                kind=kind,
                occurrence=occurrence,
                language=rendered.language,
                template=f"sms/{rendered.language}/{kind}.j2",
                body=rendered.body,
                encoding=rendered.encoding,
                segments=rendered.segments,
                send_at=send_at,
            )
        )
    return planned
