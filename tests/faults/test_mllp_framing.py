"""Issue 19, problem 7: MLLP framing, size, connection and idle limits, on real sockets.

HL7 v2 goes over 127.0.0.1 to the production MLLP listener (tests/gateway's listener, on SQLite
and PostgreSQL); the memory probe starts the listener in a process of its own and reads that
process's peak RSS. Each case prints what was sent, answered (ACK codes), stored (inbox rows by
status) and lost: messages that got neither an answer nor a row, which must be none.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from followup.gateway.mllp import READ_BYTES
from followup.settings import PROJECT_ROOT
from models.tables import InboxMessage
from tests.faults.counting import check_counts, tally
from tests.faults.messages import sample_message
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

LISTENER = "followup.gateway.mllp"


def message(number: int) -> bytes:
    """A new study's ORU^R01, MSH-10 MLLP-<number>."""
    return sample_message(
        accession=f"ACCMLLP{number:04d}", control_id=f"MLLP-{number}", mrn=f"MLLP{number}"
    )


def codes(acks: Iterable[bytes]) -> dict[str, int]:
    return tally(segments(ack)["MSA"][1] for ack in acks)


def statuses(rows: Iterable[InboxMessage]) -> dict[str, int]:
    return tally(row.status for row in rows)


def lost(sent: Iterable[bytes], acks: list[bytes], rows: list[InboxMessage]) -> int:
    """Sent messages with no ACK echoing their MSH-10 and no row holding their bytes."""
    answered = {segments(ack)["MSA"][2] for ack in acks}
    return sum(
        1
        for raw in sent
        if _control_id(raw) not in answered and not any(raw[:200] in row.raw for row in rows)
    )


def _control_id(raw: bytes) -> str:
    return raw.split(b"\r")[0].split(b"|")[9].decode()


def closed(sock: socket.socket) -> bool:
    """True when the listener ended the connection (it sends nothing more)."""
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


# --- framing ----------------------------------------------------------------------------------


def test_a_vt_inside_report_text_is_content(mllp: RunningListener) -> None:
    """Fault: an ORU^R01 whose report text holds a VT (0x0B), the MLLP start block.
    Expected: the frame is not restarted at the VT: one row holding the whole message, VT and
    head included, answered by its MSH-10."""
    raw = message(1).replace(b"Paraspinal", b"Para\x0bspinal")
    assert raw.count(VT) == 1

    acks = exchange(mllp, raw)
    rows = mllp.rows()

    check_counts(
        "19.7 VT in report text",
        {
            "sent": 1,
            "answered": codes(acks),
            "echoed": [segments(ack)["MSA"][2] for ack in acks],
            "stored": statuses(rows),
            "stored_whole": [row.raw == raw for row in rows],
            "lost": lost([raw], acks, rows),
        },
        {
            "sent": 1,
            "answered": {"AA": 1},
            "echoed": ["MLLP-1"],
            "stored": {"received": 1},
            "stored_whole": [True],
            "lost": 0,
        },
    )


def test_a_frame_ending_in_fs_without_cr_at_close_is_stored_and_refused(
    mllp: RunningListener,
) -> None:
    """Fault: a frame ending in FS (0x1C) without its CR, then the sender half-closes and
    waits for an answer.
    Expected: an AE naming the missing CR, and one error row with the message's bytes (never
    processed: its end may be missing)."""
    raw = message(2)
    with mllp.connect() as sock:
        sock.sendall(VT + raw + FS)
        sock.shutdown(socket.SHUT_WR)
        acks = read_acks(sock, 1)
    rows = mllp.rows()

    check_counts(
        "19.7 FS without CR at close",
        {
            "sent": 1,
            "answered": codes(acks),
            "names_the_cr": ["CR 0x0D" in segments(a)["MSA"][3] for a in acks],
            "stored": statuses(rows),
            "stored_whole": [row.raw == raw for row in rows],
            "lost": lost([raw], acks, rows),
        },
        {
            "sent": 1,
            "answered": {"AE": 1},
            "names_the_cr": [True],
            "stored": {"error": 1},
            "stored_whole": [True],
            "lost": 0,
        },
    )


