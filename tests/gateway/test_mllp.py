"""The MLLP listener with real clients: python-hl7's `mllp_send`, and raw sockets for the edges."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from followup.ris.mllp_framing import (
    END_BLOCK_AT_CLOSE,
    END_BLOCK_WITHOUT_CR,
    NO_END_BLOCK,
    Frame,
    FrameDecoder,
    FramingEvent,
    OversizeMessage,
    StrayBytes,
    UnterminatedFrame,
)
from followup.services.intake import parse_stored
from followup.settings import get_settings
from models.db import session_scope
from models.tables import InboxStatus, Patient
from tests.conftest import SAMPLES, THIRD_PARTY
from tests.gateway.conftest import (
    CR,
    FS,
    VT,
    RunningListener,
    exchange,
    frame,
    read_acks,
    segments,
    start_listener,
)

HL7 = SAMPLES / "hl7"
MLLP_SEND = Path(sys.executable).with_name("mllp_send")
GOOD = HL7 / "spine_pain_degenerative.hl7"


def variant(raw: bytes, number: int) -> bytes:
    """The same report under its own MSH-10 and accession, so it is new content."""
    return raw.replace(b"DEMO-ORU-0003", f"LOAD-{number:06d}".encode()).replace(
        b"ACC2026000103", f"ACCL{number:09d}".encode()
    )


def wait_for_events(listener: RunningListener, count: int, timeout: float = 10) -> bool:
    """True when exactly `count` events were emitted. The callback runs after the ACK, on the
    connection's task: once every connection the test closed is served to its end, every
    event there will be has been emitted."""
    deadline = time.monotonic() + timeout
    while len(listener.accepted) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    while listener.open_connections() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert listener.open_connections() == 0, "connections still open"
    return len(listener.accepted) == count


def mllp_send(path: Path, port: int) -> list[bytes]:
    """Send a file with python-hl7's client; the ACK frames it printed."""
    done = subprocess.run(
        [str(MLLP_SEND), "--loose", "-f", str(path), "-p", str(port), "127.0.0.1"],
        capture_output=True,
        timeout=30,  # mllp_send has no timeout of its own
        check=True,
    )
    return [block.strip(b"\n").lstrip(VT) for block in done.stdout.split(FS + CR)[:-1]]


# --- the frame decoder alone (no sockets) ------------------------------------------------------


def in_pieces(stream: bytes, piece: int | None) -> list[bytes]:
    """The stream whole (None) or in pieces of `piece` bytes: frame boundaries must not
    depend on how the bytes arrive."""
    if piece is None:
        return [stream]
    return [stream[i : i + piece] for i in range(0, len(stream), piece)]


def decode(stream: bytes, *, piece: int | None) -> list[FramingEvent]:
    decoder = FrameDecoder(1000)
    return [e for part in in_pieces(stream, piece) for e in decoder.feed(part)] + decoder.finish()


@pytest.mark.parametrize("piece", [None, 1, 2, 5])
@pytest.mark.parametrize(
    ("stream", "events"),
    [
        (VT + b"MSH|a" + FS + CR, [Frame(b"MSH|a")]),
        # once a frame has started, VT is content: the head is kept
        (VT + b"MSH|a" + VT + b"b" + FS + CR, [Frame(b"MSH|a\x0bb")]),
        (
            VT + b"MSH|a" + FS + CR + VT + b"MSH|b" + FS + CR,
            [Frame(b"MSH|a"), Frame(b"MSH|b")],
        ),
        # FS then anything but CR: a framing error; what follows is outside a frame
        (
            VT + b"MSH|a" + FS + b"\n" + VT + b"MSH|b" + FS + CR,
            [
                UnterminatedFrame(b"MSH|a", END_BLOCK_WITHOUT_CR),
                StrayBytes(b"\n", 1),
                Frame(b"MSH|b"),
            ],
        ),
        (
            VT + b"MSH|a" + FS + VT + b"MSH|b" + FS + CR,
            [UnterminatedFrame(b"MSH|a", END_BLOCK_WITHOUT_CR), Frame(b"MSH|b")],
        ),
        # the connection ends inside a frame, after its FS or before
        (VT + b"MSH|a" + FS, [UnterminatedFrame(b"MSH|a", END_BLOCK_AT_CLOSE)]),
        (VT + b"MSH|a", [UnterminatedFrame(b"MSH|a", NO_END_BLOCK)]),
        (VT, [UnterminatedFrame(b"", NO_END_BLOCK)]),
        # outside a frame: a run ends at VT, at FS CR or at the end; its size counts it all
        (b"MSH|a" + FS + CR, [StrayBytes(b"MSH|a", 7)]),
        (
            b"noise" + VT + b"MSH|a" + FS + CR + b"\r\n",
            [StrayBytes(b"noise", 5), Frame(b"MSH|a"), StrayBytes(b"\r\n", 2)],
        ),
        (b"a" + FS + b"b" + FS + CR, [StrayBytes(b"a\x1cb", 5)]),
        (b"a" + FS, [StrayBytes(b"a\x1c", 2)]),
        (b"", []),
    ],
)
def test_frame_decoder(stream: bytes, events: list[FramingEvent], piece: int | None) -> None:
    assert decode(stream, piece=piece) == events


