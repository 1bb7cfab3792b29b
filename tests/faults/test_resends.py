"""Fault: resends at the gateway alone: copies of one ORU^R01 arriving at the same moment.

tests/faults/test_engine.py sends the same message three times, one after the other, through
the whole engine. Here ten copies arrive at once on ten MLLP connections to the production
listener, on SQLite and PostgreSQL: the duplicate check must see a copy committed by another
connection a moment before, or two flow runs start for one message.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import event

from models.tables import InboxMessage
from tests.faults.counting import check_counts, tally
from tests.faults.messages import sample_message
from tests.gateway.conftest import RunningListener, frame, read_acks, segments

COPIES = 10


def test_copies_arriving_at_once_are_accepted_once(mllp: RunningListener) -> None:
    """Fault: ten copies of one ORU^R01 (same bytes), each on its own connection, released
    together by a barrier.
    Expected: ten AA ACKs; one row accepted and nine duplicates of it; one event emitted."""
    message = sample_message(accession="ACCCOPY01", control_id="COPY-1", mrn="COPY1")
    start = threading.Barrier(COPIES)

    def send() -> bytes:
        with mllp.connect() as sock:
            start.wait(timeout=30)
            sock.sendall(frame(message))
            [ack] = read_acks(sock, 1)
            return ack

    with ThreadPoolExecutor(COPIES) as pool:
        acks = list(pool.map(lambda _: send(), range(COPIES)))
    rows = mllp.rows()
    originals = {row.duplicate_of_id for row in rows if row.duplicate_of_id}

    check_counts(
        "1 copies at once",
        {
            "acks": tally(segments(ack)["MSA"][1] for ack in acks),
            "inbox": tally(row.status for row in rows),
            "duplicates_point_to": len(originals),
            "events": len({receipt.run_inbox_id for receipt in mllp.accepted}),
        },
        {
            "acks": {"AA": COPIES},
            "inbox": {"duplicate": COPIES - 1, "received": 1},
            "duplicates_point_to": 1,
            "events": 1,
        },
    )


def test_a_copy_arriving_while_the_first_is_being_stored_is_a_duplicate(
    mllp: RunningListener,
) -> None:
    """Fault: the first copy's transaction stays open between its INSERT and its COMMIT (a slow
    disk, a busy database) while a second copy arrives on another connection (the RIS
    retrying on a new connection, or a second gateway host behind the load balancer). A
    test-only SQLAlchemy event holds it there until the second copy is answered (2 s at most:
    SQLite's single gateway writer cannot answer it meanwhile).
    Expected: two AA; one row accepted and one duplicate of it; one event."""
    message = sample_message(accession="ACCCOPY02", control_id="COPY-2", mrn="COPY2")
    first_inserted, second_answered = threading.Event(), threading.Event()

    def hold_the_first(mapper: object, connection: object, row: InboxMessage) -> None:
        if not first_inserted.is_set():
            first_inserted.set()
            second_answered.wait(timeout=2)

    def send() -> bytes:
        with mllp.connect() as sock:
            sock.sendall(frame(message))
            [ack] = read_acks(sock, 1)
            return ack

    event.listen(InboxMessage, "after_insert", hold_the_first)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(send)
            assert first_inserted.wait(timeout=30)
            second = send()
            second_answered.set()
            acks = [first.result(timeout=30), second]
    finally:
        event.remove(InboxMessage, "after_insert", hold_the_first)
    rows = mllp.rows()

    check_counts(
        "1 copy during the first's commit",
        {
            "acks": tally(segments(ack)["MSA"][1] for ack in acks),
            "inbox": tally(row.status for row in rows),
            "events": len({receipt.run_inbox_id for receipt in mllp.accepted}),
        },
        {"acks": {"AA": 2}, "inbox": {"duplicate": 1, "received": 1}, "events": 1},
    )