def test_fs_followed_by_another_byte_is_a_framing_error(mllp: RunningListener) -> None:
    """Fault: a sender ending its frames with FS LF instead of FS CR, two messages pipelined
    on one connection, then a well-framed third.
    Expected: each FS LF frame is answered AE and stored once as an error (the LF is read as a
    stray byte, logged); the third is accepted: three answers in order, three rows."""
    first, second, third = message(3), message(4), message(5)
    with mllp.connect() as sock:
        sock.sendall(VT + first + FS + b"\n" + VT + second + FS + b"\n" + frame(third))
        acks = read_acks(sock, 3)
    rows = mllp.rows()

    check_counts(
        "19.7 FS then LF",
        {
            "sent": 3,
            "answered": [segments(ack)["MSA"][1:3] for ack in acks],
            "stored": statuses(rows),
            "lost": lost([first, second, third], acks, rows),
        },
        {
            "sent": 3,
            "answered": [["AE", "MLLP-3"], ["AE", "MLLP-4"], ["AA", "MLLP-5"]],
            "stored": {"error": 2, "received": 1},
            "lost": 0,
        },
    )


def test_bytes_outside_frames_are_answered_or_logged(
    mllp: RunningListener, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: a message sent without the start block (ending FS CR, as if framed), then
    garbage with no MSH ending FS CR, then a well-framed message, on one connection.
    Expected: the unframed message is answered AR by its MSH-10 and not stored; the garbage is
    logged with the peer and its byte count (not its content); the framed one is accepted."""
    unframed, framed = message(6), message(7)
    garbage = b"\x00\xffGARBAGE-WITH-NO-MSH"
    caplog.set_level(logging.WARNING, logger=LISTENER)
    with mllp.connect() as sock:
        sock.sendall(unframed + FS + CR)
        acks = read_acks(sock, 1)
        sock.sendall(garbage + FS + CR + frame(framed))
        acks += read_acks(sock, 1)
    rows = mllp.rows()
    logged = [r.getMessage() for r in caplog.records if "outside MLLP frames" in r.getMessage()]

    check_counts(
        "19.7 no start block",
        {
            "sent": 3,
            "answered": [segments(ack)["MSA"][1:3] for ack in acks],
            "stored": statuses(rows),
            "logged_with_byte_count": [
                line.startswith(f"dropped {len(garbage) + 2} bytes") for line in logged[1:]
            ],
            "content_in_logs": any("GARBAGE" in line for line in logged),
            "lost": lost([unframed, framed], acks, rows),
        },
        {
            "sent": 3,
            "answered": [["AR", "MLLP-6"], ["AA", "MLLP-7"]],
            "stored": {"received": 1},
            "logged_with_byte_count": [True],
            "content_in_logs": False,
            "lost": 0,
        },
    )


# --- limits -----------------------------------------------------------------------------------


def test_a_message_over_the_size_limit_is_refused_without_reading_it_all(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: a 2 MB frame with no end block in sight, against a 100,000-byte limit, the
    sender still writing when the limit is reached; then a normal message on a new connection.
    Expected: one AR naming the limit, echoing the MSH-10; the connection closed; reading
    stopped within one read of the limit; nothing stored; the next message accepted."""
    limit = 100_000
    raw = message(8)
    big = VT + raw + b"OBX|99|TX|||" + b"x" * 2_000_000
    caplog.set_level(logging.WARNING, logger=LISTENER)
    for listener in start_listener(database_url, mllp_max_message_bytes=limit):
        with listener.connect(timeout=60) as sock:
            sock.sendall(big)
            refused = read_acks(sock, 1)
            ended = closed(sock)
        accepted = exchange(listener, message(9))
        rows = listener.rows()
    read = _bytes_read_of_the_refused(caplog.records)

    check_counts(
        "19.7 oversize",
        {
            "sent": 2,
            "answered": [segments(ack)["MSA"][1:3] for ack in [*refused, *accepted]],
            "names_the_limit": [str(limit) in segments(ack)["MSA"][3] for ack in refused],
            "connection_closed": ended,
            "read_past_limit_within_one_read": limit < read <= limit + READ_BYTES + 1,
            "stored": statuses(rows),
        },
        {
            "sent": 2,
            "answered": [["AR", "MLLP-8"], ["AA", "MLLP-9"]],
            "names_the_limit": [True],
            "connection_closed": True,
            "read_past_limit_within_one_read": True,
            "stored": {"received": 1},
        },
        shown={"bytes_read_of_the_big_frame": read},
    )


def _bytes_read_of_the_refused(records: list[logging.LogRecord]) -> int:
    [record] = [r for r in records if "-byte limit" in r.getMessage()]
    assert isinstance(record.args, tuple) and isinstance(record.args[2], int)
    return record.args[2]


def _connect_from(port: int, address: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0))