@pytest.mark.parametrize("piece", [None, 1, 64])
@pytest.mark.parametrize(
    "stream",
    [
        VT + b"MSH|^~\\&|R\rOBX|" + b"x" * 200 + FS + CR + VT + b"MSH|b" + FS + CR,
        b"\r\nMSH|^~\\&|R\rOBX|" + b"x" * 200,  # no start block either
    ],
)
def test_frame_decoder_stops_at_the_limit(stream: bytes, piece: int | None) -> None:
    decoder = FrameDecoder(100)
    events = []
    for part in in_pieces(stream, piece):
        events += decoder.feed(part)
        if decoder.stopped:
            break
    events += decoder.finish()

    [oversize] = events
    assert isinstance(oversize, OversizeMessage)
    assert oversize.first_segment == b"MSH|^~\\&|R"  # for the AR's MSA-2
    # Read no further than the piece that went over the limit, and nothing after it.
    assert 100 < oversize.size <= 102 + (piece or len(stream))
    assert decoder.feed(VT + b"MSH|c" + FS + CR) == []


# --- mllp_send with the project's samples and the public ones ----------------------------------


@pytest.mark.parametrize(
    ("sample", "code", "control_id", "err_location", "err_code"),
    [
        ("spine_neurology_root_compression.hl7", "AA", "DEMO-ORU-0001", None, None),
        ("si_joint_rheumatology_sacroiliitis.hl7", "AA", "DEMO-ORU-0004", None, None),
        ("spine_preliminary.hl7", "AA", "DEMO-ORU-0009", None, None),
        ("spine_corrected.hl7", "AA", "DEMO-ORU-0010", None, None),
        ("bad_no_accession.hl7", "AE", "DEMO-ORU-0011", "OBR^1^3", "101"),
        ("bad_no_mrn.hl7", "AE", "DEMO-ORU-0012", "PID^1^3", "101"),
        ("bad_birth_date.hl7", "AE", "DEMO-ORU-0013", "PID^1^7", "102"),
        ("bad_wrong_type.hl7", "AR", "DEMO-ADT-0001", "MSH^1^9", "200"),
    ],
)
def test_mllp_send_gets_the_right_ack(
    mllp: RunningListener,
    sample: str,
    code: str,
    control_id: str,
    err_location: str | None,
    err_code: str | None,
) -> None:
    [ack] = mllp_send(HL7 / sample, mllp.port)

    parts = segments(ack)
    assert parts["MSA"][1:3] == [code, control_id]
    assert parts["MSH"][8] == ("ACK^R01^ACK" if "ORU" in control_id else "ACK^A01^ACK")
    if err_location is None:
        assert "ERR" not in parts
    else:
        assert parts["ERR"][2] == err_location
        assert parts["ERR"][3].split("^")[0] == err_code
        assert parts["ERR"][4] == "E"
    [row] = mllp.rows()
    assert row.raw == (HL7 / sample).read_bytes().rstrip(b"\r")  # `--loose` strips it
    assert wait_for_events(mllp, 1 if code == "AA" else 0)


@pytest.mark.parametrize(
    ("path", "codes", "statuses"),
    [
        # 8859/1 declared, a UTF-8 en dash inside: an order, stored, no flow
        ("dcm4che/OMI^O23-ImagingOrder.hl7", ["AA"], [InboxStatus.PROCESSED]),
        ("dcm4che/ADT^A31-UpdatePersonInfo.hl7", ["AA"], [InboxStatus.PROCESSED]),
        ("dcm4che/ORU^R01-SR.hl7", ["AA"], [InboxStatus.RECEIVED]),
        # F in OBR-24, OBR-25 empty: must not pass as final
        ("dcm4che/legacy_ORU^R01.hl7", ["AE"], [InboxStatus.ERROR]),
        # SIU^S12 is read as a specialist's booking of a referral: this one names none (SCH-26)
        ("dcm4che/SIU^S12-NewAppointmentBooking.hl7", ["AE"], [InboxStatus.ERROR]),
        ("fhir-converter/ORU-R01-01.hl7", ["AA"], [InboxStatus.RECEIVED]),
        # starts with a UTF-8 BOM, which `--loose` sends as a stray "MSH|^~\&|<BOM>" first
        (
            "fhir-converter/ORM-O01-01.hl7",
            ["AR", "AA"],
            [InboxStatus.REJECTED, InboxStatus.PROCESSED],
        ),
    ],
)
def test_mllp_send_with_public_samples(
    mllp: RunningListener, path: str, codes: list[str], statuses: list[str]
) -> None:
    acks = mllp_send(THIRD_PARTY / "hl7" / path, mllp.port)

    assert [segments(ack)["MSA"][1] for ack in acks] == codes
    assert [row.status for row in mllp.rows()] == statuses


