"""The specialists' answers as pure parsing, and the referral moves an answer makes."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import pytest

from followup.core.referrals import IllegalReferralTransition, ReferralStatus, answer_path
from followup.errors import InboundMessageError, InvalidField, MissingField, UnsupportedMessage
from followup.ris.answers import parse_answer, parse_task

ZONE = ZoneInfo("America/New_York")
MSH = "MSH|^~\\&|NEURO|CLINIC|FOLLOWUP|demo|20261207120000||{}|C1|P|2.5.1"


def message(message_type: str, *segments: str) -> str:
    return "\r".join([MSH.format(message_type), *segments])


def test_rri_reads_the_decision_the_referral_and_the_reason_from_notes() -> None:
    answer = parse_answer(
        message("RRI^I12^RRI_I12", "RF1|R|||||REF7^FOLLOWUP", "NTE|1||please send \\T\\ call"),
        site_zone=ZONE,
    )

    assert (answer.status, answer.referral_id, answer.reason) == (
        ReferralStatus.DECLINED,
        7,
        "please send & call",
    )


@pytest.mark.parametrize(
    ("segments", "error", "location"),
    [
        (("RF1|P|||||REF7",), InvalidField, "RF1-1"),
        (("RF1|A",), MissingField, "RF1-6"),
        (("PRD|RT",), MissingField, "RF1"),
    ],
)
def test_rri_that_is_not_an_answer_is_refused_at_its_field(
    segments: tuple[str, ...], error: type[InboundMessageError], location: str
) -> None:
    with pytest.raises(error) as refused:
        parse_answer(message("RRI^I12^RRI_I12", *segments), site_zone=ZONE)
    assert refused.value.location == location


def test_siu_booked_reads_its_time_in_the_site_zone_without_an_offset() -> None:
    sch = "SCH|" + "|" * 24 + "Booked|REF9^FOLLOWUP"
    answer = parse_answer(
        message("SIU^S12^SIU_S12", sch, "TQ1|1||||||202612150930"), site_zone=ZONE
    )

    assert answer.status == ReferralStatus.SCHEDULED
    assert answer.scheduled_for is not None
    assert answer.scheduled_for.isoformat() == "2026-12-15T09:30:00-05:00"


def test_siu_s14_other_than_completed_is_refused_and_other_types_rejected() -> None:
    sch = "SCH|" + "|" * 24 + "Noshow|REF9"
    with pytest.raises(InvalidField) as refused:
        parse_answer(message("SIU^S26^SIU_S12", sch), site_zone=ZONE)
    assert refused.value.location == "SCH-25"
    with pytest.raises(UnsupportedMessage):
        parse_answer(message("SIU^S17^SIU_S12", sch), site_zone=ZONE)


def test_a_task_update_names_its_referral_by_identifier_or_focus() -> None:
    task = {
        "resourceType": "Task",
        "status": "rejected",
        "statusReason": {"text": "out of network"},
        "focus": {"identifier": {"system": "urn:followup:demo:referral", "value": "REF4"}},
    }
    answer = parse_task(json.dumps(task).encode(), site_zone=ZONE)

    assert (answer.referral_id, answer.status, answer.reason) == (
        4,
        ReferralStatus.DECLINED,
        "out of network",
    )
    with pytest.raises(MissingField):
        parse_task(json.dumps({**task, "focus": {}}).encode(), site_zone=ZONE)


@pytest.mark.parametrize(
    ("current", "answer", "path"),
    [
        ("sent", "accepted", ["accepted"]),
        ("initiated", "accepted", ["sent", "accepted"]),
        ("sent", "scheduled", ["accepted", "scheduled"]),
        ("scheduled", "scheduled", []),
        ("accepted", "accepted", []),
        ("scheduled", "completed", ["completed"]),
    ],
)
def test_answer_path(current: str, answer: str, path: list[str]) -> None:
    assert answer_path(current, answer) == path


@pytest.mark.parametrize(("current", "answer"), [("sent", "completed"), ("cancelled", "accepted")])
def test_answer_path_refuses_what_the_state_machine_does(current: str, answer: str) -> None:
    with pytest.raises(IllegalReferralTransition):
        answer_path(current, answer)
