"""ACK building, pure: fields, escaping, error codes, old versions, the fallback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from followup.ris.ack import AckOutcome, build_ack, encode_ack, hl7_error_code
from followup.ris.hl7v2 import MessageHeader

NOW = datetime(2026, 11, 3, 14, 5, 9, tzinfo=UTC)


def header(**changes: str) -> MessageHeader:
    values = {
        "message_type": "ORU^R01",
        "trigger": "R01",
        "control_id": "MSG-1",
        "processing_id": "P",
        "version": "2.5.1",
        "sending_application": "RIS",
        "sending_facility": "HOSP",
        "receiving_application": "FOLLOWUP",
        "receiving_facility": "CLINIC",
        "encoding_characters": "|^~\\&",
    }
    return MessageHeader(**{**values, **changes})


def test_accepted() -> None:
    text = build_ack(header(), AckOutcome(code="AA"), control_id="ACK7", now=NOW)

    assert text == (
        "MSH|^~\\&|FOLLOWUP|CLINIC|RIS|HOSP|20261103140509+0000||ACK^R01^ACK|ACK7|P|2.5.1\r"
        "MSA|AA|MSG-1"
    )


def test_error_with_location_and_escaped_reason() -> None:
    outcome = AckOutcome(
        code="AE",
        reason="time '2026|13' in A^B & C~D \\ E\nnext line",
        location="OBR-7",
        error_kind="InvalidField",
    )

    text = build_ack(header(), outcome, control_id="ACK8", now=NOW)

    escaped = "time '2026\\F\\13' in A\\S\\B \\T\\ C\\R\\D \\E\\ E next line"
    assert text.split("\r")[1:] == [
        f"MSA|AE|MSG-1|{escaped}",
        f"ERR||OBR^1^7|102^Data type error^HL70357|E||||{escaped}",
    ]


def test_version_before_2_5_also_gets_err_1() -> None:
    outcome = AckOutcome(
        code="AE", reason="result status is empty", location="OBR-25", error_kind="MissingField"
    )

    text = build_ack(header(version="2.3.1"), outcome, control_id="A", now=NOW)

    err = text.split("\r")[2]
    assert err.split("|")[:4] == [
        "ERR",
        "OBR^1^25^101&Required field missing&HL70357",
        "OBR^1^25",
        "101^Required field missing^HL70357",
    ]


def test_fallback_without_a_readable_header() -> None:
    outcome = AckOutcome(code="AE", reason="no MSH", error_kind="MalformedMessage")

    text = build_ack(None, outcome, control_id="ACKX", now=NOW)

    assert text.split("\r") == [
        "MSH|^~\\&|FOLLOWUP||||20261103140509+0000||ACK|ACKX|P|2.5.1",
        "MSA|AE||no MSH",
        "ERR|||100^Segment sequence error^HL70357|E||||no MSH",
    ]


def test_not_a_v2_version_is_answered_in_v2() -> None:
    outcome = AckOutcome(
        code="AR", reason="version 3.0", location="MSH-12", error_kind="UnsupportedMessage"
    )

    msh = build_ack(header(version="3.0"), outcome, control_id="A", now=NOW).split("\r")[0]

    assert msh.split("|")[11] == "2.5.1"


def test_msa_text_is_cut_to_80_characters() -> None:
    outcome = AckOutcome(code="AE", reason="x" * 300, location="PID-3", error_kind="MissingField")

    msa, err = build_ack(header(), outcome, control_id="A", now=NOW).split("\r")[1:]

    assert msa.split("|")[3] == "x" * 80
    assert err.split("|")[8] == "x" * 250


@pytest.mark.parametrize(
    ("kind", "location", "code"),
    [
        ("MissingField", "PID-3", 101),
        ("MissingField", "OBR", 100),
        ("InvalidField", "PID-7", 102),
        ("MalformedMessage", "MSH", 100),
        ("MalformedMessage", None, 100),
        ("UnsupportedMessage", "MSH-9", 200),
        ("UnsupportedMessage", "MSH-11", 202),
        ("UnsupportedMessage", "MSH-12", 203),
        ("UnsupportedMessage", "OBR", 207),
        (None, None, 207),
    ],
)
def test_error_codes(kind: str | None, location: str | None, code: int) -> None:
    assert hl7_error_code(AckOutcome("AE", "r", location, kind)) == code


def test_encoding_follows_the_message() -> None:
    text = "MSH|^~\\&|RIS|Hôpital"

    assert encode_ack(text, like="é".encode()) == text.encode("utf-8")
    assert encode_ack(text, like="é".encode("latin-1")) == text.encode("latin-1")
