"""Fault: 1,000 fuzzed HL7 v2 messages through the MLLP listener, none crashes it.

Hypothesis mutates the real samples (the project's own, and the public dcm4che and Microsoft
FHIR-converter messages in tests/thirdparty/hl7): bytes flipped, spans cut, doubled or truncated,
delimiters, escapes, NULs, invalid UTF-8 and template text inserted, segments dropped, doubled
or shuffled, fields emptied or blown up, the whole message re-encoded. Each goes over a real
socket to the production listener on both databases, and:

* it gets exactly one ACK, coded AA, AE or AR, and never the listener's catch-all AR for an
  exception from intake (logged as an error): the message is then not judged, or not even
  stored, and the sender resends it in vain;
* it leaves exactly one inbox row holding the bytes sent;
* a row accepted for processing goes through the scan-completed flow itself (against the
  test harness's Prefect API) without an exception.

MLLP frames cannot carry the start and end block bytes, so those are removed from the
mutations; framing faults are the MLLP suite's. The run is derandomized: the same 1,000
messages every time, so CI never fails on a message it did not try before.
"""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import col, select

from followup.ris import hl7v2
from models.db import session_scope
from models.tables import InboxMessage, InboxStatus
from tests.conftest import SAMPLES, THIRD_PARTY, run_scan
from tests.faults.counting import check_counts, tally
from tests.gateway.conftest import RunningListener, exchange

EXAMPLES = 1000
LISTENER = "followup.gateway.mllp"
SEEDS = [
    path.read_bytes()
    for path in sorted([*(SAMPLES / "hl7").glob("*.hl7"), *(THIRD_PARTY / "hl7").rglob("*.hl7")])
]
TOKENS = [
    b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\r\n", b"\x00", b"\xff\xfe", b"\xc3", b"\xe9",
    b"MSH|^~\\&|", b"OBR|", b"PID|", b"\\X0D\\", b"\\E\\", b"\\F\\", b"{{ 7*7 }}", b"{% raw %}",
    b"'; DROP TABLE inbox_message;--", "\U0001f600".encode(), b"A" * 5000,
]  # fmt: skip
MLLP_FRAMING = (b"\x0b", b"\x1c")


def _at(data: st.DataObject, raw: bytes) -> int:
    return data.draw(st.integers(0, len(raw)))


def _segments(raw: bytes) -> list[bytes]:
    return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")


def mutate(data: st.DataObject, raw: bytes) -> bytes:
    """One mutation of the message, chosen and placed by Hypothesis."""
    kind = data.draw(
        st.sampled_from(
            ["flip", "cut", "double", "truncate", "token", "bytes", "segments", "field", "encode"]
        )
    )
    start = _at(data, raw)
    end = data.draw(st.integers(start, min(len(raw), start + 200)))
    if kind == "flip" and raw:
        at = min(start, len(raw) - 1)
        return raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at + 1 :]
    if kind == "cut":
        return raw[:start] + raw[end:]
    if kind == "double":
        return raw[:end] + raw[start:end] + raw[end:]
    if kind == "truncate":
        return raw[:start]
    if kind == "token":
        return raw[:start] + data.draw(st.sampled_from(TOKENS)) + raw[start:]
    if kind == "bytes":
        return raw[:start] + data.draw(st.binary(max_size=64)) + raw[start:]
    segments = _segments(raw)
    if kind == "segments":
        order = data.draw(st.permutations(range(len(segments))))
        kept = data.draw(st.lists(st.sampled_from(order), max_size=len(segments) + 3))
        return b"\r".join(segments[i] for i in (kept or order))
    if kind == "field":
        at = data.draw(st.integers(0, len(segments) - 1))
        fields = segments[at].split(b"|")
        which = data.draw(st.integers(0, len(fields) - 1))
        fields[which] = data.draw(
            st.one_of(
                st.just(b""),
                st.text(max_size=40).map(str.encode),
                st.integers(1, 3000).map(lambda n: b"~" * n),
                st.integers(1, 300).map(lambda n: b"x" * n * 10),
            )
        )
        segments[at] = b"|".join(fields)
        return b"\r".join(segments)
    codec = data.draw(st.sampled_from(["utf-16", "utf-16-be", "latin-1", "cp500", "utf-32"]))
    return hl7v2.decode_message(raw).encode(codec, errors="replace")


def with_control_id(raw: bytes, control_id: bytes) -> bytes:
    """The message under its own MSH-10, so that it is parsed rather than answered as a resend
    of another mutation of the same sample."""
    end = re.search(rb"[\r\n]", raw)
    header = raw[: end.start() if end else len(raw)]
    fields = header.split(b"|")
    fields[9] = control_id
    return b"|".join(fields) + raw[len(header) :]


def fuzzed(data: st.DataObject, number: int) -> bytes:
    raw = with_control_id(data.draw(st.sampled_from(SEEDS)), b"FUZZ-%06d" % number)
    for _ in range(data.draw(st.integers(1, 4))):
        raw = mutate(data, raw)
    for byte in MLLP_FRAMING:
        raw = raw.replace(byte, b"")
    return raw


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK written with the message's own delimiters and encoding."""
    text = hl7v2.decode_message(ack)
    start = text.index("\rMSA") + 4
    return text[start + 1 :].split(text[start])[0]


def test_fuzzed_messages_are_each_answered_and_stored(
    mllp: RunningListener, flow_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: 1,000 mutations of real HL7 v2 messages sent to the MLLP listener.
    Expected: 1,000 ACKs, each AA, AE or AR, no error logged by the listener;
    1,000 inbox rows holding the bytes as sent; the flow's steps go through every accepted
    row without an exception."""
    sent: list[bytes] = []
    codes: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def send_one(data: st.DataObject) -> None:
        message = fuzzed(data, len(sent))
        sent.append(message)
        acks = exchange(mllp, message)
        assert len(acks) == 1, f"{len(acks)} ACKs for {message[:300]!r}"
        codes.append(ack_code(acks[0]))

    caplog.set_level(logging.ERROR, logger=LISTENER)
    send_one()
    listener_errors = [r.getMessage() for r in caplog.records if r.name == LISTENER]

    with session_scope(mllp.database_url) as session:
        rows = list(session.exec(select(InboxMessage).order_by(col(InboxMessage.id))))
    crashed: dict[int, str] = {}
    for row in rows:
        if row.status == InboxStatus.RECEIVED:
            assert row.id is not None
            try:
                run_scan(row.id)
            except Exception as error:  # counted: the flow's run would fail on this row
                crashed[row.id] = repr(error)[:300]
    check_counts(
        "7 fuzzed HL7",
        {
            "sent": len(sent),
            "answered_aa_ae_ar": sum(code in ("AA", "AE", "AR") for code in codes),
            "listener_errors": len(listener_errors),
            "inbox_rows": len(rows),
            "raw_as_sent": sum(row.raw == raw for row, raw in zip(rows, sent, strict=False)),
            "flow_runs_failed": len(crashed),
        },
        {
            "sent": EXAMPLES,
            "answered_aa_ae_ar": EXAMPLES,
            "listener_errors": 0,
            "inbox_rows": EXAMPLES,
            "raw_as_sent": EXAMPLES,
            "flow_runs_failed": 0,
        },
        shown={
            "acks": tally(codes),
            "rows": tally(row.status for row in rows),
            "flow_runs": sum(row.status == InboxStatus.RECEIVED for row in rows),
        },
    )
