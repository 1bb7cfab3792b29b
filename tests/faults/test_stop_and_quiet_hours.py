"""Fault: a STOP in the middle of a reminder sequence; sends near quiet hours.

The texts are the engine's own (pipeline.schedule_reminders plans and renders them for a booked
visit); the production dispatcher sends them through TwilioSender and the official client to a
local stand-in of Twilio's API (tests/sms/twilio_mock.py); the STOP arrives through the signed
webhook. The dispatcher runs once an hour of a clock walked over the whole sequence, as the
every-minute schedule would, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from followup.messaging.sender import OutgoingSms, SendReceipt, TwilioSender
from followup.services import pipeline
from followup.settings import get_settings
from models.db import session_scope
from tests.faults.counting import check_counts, tally
from tests.sms.conftest import Clock, World, dispatcher, twilio_sender
from tests.sms.test_webhooks import make_gateway
from tests.sms.twilio_mock import ScriptedTwilio

HOUR = timedelta(hours=1)
NEW_YORK, HONOLULU = ZoneInfo("America/New_York"), ZoneInfo("Pacific/Honolulu")
# The two ends of the United States: a time inside 08:00-20:00 in both is inside it everywhere
# between; a patient of unknown zone may only be texted then.
US_ENDS = (ZoneInfo("America/Puerto_Rico"), HONOLULU)


@dataclass
class TimedSender:
    """The production sender, noting the clock's time and number of every send it makes."""

    sender: TwilioSender
    clock: Clock
    sends: list[tuple[datetime, str]] = field(default_factory=list)

    def send(self, sms: OutgoingSms) -> SendReceipt:
        receipt = self.sender.send(sms)
        self.sends.append((self.clock.now, sms.to))
        return receipt


def hours(clock: Clock, until: datetime) -> Iterator[datetime]:
    while clock.now < until:
        yield clock.now
        clock.now += HOUR


def book_visit(world: World, patient: int, start: datetime, now: datetime) -> list[int]:
    """A visit with its texts as the flow plans them at booking time `now`; their ids."""
    visit = world.visit(patient, start)
    with session_scope(world.database_url) as session:
        return pipeline.schedule_reminders(
            session=session,
            appointment_id=visit,
            settings=get_settings(database_url=world.database_url),
            now=now,
        )


def test_stop_in_the_middle_of_the_reminders_stops_every_later_text(
    world: World, twilio_fake: ScriptedTwilio
) -> None:
    """Fault: a patient answers STOP (Twilio's Advanced Opt-Out already confirmed it) after the
    booking confirmation went out and before the 3-day and 1-day reminders are due.
    Expected: over the week up to the visit Twilio is asked once, for the confirmation; both
    reminders end cancelled and nothing else is sent."""
    clock = Clock(datetime(2026, 12, 7, 14, tzinfo=UTC))  # Monday, 09:00 in New York
    patient = world.patient(timezone=NEW_YORK.key)
    visit_start = datetime(2026, 12, 14, 15, tzinfo=UTC)  # the next Monday, 10:00 in New York
    planned = book_visit(world, patient, visit_start, clock.now)
    sender = TimedSender(twilio_sender(twilio_fake.base_url), clock)
    gateway = make_gateway(world.database_url, clock=clock)
    stopped, stopped_at = None, visit_start
    for now in hours(clock, visit_start):
        dispatcher(world.database_url, sender, clock).run()
        if sender.sends and stopped is None:
            stopped = gateway.text("STOP", opt_out_type="STOP").status_code
            stopped_at = now

    messages = [world.get(message_id) for message_id in planned]
    check_counts(
        "9 STOP mid-sequence",
        {
            "planned": tally(m.kind for m in messages),
            "stop_answer": stopped,
            "twilio_requests": len(twilio_fake.requests),
            "sent_after_stop": sum(when > stopped_at for when, _ in sender.sends),
            "outbox": tally(f"{m.kind}:{m.status}" for m in messages),
        },
        {
            "planned": {"confirmation": 1, "reminder": 2},
            "stop_answer": 200,
            "twilio_requests": 1,
            "sent_after_stop": 0,
            "outbox": {"confirmation:sent": 1, "reminder:cancelled": 2},
        },
    )


def inside_quiet_hours_window(when: datetime, zone: ZoneInfo | None) -> bool:
    return all(8 <= when.astimezone(z).hour < 20 for z in ((zone,) if zone else US_ENDS))


def test_nothing_is_sent_outside_eight_to_eight_local(
    world: World, twilio_fake: ScriptedTwilio
) -> None:
    """Fault: visits booked at 02:00 New York time for patients in New York, in Honolulu and of
    unknown zone, plus, for three more such patients, a text already due at 02:00 (a backlog,
    as after an outage). The dispatcher runs every hour for six days.
    Expected: every text is sent (three for each booked visit, one for each backlog), each
    inside 08:00-20:00 in its patient's zone, in every US zone for the unknown one."""
    clock = Clock(datetime(2026, 12, 7, 7, tzinfo=UTC))  # Monday, 02:00 in New York
    visit_start = datetime(2026, 12, 12, 15, tzinfo=UTC)  # Saturday, 10:00 in New York
    zones: dict[str, ZoneInfo | None] = {}
    planned: list[int] = []
    for number, zone in enumerate([NEW_YORK, HONOLULU, None, NEW_YORK, HONOLULU, None]):
        phone = f"+1555555{number:04d}"
        zones[phone] = zone
        patient = world.patient(phone=phone, timezone=zone.key if zone else None)
        if number < 3:
            start = visit_start + number * HOUR  # one slot each
            planned += book_visit(world, patient, start, clock.now)
        else:
            planned.append(world.message(patient, scheduled_for=clock.now, to_phone=phone))
    sender = TimedSender(twilio_sender(twilio_fake.base_url), clock)

    for _ in hours(clock, visit_start):
        dispatcher(world.database_url, sender, clock).run()

    check_counts(
        "9 quiet hours",
        {
            "outbox": tally(world.get(message_id).status for message_id in planned),
            "sent": len(sender.sends),
            "sent_outside_8_to_20_local": sum(
                not inside_quiet_hours_window(when, zones[to]) for when, to in sender.sends
            ),
        },
        {"outbox": {"sent": 12}, "sent": 12, "sent_outside_8_to_20_local": 0},
        shown={
            "local_hours_sent": tally(
                when.astimezone(zones[to] or HONOLULU).hour for when, to in sender.sends
            )
        },
    )
