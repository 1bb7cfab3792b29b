"""Intake: raw stored before parsing, the right ACK code, duplicates answered alike."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import col, select

from followup.ris import hl7v2
from followup.services.intake import (
    Receipt,
    content_digest,
    judge_stranded_messages,
    receive_message,
    receive_unterminated,
)
from followup.settings import get_settings
from models import inbox_queries, queries
from models.db import session_scope
from models.tables import AuditEvent, InboxMessage, InboxStatus
from models.types import utcnow
from tests.conftest import SAMPLES

HL7 = SAMPLES / "hl7"


def _receive(database_url: str, raw: bytes):
    settings = get_settings(database_url=database_url)
    with session_scope(database_url) as session:
        return receive_message(session=session, raw=raw, source="test", settings=settings)


def _rows(database_url: str) -> list[InboxMessage]:
    with session_scope(database_url) as session:
        return list(session.exec(select(InboxMessage).order_by(col(InboxMessage.id))))


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
    # Its original is not claimed yet: the resend's event is the original's (see the test below).
    assert second.run_inbox_id == first.inbox_id
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


SPINE = (HL7 / "spine_pain_degenerative.hl7").read_bytes()


def _spine(old: bytes, new: bytes) -> bytes:
    assert old in SPINE
    return SPINE.replace(old, new, 1)


def test_a_nul_in_the_control_id_is_stored_refused_and_answered_alike_when_resent(
    database_url: str,
) -> None:
    raw = _spine(b"|DEMO-ORU-0003|", b"|DEMO\x00ORU|")
    first, resent = _receive(database_url, raw), _receive(database_url, raw)

    assert (first.ack_code, first.location, first.should_process) == ("AE", "MSH-10", False)
    assert (resent.ack_code, resent.location, resent.duplicate_of) == (
        "AE",
        "MSH-10",
        first.inbox_id,
    )
    rows = _rows(database_url)
    assert [(r.raw, r.control_id, r.status) for r in rows] == [
        (raw, "DEMO\ufffdORU", InboxStatus.ERROR),
        (raw, "DEMO\ufffdORU", InboxStatus.DUPLICATE),
    ]


@pytest.mark.parametrize(
    ("old", "new", "location"),
    [
        (b"|DEMO_RIS|", b"|DEMO\x00RIS|", "MSH-3"),
        (b"Whitaker", b"Whit\x00aker", "PID-5"),
        (b"Paraspinal", b"Para\x00spinal", "OBX-5"),
        (b"|DM100103^", b"|" + b"M" * 65 + b"^", "PID-3"),
        (b"Whitaker", b"W" * 129, "PID-5"),
        (b"|72148^", b"|" + b"7" * 65 + b"^", "OBR-4"),
    ],
)
def test_a_value_the_tables_cannot_hold_is_refused_with_its_field(
    database_url: str, old: bytes, new: bytes, location: str
) -> None:
    receipt = _receive(database_url, _spine(old, new))

    assert (receipt.ack_code, receipt.location, receipt.should_process) == ("AE", location, False)
    [row] = _rows(database_url)
    assert (row.status, row.error_location) == (InboxStatus.ERROR, location)


@pytest.mark.parametrize(
    ("old", "new", "location"),
    [(b"|DM100103^", b"|" + b"M" * 65 + b"^", "PID-3"), (b"Whitaker", b"Whit\x00aker", "PID-5")],
)
def test_an_adt_update_the_tables_cannot_hold_is_refused_with_its_field(
    database_url: str, old: bytes, new: bytes, location: str
) -> None:
    adt = SPINE.replace(b"|ORU^R01^ORU_R01|", b"|ADT^A08^ADT_A01|").replace(old, new, 1)

    receipt = _receive(database_url, adt)

    assert (receipt.ack_code, receipt.location) == ("AE", location)


def test_a_resend_triggers_the_original_event_only_while_no_run_claimed_it(
    database_url: str,
) -> None:
    first = _receive(database_url, SPINE)
    before_claim = _receive(database_url, SPINE)
    now = utcnow()
    with session_scope(database_url) as session:
        assert inbox_queries.claim_message(
            session=session, inbox_id=first.inbox_id, now=now, stale_before=now - timedelta(1)
        )
    after_claim = _receive(database_url, SPINE)

    assert (first.run_inbox_id, first.should_process) == (first.inbox_id, True)
    assert (before_claim.duplicate_of, before_claim.run_inbox_id) == (
        first.inbox_id,
        first.inbox_id,
    )
    assert (after_claim.duplicate_of, after_claim.should_process) == (first.inbox_id, False)


def _store_copy(database_url: str) -> int:
    """A copy of SPINE stored as the gateway stores it, not judged yet."""
    with session_scope(database_url) as session:
        row = inbox_queries.store_message(
            session=session,
            raw=SPINE,
            source="test",
            peer=None,
            content_type="hl7v2",
            sender="DEMO_RIS|DEMO_SPINE_NEURO",
            control_id="DEMO-ORU-0003",
            message_type="ORU^R01",
            content_digest=content_digest(hl7v2.decode_message(SPINE)),
        )
        assert row.id is not None
        return row.id


def _original_of(database_url: str, inbox_id: int) -> int | None:
    with session_scope(database_url) as session:
        original = inbox_queries.original_message(
            session=session,
            sender="DEMO_RIS|DEMO_SPINE_NEURO",
            control_id="DEMO-ORU-0003",
            content_digest=content_digest(hl7v2.decode_message(SPINE)),
            inbox_id=inbox_id,
        )
        return original.id if original else None


def test_the_copy_judged_first_is_the_original_whatever_its_id(database_url: str) -> None:
    """A copy stored earlier but judged later (its commit was slow) is the duplicate: a row
    not judged yet is no original, since its answer is not known."""
    early = _store_copy(database_url)
    judged_first = _receive(database_url, SPINE)

    assert judged_first.inbox_id > early
    assert (judged_first.status, judged_first.duplicate_of) == (InboxStatus.RECEIVED, None)
    assert _original_of(database_url, early) == judged_first.inbox_id


# A gateway stopped between its two commits (raw bytes, then judgement) leaves a stranded row;
# sweep-inbox judges it as the gateway would have.


def _judge_stranded(database_url: str) -> list[Receipt]:
    settings = get_settings(database_url=database_url)
    with session_scope(database_url) as session:
        return judge_stranded_messages(
            session=session, settings=settings, received_before=utcnow(), limit=100
        )


def _unclaimed_ids(database_url: str) -> list[int | None]:
    with session_scope(database_url) as session:
        rows = inbox_queries.unclaimed_messages(
            session=session, received_before=utcnow(), limit=100
        )
        return [row.id for row in rows]


def test_a_stranded_row_whose_resend_was_judged_becomes_its_duplicate(database_url: str) -> None:
    stranded = _store_copy(database_url)
    resend = _receive(database_url, SPINE)

    assert _unclaimed_ids(database_url) == [resend.inbox_id]  # never the unjudged row
    [judged] = _judge_stranded(database_url)

    assert (judged.inbox_id, judged.status, judged.duplicate_of) == (
        stranded,
        InboxStatus.DUPLICATE,
        resend.inbox_id,
    )
    assert _unclaimed_ids(database_url) == [resend.inbox_id]
    assert _judge_stranded(database_url) == []


def test_a_stranded_row_without_a_resend_is_accepted_for_the_sweep(database_url: str) -> None:
    stranded = _store_copy(database_url)
    assert _unclaimed_ids(database_url) == []

    [judged] = _judge_stranded(database_url)

    assert (judged.inbox_id, judged.status, judged.ack_code) == (
        stranded,
        InboxStatus.RECEIVED,
        "AA",
    )
    assert _unclaimed_ids(database_url) == [stranded]


def test_a_stranded_fhir_report_is_judged_as_fhir(database_url: str) -> None:
    raw = (SAMPLES / "fhir" / "diagnosticreport_contained.json").read_bytes()
    with session_scope(database_url) as session:
        stored = queries.store_inbox_message(
            session=session, raw=raw, source="test", content_type="fhir"
        )

    [judged] = _judge_stranded(database_url)

    assert (judged.inbox_id, judged.status, judged.ack_code) == (
        stored.id,
        InboxStatus.RECEIVED,
        "AA",
    )
    assert judged.accession


def test_a_cut_off_frame_is_stored_already_refused(database_url: str) -> None:
    with session_scope(database_url) as session:
        receipt = receive_unterminated(session=session, raw=SPINE[:200], source="test")

    assert (receipt.status, receipt.ack_code) == (InboxStatus.ERROR, "AE")
    assert receipt.header is not None
    assert _judge_stranded(database_url) == []


# MSH-10 is unique per sender only while the sender's counter does not reset (DOMAIN.md §5).


def test_a_resend_stamped_anew_is_still_a_duplicate(database_url: str) -> None:
    first = _receive(database_url, SPINE)
    restamped = _receive(database_url, _spine(b"|20261104092233|", b"|20261104101500|"))

    assert (restamped.status, restamped.duplicate_of) == (InboxStatus.DUPLICATE, first.inbox_id)


def test_a_reused_control_id_with_other_content_is_a_new_message_and_audited(
    database_url: str,
) -> None:
    first = _receive(database_url, SPINE)
    other_study = _spine(b"ACC2026000103", b"ACC2026000999").replace(
        b"ACC2026000103", b"ACC2026000999"
    )
    reused = _receive(database_url, other_study)
    resent = _receive(database_url, other_study)

    assert (reused.ack_code, reused.status, reused.duplicate_of) == (
        "AA",
        InboxStatus.RECEIVED,
        None,
    )
    assert (reused.accession, reused.should_process) == ("ACC2026000999", True)
    assert (resent.status, resent.duplicate_of) == (InboxStatus.DUPLICATE, reused.inbox_id)
    with session_scope(database_url) as session:
        audits = session.exec(
            select(AuditEvent).where(AuditEvent.action == "inbox.control_id_reused")
        ).all()
        assert [(a.entity_id, a.detail) for a in audits] == [
            (reused.inbox_id, {"earlier_inbox_id": first.inbox_id})
        ]


def test_long_control_ids_that_differ_only_at_the_end_stay_apart(database_url: str) -> None:
    stem = b"X" * 250
    one = _receive(database_url, _spine(b"|DEMO-ORU-0003|", b"|" + stem + b"1|"))
    two = _receive(
        database_url,
        _spine(b"|DEMO-ORU-0003|", b"|" + stem + b"2|").replace(b"ACC2026000103", b"ACC2026000998"),
    )
    again = _receive(database_url, _spine(b"|DEMO-ORU-0003|", b"|" + stem + b"1|"))

    assert (one.status, two.status) == (InboxStatus.RECEIVED, InboxStatus.RECEIVED)
    assert (again.status, again.duplicate_of) == (InboxStatus.DUPLICATE, one.inbox_id)
    assert one.header is not None and one.header.control_id == (stem + b"1").decode()


@pytest.mark.parametrize("control_id", [b"", b"   "])
def test_an_empty_control_id_is_refused_with_its_field(
    database_url: str, control_id: bytes
) -> None:
    receipt = _receive(database_url, _spine(b"|DEMO-ORU-0003|", b"|" + control_id + b"|"))

    assert (receipt.ack_code, receipt.location, receipt.should_process) == ("AE", "MSH-10", False)
    [row] = _rows(database_url)
    assert row.status == InboxStatus.ERROR
