"""Faults of the running engine (resends, a killed run, a database outage, a crash mid-flow),
counted end to end.

One engine for the module (tests/faults/engine.py): a real Prefect server and `followup serve`
as subprocesses, messages in over real MLLP sockets, the scan-completed runs started by the
deployment's event trigger and executed by the served runner. Each case uses its own
accessions and patients and counts only those: ACKs, inbox rows, scan-completed flow runs (from
the Prefect API), appointments and outbox messages.

A booked routine follow-up is 7–14 days ahead, so its set of messages is one confirmation and
the 3-day and 1-day reminders.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from tests.faults.counting import check_counts, inbox_statuses, outcome_counts, tally
from tests.faults.engine import LEASE_SECONDS, RUN_SECONDS, Engine, wait_until
from tests.faults.inject.sitecustomize import KILL_BEFORE_ACK, KILL_WORKER
from tests.faults.messages import sample_message
from tests.gateway.conftest import segments

pytestmark = pytest.mark.prefect

ONE_SET = {"confirmation": 1, "reminder": 2}
FINAL_RUN_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DONE_STATUSES = {"processed", "duplicate", "error"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = Engine(tmp_path_factory.mktemp("engine"))
    engine.start_prefect()
    try:
        engine.seed()  # while the Prefect server starts
        engine.wait_for_prefect()
        engine.start_serve()
        yield engine
    finally:
        engine.stop_serve()
        engine.stop_prefect()


def ack_code(ack: bytes | None) -> str:
    return segments(ack)["MSA"][1] if ack else "none"


def settle(engine: Engine, accessions: list[str], *, runs: int = 1) -> None:
    """Wait until every row of these accessions is done and `runs` runs each have ended."""

    def done() -> bool:
        assert engine.serve is not None and engine.serve.poll() is None, engine.log_tail()
        if set(inbox_statuses(engine.database_url, accessions)) - DONE_STATUSES:
            return False
        states = [engine.run_states(f"scan-{accession}") for accession in accessions]
        return all(len(s) >= runs and set(s) <= FINAL_RUN_STATES for s in states)

    wait_until(done, RUN_SECONDS, f"the runs of {accessions}")


def counted(engine: Engine, accessions: list[str], acks: list[bytes | None]) -> dict[str, object]:
    return {
        "acks": tally(ack_code(ack) for ack in acks),
        **outcome_counts(engine.database_url, accessions),
        "flow_runs": tally(s for a in accessions for s in engine.run_states(f"scan-{a}")),
    }


def test_the_same_oru_sent_three_times_is_processed_once(engine: Engine) -> None:
    """Fault: the RIS sends one ORU^R01 three times (the same bytes, each on a new MLLP
    connection, as a sender resending after lost ACKs does).
    Expected: three AA ACKs, all answering as the first row; one row processed and two
    duplicates, one flow run, one appointment, one set of messages."""
    accession = "FLT1000001"
    message = sample_message(accession=accession, control_id="FLT-1-1", mrn="FLT000001")

    acks = [engine.send(message) for _ in range(3)]
    settle(engine, [accession])

    # Every answer is the first row's ACK (MSH-10 "ACK<row id>"), echoing the message's MSH-10.
    assert len({segments(ack)["MSH"][9] for ack in acks if ack}) == 1
    assert {segments(ack)["MSA"][2] for ack in acks if ack} == {"FLT-1-1"}
    check_counts(
        "1 same ORU x3",
        counted(engine, [accession], acks),
        {
            "acks": {"AA": 3},
            "inbox": {"duplicate": 2, "processed": 1},
            "appointments": 1,
            "messages": ONE_SET,
            "flow_runs": {"COMPLETED": 1},
        },
    )


def test_gateway_killed_after_commit_before_ack_processes_the_resend_once(
    engine: Engine,
) -> None:
    """Fault: the gateway process is SIGKILLed after the inbox row is committed and before the
    ACK is written (tests/faults/inject); the sender gets no ACK and resends to the restarted
    gateway.
    Expected: the first send ends without an ACK, the gateway dies with SIGKILL; the resend is
    answered AA as the stored row; sweep-inbox submits the row no event announced; one row
    processed and one duplicate, one flow run, one appointment, one set of messages."""
    accession, control_id = "FLT2000001", f"{KILL_BEFORE_ACK}-2"
    message = sample_message(accession=accession, control_id=control_id, mrn="FLT000002")
    assert engine.serve is not None

    first = engine.send(message)
    exit_code = engine.serve.wait(timeout=60)
    stored = outcome_counts(engine.database_url, [accession])
    engine.start_serve()
    resend = engine.send(message)
    engine.sweep()
    settle(engine, [accession])

    assert resend is not None and segments(resend)["MSA"][1:3] == ["AA", control_id]
    check_counts(
        "2 killed before ACK, after kill",
        {"gateway_exit": exit_code, "ack": ack_code(first), **stored},
        {
            "gateway_exit": -signal.SIGKILL,
            "ack": "none",
            "inbox": {"received": 1},
            "appointments": 0,
            "messages": {},
        },
    )
    check_counts(
        "2 killed before ACK",
        counted(engine, [accession], [first, resend]),
        {
            "acks": {"AA": 1, "none": 1},
            "inbox": {"duplicate": 1, "processed": 1},
            "appointments": 1,
            "messages": ONE_SET,
            "flow_runs": {"COMPLETED": 1},
        },
    )


def test_prefect_server_down_during_ingest_then_the_inbox_drains(engine: Engine) -> None:
    """Fault: the Prefect server is stopped while three ORU^R01 arrive, and started again on
    the same port and database afterwards (the events emitted meanwhile are lost).
    Expected: the gateway answers all three AA while Prefect is down; after the restart
    sweep-inbox re-submits them and each is processed once: three rows processed, three
    appointments, three sets of messages (the flow runs are shown: see the open defect below)."""
    accessions = [f"FLT300000{n}" for n in (1, 2, 3)]
    messages = [
        sample_message(accession=a, control_id=f"FLT-3-{n}", mrn=f"FLT00003{n}")
        for n, a in enumerate(accessions)
    ]

    engine.stop_prefect()
    acks = [engine.send(message) for message in messages]
    engine.start_prefect()
    engine.wait_for_prefect()
    engine.sweep()
    settle(engine, accessions)

    counts = counted(engine, accessions, acks)
    # Open defect: Prefect's client resends the events it never saw confirmed once the server
    # is back, and a resend that lands just before sweep-inbox's marker of the row's event id
    # still starts a run beside the sweep's. That run finds its row processed and ends without
    # work, so the runs are shown, not held to 3; the work is still held to exactly once.
    runs = counts.pop("flow_runs")
    check_counts(
        "3 Prefect down",
        counts,
        {
            "acks": {"AA": 3},
            "inbox": {"processed": 3},
            "appointments": 3,
            "messages": {kind: 3 * n for kind, n in ONE_SET.items()},
        },
        shown={"flow_runs": runs},
    )


def test_worker_killed_mid_flow_the_retry_books_and_texts_once(engine: Engine) -> None:
    """Fault: the flow-run process is SIGKILLed after the follow-up was booked and committed,
    before the reminders were stored (tests/faults/inject).
    Expected: that run ends CRASHED with its row still `processing`, one appointment and no
    messages; once the row's claim is older than the lease, sweep-inbox gives it back and a
    new run finishes: one row processed, one crashed and one completed run, still one
    appointment, one set of messages."""
    accession = f"{KILL_WORKER}5"
    message = sample_message(accession=accession, control_id="FLT-5-1", mrn="FLT000005")

    ack = engine.send(message)
    wait_until(
        lambda: engine.run_states(f"scan-{accession}") == ["CRASHED"],
        RUN_SECONDS,
        "the killed run to be marked crashed",
    )
    after_kill = outcome_counts(engine.database_url, [accession])
    time.sleep(LEASE_SECONDS)  # until the dead run's claim on the row is past its lease
    engine.sweep()
    settle(engine, [accession], runs=2)

    check_counts(
        "5 worker killed, after kill",
        after_kill,
        {"inbox": {"processing": 1}, "appointments": 1, "messages": {}},
    )
    check_counts(
        "5 worker killed",
        counted(engine, [accession], [ack]),
        {
            "acks": {"AA": 1},
            "inbox": {"processed": 1},
            "appointments": 1,
            "messages": ONE_SET,
            "flow_runs": {"COMPLETED": 1, "CRASHED": 1},
        },
    )
