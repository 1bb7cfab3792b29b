"""The dispatcher against a real database (SQLite and PostgreSQL) and local Twilio stand-ins."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from followup.messaging.sender import DryRunSender, OutgoingSms, SendReceipt
from followup.services.dispatch import (
    UNDELIVERABLE_TASK,
    Dispatcher,
    DispatchPolicy,
    Outcome,
    SmsConfigurationError,
)
from models import messaging_queries as mq
from models.db import session_scope
from models.tables import Appointment, AppointmentStatus, OutboundStatus
from tests.sms.conftest import (
    NOW,
    PHONE,
    Clock,
    RecordingSender,
    World,
    dispatcher,
    twilio_sender,
)
from tests.sms.twilio_mock import Answer, ScriptedTwilio, free_port


def test_a_due_message_goes_through_the_contract_mock_once(
    world: World, clock: Clock, prism_url: str
) -> None:
    patient = world.patient()
    message_id = world.message(patient, scheduled_for=NOW - timedelta(minutes=5))
    later = world.message(patient, scheduled_for=NOW + timedelta(hours=1))

    report = dispatcher(world.database_url, twilio_sender(prism_url), clock).run()

    sent = world.get(message_id)
    assert report.outcomes == {Outcome.SENT: 1}
    assert sent.status == OutboundStatus.SENT  # Twilio accepted it; callbacks move it on
    assert sent.twilio_sid and sent.twilio_sid[:2] in ("SM", "MM")
    assert (sent.attempts, sent.sent_at, sent.error_code) == (1, NOW, None)
    assert world.get(later).status == OutboundStatus.SCHEDULED
    # A second run finds nothing due: the row is never sent again.
    assert dispatcher(world.database_url, twilio_sender(prism_url), clock).run().handled == 0


class SlowSender(RecordingSender):
    """Accepts slowly, so concurrent dispatchers overlap."""

    def send(self, sms: OutgoingSms) -> SendReceipt:
        time.sleep(0.01)
        return super().send(sms)


def run_concurrently(dispatchers: list[Dispatcher]) -> None:
    start = threading.Barrier(len(dispatchers))
    errors: list[BaseException] = []

    def run(one: Dispatcher) -> None:
        start.wait()
        try:
            one.run()
        except BaseException as error:  # surfaced below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(one,)) for one in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []


def test_two_dispatchers_racing_for_one_due_row_send_it_once(world: World, clock: Clock) -> None:
    message_id = world.message(world.patient())
    senders = [SlowSender(), SlowSender()]

    run_concurrently([dispatcher(world.database_url, s, clock) for s in senders])

    assert [sms.message_id for s in senders for sms in s.sent] == [message_id]


def test_concurrent_dispatchers_share_the_queue_without_duplicates(
    world: World, clock: Clock
) -> None:
    patients = [world.patient(phone=f"+1555555{n:04d}") for n in range(40)]
    ids = {world.message(p, to_phone=f"+1555555{n:04d}") for n, p in enumerate(patients)}
    senders = [SlowSender() for _ in range(3)]

    run_concurrently([dispatcher(world.database_url, s, clock, workers=3) for s in senders])

    sent = [sms.message_id for s in senders for sms in s.sent]
    assert sorted(sent) == sorted(ids)
    assert {world.get(i).status for i in ids} == {OutboundStatus.SENT}


def test_a_500_then_success_is_one_message_with_one_sid(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    message_id = world.message(world.patient())
    twilio_fake.script.append(Answer(500))

    report = dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock).run()

    message = world.get(message_id)
    assert report.outcomes == {Outcome.RETRY: 1, Outcome.SENT: 1}
    assert twilio_fake.sids == [message.twilio_sid]
    assert message.attempts == 2
    # Both requests were the same message (the same outbox row and body), numbered by attempt.
    assert [r["Body"] for r in twilio_fake.requests] == [message.body, message.body]
    assert [r["Attempt"] for r in twilio_fake.requests] == ["1", "2"]


@pytest.mark.parametrize("answer", [Answer(429, 20429), Answer(503, 20503)])
def test_rate_limits_and_outages_back_off_exponentially(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio, answer: Answer
) -> None:
    message_id = world.message(world.patient())
    twilio_fake.script.append(answer)
    policy = DispatchPolicy(rate_per_second=1000.0, retry_base_seconds=30.0)

    report = dispatcher(
        world.database_url, twilio_sender(twilio_fake.base_url), clock, policy
    ).run()

    message = world.get(message_id)
    assert report.outcomes == {Outcome.RETRY: 1}
    assert (message.status, message.attempts) == (OutboundStatus.SCHEDULED, 1)
    assert message.scheduled_for == NOW + timedelta(seconds=30)
    clock.now = message.scheduled_for
    dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock, policy).run()
    assert world.get(message_id).twilio_sid == twilio_fake.sids[0]


def test_a_network_failure_is_retried_with_the_same_row(world: World, clock: Clock) -> None:
    message_id = world.message(world.patient())
    unreachable = twilio_sender(f"http://127.0.0.1:{free_port()}")
    policy = DispatchPolicy(rate_per_second=1000.0, retry_base_seconds=60.0)

    dispatcher(world.database_url, unreachable, clock, policy).run()

    message = world.get(message_id)
    assert (message.status, message.error_code, message.twilio_sid) == (
        OutboundStatus.SCHEDULED,
        "network",
        None,
    )


def test_retries_stop_after_max_attempts_and_a_person_calls(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    patient = world.patient()
    message_id = world.message(patient)
    twilio_fake.script.extend([Answer(500)] * 3)
    policy = DispatchPolicy(rate_per_second=1000.0, max_attempts=3, retry_base_seconds=0.0)

    dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock, policy).run()

    message = world.get(message_id)
    assert (message.status, message.attempts, len(twilio_fake.requests)) == ("failed", 3, 3)
    [task] = world.escalations()
    assert task.kind == UNDELIVERABLE_TASK and f"SMS {message_id}" in task.reason


def test_21610_suppresses_the_number_for_good_and_is_never_retried(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    patient = world.patient()
    first = world.message(patient)
    queued_later = world.message(patient, scheduled_for=NOW + timedelta(days=1))
    twilio_fake.script.append(Answer(400, 21610))

    dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock).run()
    clock.now = NOW + timedelta(days=2)
    dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock).run()

    assert len(twilio_fake.requests) == 1
    assert (world.get(first).status, world.get(first).error_code) == ("suppressed", "21610")
    assert world.get(queued_later).status == OutboundStatus.CANCELLED
    assert world.get_patient(patient).sms_opt_out is True
    with session_scope(world.database_url) as session:
        assert mq.phone_suppressed(session=session, phone=PHONE)
    assert world.escalations() == []


@pytest.mark.parametrize("code", [21211, 21614, 30006])
def test_invalid_or_landline_numbers_fail_once_and_open_a_call_task(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio, code: int
) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=3))
    message_id = world.message(patient, appointment_id=visit)
    twilio_fake.script.append(Answer(400, code))

    dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock).run()

    message = world.get(message_id)
    assert (message.status, message.error_code, len(twilio_fake.requests)) == (
        "failed",
        str(code),
        1,
    )
    [task] = world.escalations()
    assert (task.kind, task.status, task.target) == (UNDELIVERABLE_TASK, "open", "scheduler-queue")
    assert str(code) in task.reason and PHONE not in task.reason


def test_a_refused_account_stops_the_run_and_keeps_every_message(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    patient = world.patient()
    ids = [world.message(patient) for _ in range(3)]
    twilio_fake.script.extend([Answer(401, 20003)] * 3)

    with pytest.raises(SmsConfigurationError):
        dispatcher(world.database_url, twilio_sender(twilio_fake.base_url), clock).run()

    assert {(world.get(i).status, world.get(i).attempts) for i in ids} == {("scheduled", 0)}
    assert world.escalations() == []


def test_nothing_is_sent_outside_quiet_hours(world: World) -> None:
    night = datetime(2026, 12, 9, 7, 30, tzinfo=UTC)  # 02:30 in New York
    clock = Clock(night)
    message_id = world.message(world.patient(timezone="America/New_York"), scheduled_for=night)
    sender = RecordingSender()

    report = dispatcher(world.database_url, sender, clock).run()

    eight_local = datetime(2026, 12, 9, 13, 0, tzinfo=UTC)
    assert (report.outcomes, sender.sent) == ({Outcome.DEFERRED: 1}, [])
    assert world.get(message_id).scheduled_for == eight_local
    clock.now = eight_local - timedelta(seconds=1)
    assert dispatcher(world.database_url, sender, clock).run().handled == 0
    clock.now = eight_local
    dispatcher(world.database_url, sender, clock).run()
    assert [sms.message_id for sms in sender.sent] == [message_id]


def test_an_unknown_zone_waits_for_the_strict_window(world: World) -> None:
    morning_east = datetime(2026, 12, 8, 14, 0, tzinfo=UTC)  # 09:00 New York, 04:00 Honolulu
    message_id = world.message(world.patient(timezone=None), scheduled_for=morning_east)

    dispatcher(world.database_url, RecordingSender(), Clock(morning_east)).run()

    assert world.get(message_id).scheduled_for == datetime(2026, 12, 8, 18, 0, tzinfo=UTC)


def test_the_daily_cap_holds_at_send_time(world: World, clock: Clock) -> None:
    patient = world.patient()
    world.message(patient, status=OutboundStatus.DELIVERED, sent_at=NOW - timedelta(hours=3))
    visit = world.visit(patient, NOW + timedelta(days=4))
    message_id = world.message(patient, appointment_id=visit)
    sender = RecordingSender()

    dispatcher(world.database_url, sender, clock).run()

    assert sender.sent == []
    assert world.get(message_id).scheduled_for == NOW + timedelta(days=1)


def test_a_reminder_for_a_cancelled_visit_is_not_sent(world: World, clock: Clock) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=2))
    message_id = world.message(patient, appointment_id=visit)
    with session_scope(world.database_url) as session:
        appointment = session.get(Appointment, visit)
        assert appointment is not None
        appointment.status = AppointmentStatus.CANCELLED
    sender = RecordingSender()

    dispatcher(world.database_url, sender, clock).run()

    assert (sender.sent, world.get(message_id).status) == ([], OutboundStatus.CANCELLED)


def test_dry_run_stores_and_marks_without_sending(world: World, clock: Clock) -> None:
    message_id = world.message(world.patient())

    report = dispatcher(world.database_url, DryRunSender(), clock).run()

    message = world.get(message_id)
    assert report.outcomes == {Outcome.DRY_RUN: 1}
    assert (message.status, message.twilio_sid, message.sent_at) == ("dry_run", None, NOW)


def test_a_claim_takes_at_most_its_limit_of_many_due_rows(world: World) -> None:
    """On PostgreSQL an UPDATE ... IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED) can claim
    every due row; the claim must stop at its limit."""
    patient = world.patient()
    due = [world.message(patient) for _ in range(30)]
    with session_scope(world.database_url) as session:
        claimed = mq.claim_due_messages(session=session, now=NOW, limit=10)
    assert claimed == due[:10]
    assert [world.get(m).status for m in due].count("sending") == 10


def test_a_claim_left_by_a_dead_worker_is_released(world: World, clock: Clock) -> None:
    message_id = world.message(world.patient())
    with session_scope(world.database_url) as session:
        claimed = mq.claim_due_messages(session=session, now=NOW, limit=5)
    assert claimed == [message_id]
    sender = RecordingSender()
    clock.now = NOW + timedelta(minutes=11)

    report = dispatcher(world.database_url, sender, clock).run()

    assert report.released_stale == 1
    assert [sms.message_id for sms in sender.sent] == [message_id]


def test_a_claim_with_a_sid_is_never_released(world: World, clock: Clock) -> None:
    message_id = world.message(world.patient())
    with session_scope(world.database_url) as session:
        assert mq.claim_due_messages(session=session, now=NOW, limit=5) == [message_id]
        message = mq.get_message(session=session, message_id=message_id)
        message.twilio_sid = "SM" + "1" * 32
        session.add(message)
    clock.now = NOW + timedelta(hours=1)

    assert dispatcher(world.database_url, RecordingSender(), clock).run().released_stale == 0


def test_the_rate_limit_paces_the_api_calls(world: World, clock: Clock) -> None:
    patients = [world.patient(phone=f"+1555555{n:04d}") for n in range(11)]
    for n, patient in enumerate(patients):
        world.message(patient, to_phone=f"+1555555{n:04d}")
    started: list[float] = []

    class Timed(RecordingSender):
        def send(self, sms: OutgoingSms) -> SendReceipt:
            started.append(time.monotonic())
            return super().send(sms)

    policy = DispatchPolicy(rate_per_second=20.0, retry_base_seconds=0.0)
    dispatcher(world.database_url, Timed(), clock, policy, workers=4).run()

    span = max(started) - min(started)
    assert len(started) == 11
    # 10 intervals of 50 ms = 0.5 s; a thread waking late (a loaded machine) can only make the
    # first call look later, so the lower bound has slack. Unpaced, 11 calls take ~10 ms. No
    # upper bound: how slow a loaded machine is belongs to the benchmark, not to this test.
    assert span >= 0.4


def test_a_row_twilio_already_has_is_never_claimed_again(world: World, clock: Clock) -> None:
    message_id = world.message(world.patient())
    with session_scope(world.database_url) as session:
        message = mq.get_message(session=session, message_id=message_id)
        message.twilio_sid = "SM" + "2" * 32  # e.g. learnt from a callback after a stale release
        session.add(message)
    sender = RecordingSender()

    dispatcher(world.database_url, sender, clock).run()

    assert sender.sent == []