def test_connections_beyond_the_limits_are_closed_and_logged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: connections beyond the limits: 3 in total, 2 per peer address. Two from
    127.0.0.1, a third from it, one from 127.0.0.2, one from 127.0.0.3; then one of the first
    two closes and 127.0.0.1 connects again.
    Expected: the third from 127.0.0.1 (per peer) and the one from 127.0.0.3 (total) are closed
    at once with a log line each; the others are served, the late one too."""
    caplog.set_level(logging.WARNING, logger=LISTENER)
    for listener in start_listener(
        database_url, mllp_max_connections=3, mllp_max_connections_per_peer=2
    ):

        def served(sock: socket.socket, number: int) -> list[bytes]:
            sock.sendall(frame(message(number)))
            return read_acks(sock, 1)

        first, second = (
            _connect_from(listener.port, "127.0.0.1"),
            _connect_from(listener.port, "127.0.0.1"),
        )
        acks = served(first, 10) + served(second, 11)
        with _connect_from(listener.port, "127.0.0.1") as third_same_peer:
            refused = [closed(third_same_peer)]
        other_peer = _connect_from(listener.port, "127.0.0.2")
        acks += served(other_peer, 12)
        with _connect_from(listener.port, "127.0.0.3") as over_total:
            refused.append(closed(over_total))
        first.close()
        acks += _served_once_a_slot_frees(listener.port, 13)
        for sock in (second, other_peer):
            sock.close()
        rows = listener.rows()
    refusals = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]

    check_counts(
        "19.7 connection limits",
        {
            "connections": 6,
            "served": codes(acks),
            "closed_at_once": refused,
            "refusals_logged": [
                "from 127.0.0.1 (limit 2)" in refusals[0],
                "(limit 3)" in refusals[1],
            ],
            "stored": statuses(rows),
        },
        {
            "connections": 6,
            "served": {"AA": 4},
            "closed_at_once": [True, True],
            "refusals_logged": [True, True],
            "stored": {"received": 4},
        },
    )


def _served_once_a_slot_frees(port: int, number: int, timeout: float = 10) -> list[bytes]:
    """The listener sees a closed connection a moment after the peer closes it."""
    deadline = time.monotonic() + timeout
    while True:
        with _connect_from(port, "127.0.0.1") as sock:
            try:
                sock.sendall(frame(message(number)))
                acks = read_acks(sock, 1)
            except ConnectionError:
                acks = []
        if acks or time.monotonic() > deadline:
            return acks
        time.sleep(0.05)


def test_idle_connections_are_closed_and_their_open_frame_kept(database_url: str) -> None:
    """Fault: with a 0.5 s idle timeout, a connection that sends nothing, and one that sends
    half a frame and then nothing, neither closing.
    Expected: both closed after the timeout; the half frame is answered AE and stored once as
    an error row before its connection closes."""
    raw = message(14)
    for listener in start_listener(database_url, mllp_idle_timeout_seconds=0.5):
        started = time.monotonic()
        with listener.connect() as silent, listener.connect() as half:
            half.sendall(VT + raw[: len(raw) // 2])
            acks = read_acks(half, 1)
            ended = [closed(silent), closed(half)]
        waited = time.monotonic() - started
        rows = listener.rows()

    check_counts(
        "19.7 idle",
        {
            "sent": 1,
            "answered": codes(acks),
            "closed": ended,
            "stored": statuses(rows),
            "lost": lost([raw], acks, rows),
            "waited_for_the_timeout": 0.5 <= waited < 10,
        },
        {
            "sent": 1,
            "answered": {"AE": 1},
            "closed": [True, True],
            "stored": {"error": 1},
            "lost": 0,
            "waited_for_the_timeout": True,
        },
        shown={"seconds": round(waited, 2)},
    )


def test_a_slow_peer_gets_one_row_per_frame(database_url: str) -> None:
    """Fault: a slow sender: three messages, each in ten pieces 50 ms apart, then a fourth cut
    off after five pieces, the sender half-closing (idle timeout 2 s, above the pauses).
    Expected: one row per frame, not per piece: three accepted, the cut-off one stored once as
    an error and answered AE."""
    sent = [message(n) for n in range(15, 19)]
    for listener in start_listener(database_url, mllp_idle_timeout_seconds=2):
        acks: list[bytes] = []
        pieces_sent = 0
        with listener.connect() as sock:
            for index, raw in enumerate(sent):
                data = frame(raw)
                step = len(data) // 10 + 1
                pieces = [data[i : i + step] for i in range(0, len(data), step)]
                for piece in pieces if index < 3 else pieces[:5]:
                    sock.sendall(piece)
                    pieces_sent += 1
                    time.sleep(0.05)
                if index < 3:
                    acks += read_acks(sock, 1)
            sock.shutdown(socket.SHUT_WR)
            acks += read_acks(sock, 1)
        rows = listener.rows()

    check_counts(
        "19.7 slow peer",
        {
            "sent": 4,
            "pieces_sent": pieces_sent,
            "answered": [segments(ack)["MSA"][1] for ack in acks],
            "stored": statuses(rows),
            "lost": lost(sent, acks, rows),
        },
        {
            "sent": 4,
            "pieces_sent": 35,
            "answered": ["AA", "AA", "AA", "AE"],
            "stored": {"error": 1, "received": 3},
            "lost": 0,
        },
    )


# --- memory -----------------------------------------------------------------------------------

GATEWAY = """
import asyncio, sys
from followup.gateway.mllp import MLLPListener
from followup.settings import get_settings