# --- exact ACK contents ------------------------------------------------------------------------


def test_ack_fields_are_exact(mllp: RunningListener) -> None:
    [ack] = exchange(mllp, (HL7 / "bad_no_mrn.hl7").read_bytes())
    [row] = mllp.rows()

    msh, msa, err = ack.decode().split("\r")
    assert msh.split("|")[:7] == [
        "MSH", "^~\\&", "FOLLOWUP", "DEMO_SPINE_NEURO", "DEMO_RIS", "DEMO_SPINE_NEURO",
        msh.split("|")[6],
    ]  # fmt: skip
    assert msh.split("|")[8:] == ["ACK^R01^ACK", f"ACK{row.id}", "P", "2.5.1"]
    assert msa == "MSA|AE|DEMO-ORU-0012|patient identifier (MRN) is empty"
    assert err == (
        "ERR||PID^1^3|101^Required field missing^HL70357|E||||patient identifier (MRN) is empty"
    )


def test_ack_uses_the_senders_delimiters(mllp: RunningListener) -> None:
    raw = (HL7 / "bad_wrong_type.hl7").read_bytes()
    custom = raw.replace(b"|", b"#").replace(b"^", b"@")

    [ack] = exchange(mllp, custom)

    msh, msa, err = ack.decode().split("\r")
    assert msh.startswith("MSH#@~\\&#")
    assert msh.split("#")[8] == "ACK@A01@ACK"
    assert msa.split("#")[:3] == ["MSA", "AR", "DEMO-ADT-0001"]
    assert "ADT^A01 is not" in msa  # "^" is no delimiter of this sender's: not escaped
    assert err.split("#")[2:5] == ["MSH@1@9", "200@Unsupported message type@HL70357", "E"]


def test_unparseable_message_gets_the_fallback_ack(mllp: RunningListener) -> None:
    [ack] = exchange(mllp, b"this is not HL7 at all")

    msh, msa, err = ack.decode().split("\r")
    assert msh.split("|")[2] == "FOLLOWUP"
    assert msh.split("|")[8] == "ACK"
    assert msa.split("|")[:3] == ["MSA", "AE", ""]
    assert err.split("|")[3] == "100^Segment sequence error^HL70357"
    [row] = mllp.rows()
    assert (row.status, row.raw) == (InboxStatus.ERROR, b"this is not HL7 at all")


# --- duplicates --------------------------------------------------------------------------------


def test_duplicate_gets_the_same_ack_and_only_the_originals_event(
    mllp: RunningListener,
) -> None:
    raw, bad = GOOD.read_bytes(), (HL7 / "bad_birth_date.hl7").read_bytes()

    first, bad_first, again, bad_again = exchange(mllp, raw, bad, raw, bad)

    def without_time(ack: bytes) -> list[str]:
        msh, *rest = ack.decode().split("\r")
        fields = msh.split("|")
        return [*fields[:6], *fields[7:], *rest]

    assert without_time(again) == without_time(first)
    assert without_time(bad_again) == without_time(bad_first)
    # No run claimed the original: the resend emits its event again, under its id (the event
    # id derives from run_inbox_id), which Prefect drops as already seen.
    original = mllp.rows()[0].id
    assert [r.run_inbox_id for r in mllp.accepted] == [original, original]
    assert [row.status for row in mllp.rows()] == [
        InboxStatus.RECEIVED, InboxStatus.ERROR, InboxStatus.DUPLICATE, InboxStatus.DUPLICATE,
    ]  # fmt: skip


# --- framing edge cases over a raw socket ------------------------------------------------------


