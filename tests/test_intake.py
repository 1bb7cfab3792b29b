"""Intake: raw stored before parsing, the right ACK code, duplicates answered alike."""

from __future__ import annotations

import pytest
from sqlmodel import select

from followup.intake import receive_message
from followup.settings import get_settings
from models.db import session_scope
from models.tables import InboxMessage, InboxStatus
from tests.conftest import SAMPLES

HL7 = SAMPLES / "hl7"


def _receive(database_url: str, raw: bytes):
    settings = get_settings(database_url=database_url)
    with session_scope(database_url) as session:
        return receive_message(session=session, raw=raw, source="test", settings=settings)


def _rows(database_url: str) -> list[InboxMessage]:
    with session_scope(database_url) as session:
        return list(session.exec(select(InboxMessage).order_by(InboxMessage.id)))


def test_accepted_oru_is_stored_and_answered_aa(database_url: str) -> None:
    raw = (HL7 / "spine_pain_degenerative.hl7").read_bytes()
    receipt = _receive(database_url, raw)

    assert (receipt.ack_code, receipt.status, receipt.accession) == (
        "AA",
        InboxStatus.RECEIVED,
        "ACC2026000103",
    )
    assert receipt.should_process
    [row] = _rows(database_url)
    assert row.raw == raw
    assert row.control_id == "DEMO-ORU-0003"


def test_not_hl7_is_kept_raw_with_the_reason(database_url: str) -> None:
    receipt = _receive(database_url, b"hello, this is not a message")

    assert receipt.ack_code == "AE"
    assert "no MSH segment" in receipt.reason
    [row] = _rows(database_url)
    assert (row.status, row.raw) == (InboxStatus.ERROR, b"hello, this is not a message")


@pytest.mark.parametrize(
    ("sample", "ack_code", "location"),
    [
        ("bad_no_mrn.hl7", "AE", "PID-3"),
        ("bad_no_accession.hl7", "AE", "OBR-3"),
        ("bad_birth_date.hl7", "AE", "PID-7"),
        ("bad_wrong_type.hl7", "AR", "MSH-9"),
    ],
)
def test_bad_messages_get_the_ack_code_and_field(
    database_url: str, sample: str, ack_code: str, location: str
) -> None:
    receipt = _receive(database_url, (HL7 / sample).read_bytes())

    assert (receipt.ack_code, receipt.location) == (ack_code, location)
    assert not receipt.should_process
    [row] = _rows(database_url)
    assert row.error_location == location
    assert row.status == (InboxStatus.REJECTED if ack_code == "AR" else InboxStatus.ERROR)


def test_resend_with_same_control_id_is_a_duplicate_with_the_same_answer(
    database_url: str,
) -> None:
    raw = (HL7 / "spine_neurology_root_compression.hl7").read_bytes()
    first = _receive(database_url, raw)
    second = _receive(database_url, raw)
    bad = (HL7 / "bad_no_mrn.hl7").read_bytes()
    bad_first, bad_second = _receive(database_url, bad), _receive(database_url, bad)

    assert (second.status, second.duplicate_of, second.ack_code) == (
        InboxStatus.DUPLICATE,
        first.inbox_id,
        "AA",
    )
    assert not second.should_process
    assert (bad_second.ack_code, bad_second.location, bad_second.duplicate_of) == (
        "AE",
        "PID-3",
        bad_first.inbox_id,
    )
    assert len(_rows(database_url)) == 4


def test_same_report_under_a_new_control_id_is_not_reprocessed(database_url: str) -> None:
    raw = (HL7 / "spine_neurology_root_compression.hl7").read_bytes()
    first = _receive(database_url, raw)
    resent = raw.replace(b"DEMO-ORU-0001", b"DEMO-ORU-9001")
    second = _receive(database_url, resent)

    assert (second.status, second.duplicate_of) == (InboxStatus.DUPLICATE, first.inbox_id)