async def main():
    listener = MLLPListener(get_settings(), on_accepted=lambda receipt: None)
    await listener.start("127.0.0.1", 0)
    print(listener.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await listener.stop()

asyncio.run(main())
"""
RSS_BUDGET_MB = 64
PROBE_SECONDS = 120


@pytest.fixture
def gateway_process(database_url: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The MLLP listener in a process of its own, with the default limits."""
    env = {**os.environ, "DATABASE_URL": database_url}
    for name in [name for name in env if name.startswith("FOLLOWUP_MLLP_")]:
        del env[name]
    process = subprocess.Popen(
        [sys.executable, "-c", GATEWAY],
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        yield process, int(process.stdout.readline())
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _memory_kib(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        name: int(value.split()[0])
        for name, _, value in (line.partition(":") for line in lines)
        if name in ("VmRSS", "VmHWM")
    }


def test_five_30_mb_partial_frames_add_at_most_64_mb(
    gateway_process: tuple[subprocess.Popen[bytes], int], database_url: str
) -> None:
    """Fault: five connections at once, each sending a 30 MB frame that never ends, to the
    listener in its own process with its default limits (8 MiB per message).
    Expected: each is answered AR and closed; nothing of them is stored; the process's peak
    RSS grows by at most 64 MB over its RSS before (warmed up by one normal message)."""
    process, port = gateway_process
    listener = RunningListener(port=port, database_url=database_url)
    warm_up = exchange(listener, message(19))
    before = _memory_kib(process.pid)["VmRSS"]
    partial = VT + message(20).rstrip(b"\r") + b"\rOBX|99|TX|||" + b"x" * 30_000_000
    answers: dict[int, list[bytes]] = {}
    ended: dict[int, bool] = {}

    def send(index: int) -> None:
        with listener.connect(timeout=PROBE_SECONDS) as sock:
            sock.sendall(partial)
            answers[index] = read_acks(sock, 1)
            ended[index] = closed(sock)

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(index,)) for index in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PROBE_SECONDS)
    seconds = time.monotonic() - started
    added_mb = (_memory_kib(process.pid)["VmHWM"] - before) / 1024
    rows = listener.rows()

    check_counts(
        "19.7 memory probe",
        {
            "sent": 5,
            "answered": codes(a for index in sorted(answers) for a in answers[index]),
            "closed": sum(ended.values()),
            "stored": statuses(rows),
            "within_budget": added_mb <= RSS_BUDGET_MB,
            "within_time": seconds < PROBE_SECONDS,
        },
        {
            "sent": 5,
            "answered": {"AR": 5},
            "closed": 5,
            "stored": {"received": len(warm_up)},
            "within_budget": True,
            "within_time": True,
        },
        shown={"rss_added_mb": round(added_mb, 1), "seconds": round(seconds, 1)},
    )