def test_several_messages_in_one_packet_get_their_acks_in_order(mllp: RunningListener) -> None:
    messages = [variant(GOOD.read_bytes(), n) for n in range(3)]
    with mllp.connect() as sock:
        sock.sendall(b"".join(frame(m) for m in messages))
        acks = read_acks(sock, 3)

    assert [segments(a)["MSA"][2] for a in acks] == ["LOAD-000000", "LOAD-000001", "LOAD-000002"]
    assert wait_for_events(mllp, 3)


def test_split_frames_from_a_slow_sender(mllp: RunningListener) -> None:
    data = frame(GOOD.read_bytes())
    with mllp.connect() as sock:
        for start in range(0, len(data), 97):
            sock.sendall(data[start : start + 97])
            time.sleep(0.002)
        [ack] = read_acks(sock, 1)

    assert segments(ack)["MSA"][1] == "AA"
    assert mllp.rows()[0].raw == GOOD.read_bytes()


def test_garbage_between_frames_is_logged_and_frames_around_it_are_answered(
    mllp: RunningListener, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = variant(GOOD.read_bytes(), 1), variant(GOOD.read_bytes(), 2)
    caplog.set_level(logging.WARNING, logger="followup.gateway.mllp")
    with mllp.connect() as sock:
        sock.sendall(b"\r\n" + frame(one) + b"\r\nnoise\x00\xff" + frame(two) + b"\n")
        acks = read_acks(sock, 2)
        sock.sendall(b"more noise" + FS + CR + frame(one))
        acks += read_acks(sock, 1)

    assert [segments(a)["MSA"][1:3] for a in acks] == [
        ["AA", "LOAD-000001"], ["AA", "LOAD-000002"], ["AA", "LOAD-000001"],
    ]  # fmt: skip
    assert [row.raw for row in mllp.rows()] == [one, two, one]
    assert mllp.rows()[2].status == InboxStatus.DUPLICATE
    # Counted, not quoted: "\r\nnoise\0\xff" is 9 bytes; "\n", "more noise" and FS CR are 13.
    assert [r.getMessage().split(" from ")[0] for r in caplog.records] == [
        "dropped 9 bytes outside MLLP frames", "dropped 13 bytes outside MLLP frames",
    ]  # fmt: skip


def test_frame_without_end_block_is_kept_as_an_error(mllp: RunningListener) -> None:
    raw = GOOD.read_bytes()
    with mllp.connect() as sock:
        sock.sendall(VT + raw)
        sock.shutdown(socket.SHUT_WR)  # the sender is done but still reads
        [ack] = read_acks(sock, 1)

    assert segments(ack)["MSA"][1:3] == ["AE", "DEMO-ORU-0003"]
    [row] = mllp.rows()
    assert (row.status, row.raw, row.control_id) == (InboxStatus.ERROR, raw, None)
    assert mllp.accepted == []
    # The complete resend is not a duplicate of the fragment.
    [ack] = exchange(mllp, raw)
    assert segments(ack)["MSA"][1] == "AA"


def test_disconnect_before_the_ack_keeps_the_message(mllp: RunningListener) -> None:
    raw = GOOD.read_bytes()
    with mllp.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(frame(raw))

    assert wait_for_events(mllp, 1)
    assert [row.status for row in mllp.rows()] == [InboxStatus.RECEIVED]
    # The sender, never answered, resends; a bad message after it flushes the callbacks.
    [ack, _] = exchange(mllp, raw, b"not HL7")
    assert segments(ack)["MSA"][1] == "AA"
    # The resend re-emits the unclaimed original's event, under the original's id.
    assert [r.run_inbox_id for r in mllp.accepted] == [mllp.rows()[0].id] * 2


def test_one_megabyte_report_is_stored_whole_and_refused_with_the_limit(
    mllp: RunningListener,
) -> None:
    """A megabyte frame arrives whole; its report, far over any real one and over what the
    classifier reads, is refused (AE) so the sender knows, not accepted and failed later."""
    raw = GOOD.read_bytes()
    line = b"OBX|99|TX|18782-3^Findings^LN|1|" + b"Extensive report text. " * 40 + b"||||||F\r"
    big = raw.rstrip(b"\r") + b"\r" + line * (1_100_000 // len(line))
    assert len(big) > 1_000_000

    [ack] = exchange(mllp, big)

    assert segments(ack)["MSA"][1] == "AE"
    assert "over 100000" in segments(ack)["ERR"][8]
    [row] = mllp.rows()
    assert (row.raw, row.status) == (big, InboxStatus.ERROR)


def test_latin1_and_bom(mllp: RunningListener) -> None:
    utf8 = (HL7 / "si_joint_rheumatology_sacroiliitis.hl7").read_bytes()
    latin1 = utf8.decode("utf-8").replace("UNICODE UTF-8", "8859/1").encode("latin-1")
    latin1 = latin1.replace(b"DEMO-ORU-0004", b"LATIN-1")
    bom = b"\xef\xbb\xbf" + utf8.replace(b"DEMO-ORU-0004", b"BOM-1").replace(
        b"ACC2026000104", b"ACC2026900104"
    )

    acks = exchange(mllp, latin1, bom)

    assert [segments(a)["MSA"][1:3] for a in acks] == [["AA", "LATIN-1"], ["AA", "BOM-1"]]
    settings = get_settings(database_url=mllp.database_url)
    names = [parse_stored(row, settings).patient_name for row in mllp.rows()]
    assert [(n.family, n.given) for n in names] == [("Núñez", "Sofía")] * 2


def test_frame_over_the_limit_is_refused(database_url: str) -> None:
    for listener in start_listener(database_url, mllp_max_message_bytes=2000):
        with listener.connect() as sock:
            sock.sendall(VT + b"MSH|^~\\&|" + b"x" * 5000)
            [ack] = read_acks(sock, 1)
            assert sock.recv(10) == b""  # closed

        assert segments(ack)["MSA"][1:3] == ["AR", ""]
        assert listener.rows() == []


def test_idle_connection_is_closed(database_url: str) -> None:
    for listener in start_listener(database_url, mllp_idle_timeout_seconds=0.3):
        with listener.connect() as sock:
            assert sock.recv(10) == b""


def test_stopping_logs_an_unfinished_frame(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="followup.gateway.mllp")
    with socket.socket() as sock:
        for listener in start_listener(database_url):
            sock.connect(("127.0.0.1", listener.port))
            sock.sendall(VT + GOOD.read_bytes()[:100])
            time.sleep(1)  # read by the listener before it stops (no sign of it outside)
            rows = listener.rows()

    assert rows == []
    assert [r.getMessage().split(" from ")[0] for r in caplog.records] == [
        "stopping: 101 bytes of an unfinished MLLP message"
    ]


def test_database_down_answers_ar(tmp_path: Path) -> None:
    no_schema = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    for listener in start_listener(no_schema):
        [ack] = exchange(listener, GOOD.read_bytes())

        parts = segments(ack)
        assert parts["MSA"][1:3] == ["AR", "DEMO-ORU-0003"]
        assert parts["ERR"][3] == "207^Application internal error^HL70357"
        assert listener.accepted == []


# --- concurrency -------------------------------------------------------------------------------


def test_many_connections_at_once(mllp: RunningListener) -> None:
    connections, per_connection = 16, 5
    acks: dict[int, list[bytes]] = {}

    def sender(index: int) -> None:
        messages = [
            variant(GOOD.read_bytes(), index * per_connection + n) for n in range(per_connection)
        ]
        acks[index] = exchange(mllp, *messages)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    codes = [segments(a)["MSA"][1] for index in range(connections) for a in acks[index]]
    assert codes == ["AA"] * connections * per_connection
    assert len(mllp.rows()) == connections * per_connection
    assert wait_for_events(mllp, connections * per_connection)
    assert len({r.inbox_id for r in mllp.accepted}) == connections * per_connection


# --- orders and ADT ----------------------------------------------------------------------------


@pytest.fixture
def adt_update() -> Iterator[bytes]:
    yield (
        b"MSH|^~\\&|DEMO_ADT|DEMO_SPINE_NEURO|FOLLOWUP|DEMO_SPINE_NEURO|20261104090000||"
        b"ADT^A08^ADT_A01|DEMO-ADT-0100|P|2.5.1\r"
        b"EVN|A08|20261104090000\r"
        b"PID|1||DM100103^^^DEMO^MR||Quinn^Rowan||19810622|F|||||(413) 555-0177^PRN^CP||SPA\r"
    )


def test_adt_updates_phone_and_language_without_a_flow(
    mllp: RunningListener, adt_update: bytes
) -> None:
    [_, adt_ack] = exchange(mllp, GOOD.read_bytes(), adt_update)

    assert segments(adt_ack)["MSA"][1:3] == ["AA", "DEMO-ADT-0100"]
    assert segments(adt_ack)["MSH"][8] == "ACK^A08^ACK"
    assert [row.status for row in mllp.rows()] == [InboxStatus.RECEIVED, InboxStatus.PROCESSED]
    assert len(mllp.accepted) == 1  # the result only
    with session_scope(mllp.database_url) as session:
        patient = session.exec(select(Patient).where(Patient.mrn == "DM100103")).one()
        assert (patient.phone_e164, patient.language) == ("+14135550177", "es")
