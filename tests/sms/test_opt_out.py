"""After STOP nothing else goes (redeliveries and sends already on their way included), a
booked visit becomes a scheduler task; START re-subscribes, confirms once, restores reminders."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlmodel import select

from followup.services.dispatch import Dispatcher, RateLimiter
from followup.services.visits import OPTED_OUT_VISIT_TASK
from models.db import session_scope
from models.tables import OutboundStatus, SmsSuppression
from tests.sms.conftest import (
    FAST,
    NOW,
    Clock,
    RecordingSender,
    World,
    dispatcher,
    twilio_sender,
)
from tests.sms.test_webhooks import Gateway, make_gateway, replies
from tests.sms.twilio_mock import ScriptedTwilio


@pytest.fixture
def gateway(database_url: str, clock: Clock) -> Iterator[Gateway]:
    gateway = make_gateway(database_url, clock=clock)
    with gateway.client:
        yield gateway


def suppression_source(world: World) -> str:
    with session_scope(world.database_url) as session:
        row = session.exec(select(SmsSuppression)).one()
        return row.source


def test_stop_turns_a_booked_visit_into_a_call_task_and_counts_as_a_keyword(
    gateway: Gateway, world: World
) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=5))
    world.message(patient, appointment_id=visit, kind="confirmation")

    gateway.text("STOP")

    [task] = world.escalations()
    assert task.kind == OPTED_OUT_VISIT_TASK and task.target == "scheduler-queue"
    assert f"appointment {visit}" in task.reason and "call the patient" in task.reason
    assert suppression_source(world) == "keyword"
    assert replies(world) == [("opt_out_confirmation", OutboundStatus.SCHEDULED)]


def test_free_text_revocation_is_recorded_as_free_text(gateway: Gateway, world: World) -> None:
    world.patient()

    gateway.text("please don't text me anymore")

    assert suppression_source(world) == "free_text"


def test_after_stop_a_redelivery_of_earlier_urgent_advice_is_not_sent(
    gateway: Gateway, world: World, clock: Clock
) -> None:
    patient = world.patient()
    gateway.text("STOP", opt_out_type="STOP")
    # Queued by a 30003 callback for advice sent before the STOP, arriving after it.
    redelivery = world.message(
        patient, kind="urgent_advice", key="reply:SMold:urgent_advice:redeliver1"
    )
    sender = RecordingSender()

    dispatcher(world.database_url, sender, clock).run()

    assert sender.sent == []
    assert world.get(redelivery).status == OutboundStatus.SUPPRESSED


def test_a_stop_that_lands_while_a_send_waits_for_its_turn_stops_that_send(
    gateway: Gateway, world: World, clock: Clock
) -> None:
    patient = world.patient(timezone="America/New_York")
    other = world.patient(phone="+15555550199", mrn="MRN-OTHER")
    first = world.message(other, to_phone="+15555550199")
    held = world.message(patient, scheduled_for=NOW + timedelta(seconds=1))
    sender = RecordingSender()

    def stop_arrives(_seconds: float) -> None:  # the limiter holds the second send back
        gateway.text("STOP", opt_out_type="STOP")

    limiter = RateLimiter(1.0, clock=lambda: 0.0, sleep=stop_arrives)
    clock.now = NOW + timedelta(seconds=2)
    Dispatcher(
        database_url=world.database_url,
        sender=sender,
        policy=FAST,
        now=clock,
        limiter=limiter,
        workers=1,
    ).run()

    assert [sms.message_id for sms in sender.sent] == [first]
    assert world.get(held).status == OutboundStatus.SUPPRESSED


def test_stop_means_zero_later_requests_to_twilio(
    gateway: Gateway, world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=5))
    for days in (1, 2, 3):
        world.message(patient, appointment_id=visit, scheduled_for=NOW + timedelta(days=days))
    world.message(patient, kind="urgent_advice", key="reply:SMx:urgent_advice:redeliver1")
    gateway.text("STOP", opt_out_type="STOP")
    gateway.text("HELP", sid="SM" + "76" * 16)
    advice = gateway.text("I feel worse", sid="SM" + "77" * 16)

    for days in (0, 1, 2, 3):
        clock.now = NOW + timedelta(days=days)
        dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock).run()

    # Only the one HELP answer the carriers require; the red flag's advice went in TwiML.
    [request] = twilio_fake.requests
    assert "For help call" in request["Body"]
    assert "call 911" in advice.text


def test_after_stop_zero_sends_of_any_kind_late_redeliveries_included(
    gateway: Gateway, world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=5))
    world.message(patient, appointment_id=visit, kind="confirmation")
    dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock).run()
    [sent_sid] = twilio_fake.sids
    # Everything a patient can have queued: reminders, an answer to an earlier text, a
    # redelivery of earlier advice, a waitlist offer, reschedule choices.
    for days in (1, 2, 3):
        world.message(patient, appointment_id=visit, scheduled_for=NOW + timedelta(days=days))
    world.message(patient, kind="visit_confirmed", key="reply:SMa:visit_confirmed")
    world.message(patient, kind="urgent_advice", key="reply:SMb:urgent_advice:redeliver1")
    world.message(patient, kind="waitlist_offer", key="offer:99")
    world.message(patient, kind="reschedule_choices", key="reply:SMc:reschedule_choices")

    gateway.text("STOP", opt_out_type="STOP")  # Twilio's Advanced Opt-Out answered it
    # The confirmation sent before the STOP comes back unreachable: a redelivery would be due.
    assert gateway.status(sent_sid, "undelivered", error="30003") == 204
    for days in (0, 1, 2, 3, 4):
        clock.now = NOW + timedelta(days=days, minutes=30)
        dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock).run()

    assert len(twilio_fake.requests) == 1  # the confirmation, before the STOP; nothing since
    statuses = [(m.idempotency_key, m.status) for m in world.messages()]
    assert statuses[0] == ("test:1", OutboundStatus.UNDELIVERED)  # the confirmation
    assert {status for _, status in statuses[1:-1]} == {OutboundStatus.CANCELLED}  # at the STOP
    # The redelivery the late callback made was held back at the moment of sending.
    assert statuses[-1] == ("test:1:redeliver1", OutboundStatus.SUPPRESSED)


def test_start_resubscribes_confirms_once_and_brings_back_upcoming_reminders(
    gateway: Gateway, world: World, clock: Clock
) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=5))
    passed = world.message(
        patient, appointment_id=visit, key=f"appt:{visit}:reminder:d3", scheduled_for=NOW
    )
    ahead = world.message(
        patient,
        appointment_id=visit,
        key=f"appt:{visit}:reminder:d1",
        scheduled_for=NOW + timedelta(days=4),
    )
    gateway.text("STOP", opt_out_type="STOP")
    clock.now = NOW + timedelta(days=1)

    gateway.text("START", sid="SM" + "99" * 16)
    gateway.text("START", sid="SM" + "99" * 16)  # Twilio repeating the webhook
    sender = RecordingSender()
    dispatcher(world.database_url, sender, clock).run()

    assert world.get_patient(patient).sms_opt_out is False
    assert [sms.body for sms in sender.sent] == [
        "Riverside Health Clinic: You are subscribed again to appointment texts from us. "
        "Questions: (555) 555-0100. Reply STOP to opt out."
    ]
    assert world.get(ahead).status == OutboundStatus.SCHEDULED
    assert world.get(passed).status == OutboundStatus.CANCELLED
    clock.now = NOW + timedelta(days=4)
    dispatcher(world.database_url, sender, clock).run()
    assert sender.sent[-1].message_id == ahead
