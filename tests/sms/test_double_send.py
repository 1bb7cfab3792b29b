"""No text twice: a send whose answer never came is looked up at Twilio before it is retried,
through the official client, against a local stub that accepts and answers too late."""

from __future__ import annotations

from datetime import timedelta

import pytest

from followup.messaging.sender import OutgoingSms, SmsSendError, TwilioSender, build_twilio_client
from followup.services.dispatch import UNKNOWN_OUTCOME, DispatchPolicy
from models import messaging_queries as mq
from models.db import session_scope
from models.tables import OutboundStatus
from tests.sms.conftest import (
    CLINIC_FROM,
    NOW,
    PHONE,
    Clock,
    World,
    dispatcher,
    twilio_sender,
    twilio_settings,
)
from tests.sms.test_sender import SMS
from tests.sms.twilio_mock import Answer, ScriptedTwilio, free_port

CLIENT_TIMEOUT = 0.5
LATE = CLIENT_TIMEOUT * 3  # Twilio accepted the message but answers after the client gave up
POLICY = DispatchPolicy(rate_per_second=1000.0, retry_base_seconds=0.0)
SMS_SINCE = NOW


def impatient_sender(api_base: str) -> TwilioSender:
    client = build_twilio_client(twilio_settings(api_base), timeout=CLIENT_TIMEOUT)
    return TwilioSender(client, from_number=CLINIC_FROM)


def test_a_timeout_after_acceptance_leaves_one_message_at_twilio(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    message_id = world.message(world.patient())
    twilio_fake.created_at = clock
    twilio_fake.script.append(Answer(201, delay=LATE))

    dispatcher(world.database_url, impatient_sender(twilio_fake.base_url), clock, POLICY).run()

    message = world.get(message_id)
    assert len(twilio_fake.requests) == 1
    assert [lookup["To"] for lookup in twilio_fake.lookups] == [PHONE]
    assert (message.twilio_sid, message.status) == (twilio_fake.sids[0], OutboundStatus.SENT)


def test_when_twilio_holds_no_such_message_the_retry_sends_it(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    message_id = world.message(world.patient())
    twilio_fake.created_at = clock
    twilio_fake.script.append(Answer(500, delay=LATE))  # refused, but too late to be told

    dispatcher(world.database_url, impatient_sender(twilio_fake.base_url), clock, POLICY).run()

    message = world.get(message_id)
    assert len(twilio_fake.requests) == 2 and len(twilio_fake.lookups) == 1
    assert (message.twilio_sid, message.status) == (twilio_fake.sids[0], OutboundStatus.SENT)


def test_an_unknown_outcome_waits_for_its_retry_marked_as_such(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    message_id = world.message(world.patient())
    twilio_fake.script.append(Answer(201, delay=LATE))
    policy = DispatchPolicy(rate_per_second=1000.0, retry_base_seconds=60.0)

    dispatcher(world.database_url, impatient_sender(twilio_fake.base_url), clock, policy).run()

    message = world.get(message_id)
    assert (message.status, message.error_code, message.twilio_sid) == (
        OutboundStatus.SCHEDULED,
        UNKNOWN_OUTCOME,
        None,
    )
    assert message.sent_at == clock()


def test_a_timeout_is_an_unknown_outcome_a_refused_connection_is_not(
    twilio_fake: ScriptedTwilio,
) -> None:
    twilio_fake.script.append(Answer(201, delay=LATE))

    with pytest.raises(SmsSendError) as timed_out:
        impatient_sender(twilio_fake.base_url).send(SMS)
    with pytest.raises(SmsSendError) as refused:
        twilio_sender(f"http://127.0.0.1:{free_port()}").send(SMS)

    assert (timed_out.value.network, timed_out.value.outcome_unknown) == (True, True)
    assert (refused.value.network, refused.value.outcome_unknown) == (True, False)


def test_the_lookup_passes_twilio_s_contract(prism_url: str) -> None:
    # Prism answers with generated messages, none with this body: nothing to adopt, and a
    # request outside the spec (a wrong filter name, path or auth) would have raised.
    found = twilio_sender(prism_url).find_sent(to=PHONE, body=SMS.body, since=SMS_SINCE)

    assert found == []


def test_a_claim_whose_worker_died_after_twilio_accepted_it_is_not_sent_again(
    world: World, clock: Clock, twilio_fake: ScriptedTwilio
) -> None:
    message_id = world.message(world.patient())
    twilio_fake.created_at = clock
    with session_scope(world.database_url) as session:
        assert mq.claim_due_messages(session=session, now=NOW, limit=5) == [message_id]
        body = mq.get_message(session=session, message_id=message_id).body
    # The worker's request reached Twilio; it died before writing the sid.
    twilio_sender(twilio_fake.base_url).send(
        OutgoingSms(message_id=message_id, to=PHONE, body=body)
    )
    clock.now = NOW + timedelta(minutes=11)

    report = dispatcher(
        world.database_url, twilio_sender(twilio_fake.base_url), clock, POLICY
    ).run()

    assert report.released_stale == 1
    assert len(twilio_fake.requests) == 1
    assert world.get(message_id).twilio_sid == twilio_fake.sids[0]
