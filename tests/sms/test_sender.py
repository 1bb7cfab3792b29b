"""TwilioSender and the official client against Twilio's contract (Prism) and a scripted fake."""

from __future__ import annotations

import re

import pytest

from followup.messaging.sender import (
    DryRunSender,
    OutgoingSms,
    SmsSendError,
    TwilioSender,
    build_sender,
    build_twilio_client,
)
from followup.settings import get_settings
from tests.sms.conftest import CLINIC_FROM, PHONE, twilio_sender, twilio_settings
from tests.sms.twilio_mock import Answer, ScriptedTwilio, free_port

SMS = OutgoingSms(
    message_id=7,
    to=PHONE,
    body="Riverside Clinic: Your visit is booked. Reply STOP to opt out.",
    status_callback="https://followup.example.org/twilio/status?outbound_id=7",
    attempt=2,
)
SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")  # the spec's pattern for a Message sid


def test_a_send_passes_twilio_s_contract_and_returns_the_message_sid(prism_url: str) -> None:
    receipt = twilio_sender(prism_url).send(SMS)

    assert SID.fullmatch(receipt.sid or "")
    assert receipt.dry_run is False


def test_a_send_through_a_messaging_service_passes_the_contract(prism_url: str) -> None:
    client = build_twilio_client(twilio_settings(prism_url))
    sender = TwilioSender(client, messaging_service_sid="MG" + "a" * 32)

    assert SID.fullmatch(sender.send(SMS).sid or "")


def test_the_contract_mock_refuses_what_twilio_would_refuse(prism_url: str) -> None:
    # An account SID outside the spec's pattern: Prism answers 4xx as Twilio's API would, so a
    # passing send above really was checked against the contract.
    settings = twilio_settings(prism_url, twilio_account_sid="not-an-account-sid")
    sender = TwilioSender(build_twilio_client(settings), from_number=CLINIC_FROM)

    with pytest.raises(SmsSendError) as refused:
        sender.send(SMS)
    assert refused.value.http_status is not None and 400 <= refused.value.http_status < 500


def test_the_request_carries_exactly_what_the_engine_means(twilio_fake: ScriptedTwilio) -> None:
    twilio_sender(twilio_fake.base_url).send(SMS)

    assert twilio_fake.requests == [
        {
            "To": PHONE,
            "From": CLINIC_FROM,
            "Body": SMS.body,
            "StatusCallback": SMS.status_callback,
            "Attempt": "2",
        }
    ]


@pytest.mark.parametrize(
    ("answer", "code", "http_status"),
    [
        (Answer(429, 20429), 20429, 429),
        (Answer(500), None, 500),
        (Answer(503, 20503), 20503, 503),
        (Answer(400, 21610), 21610, 400),
        (Answer(400, 21211), 21211, 400),
        (Answer(400, 21614), 21614, 400),
        (Answer(401, 20003), 20003, 401),
    ],
)
def test_twilio_errors_come_back_as_codes(
    twilio_fake: ScriptedTwilio, answer: Answer, code: int | None, http_status: int
) -> None:
    twilio_fake.script.append(answer)

    with pytest.raises(SmsSendError) as failed:
        twilio_sender(twilio_fake.base_url).send(SMS)

    assert (failed.value.code, failed.value.http_status, failed.value.network) == (
        code,
        http_status,
        False,
    )
    # The error carries no text from Twilio (it can quote the number) and no chained cause.
    assert PHONE not in str(failed.value)
    assert failed.value.__cause__ is None


def test_an_unreachable_api_is_a_network_error() -> None:
    sender = twilio_sender(f"http://127.0.0.1:{free_port()}")

    with pytest.raises(SmsSendError) as failed:
        sender.send(SMS)

    assert failed.value.network is True


def test_the_client_is_pointed_at_twilio_api_base() -> None:
    client = build_twilio_client(twilio_settings("http://127.0.0.1:4010/"))

    assert client.api.base_url == "http://127.0.0.1:4010"
    assert client.account_sid == twilio_settings("x").twilio_account_sid


def test_without_credentials_the_sender_is_the_dry_run_outbox() -> None:
    settings = get_settings(twilio_account_sid=None, twilio_auth_token=None, twilio_from=None)

    assert isinstance(build_sender(settings), DryRunSender)
    assert DryRunSender().send(SMS).dry_run is True
    with pytest.raises(ValueError, match="TWILIO_ACCOUNT_SID"):
        build_twilio_client(settings)


def test_with_credentials_the_sender_is_twilio(prism_url: str) -> None:
    assert isinstance(build_sender(twilio_settings(prism_url)), TwilioSender)
