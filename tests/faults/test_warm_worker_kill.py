"""The warm worker SIGKILLed in the middle of a burst of scans (issue 22).

One engine as tests/faults/engine.py runs it: a real Prefect server and `followup serve`, whose
scan-completed runs execute inside its `followup warm-worker` subprocess. A burst of ORU^R01
arrives over MLLP; one of them (accession KILLWORKER…, tests/faults/inject) kills the worker
process after its follow-up was booked and committed, before its reminders, with the other
scans of the burst in flight or waiting in the same process. `followup serve` starts a new
worker, which marks the dead one's runs Crashed (or runs again those that had done nothing);
sweep-inbox hands the rows of crashed runs to new runs once their claim is past the lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.counting import check_counts, inbox_statuses, outcome_counts, tally
from tests.faults.engine import LEASE_SECONDS, RUN_SECONDS, Engine, wait_until
from tests.faults.inject.sitecustomize import KILL_WORKER
from tests.faults.messages import sample_message
from tests.faults.test_engine import DONE_STATUSES, ONE_SET, ack_code, settle

pytestmark = pytest.mark.prefect

BURST = 16
KILLED_AT = 5  # the sixth scan of the burst kills the worker
UNCLAIMED_AFTER_SECONDS = 30


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = Engine(tmp_path_factory.mktemp("engine"))
    engine.start_prefect()
    try:
        engine.seed()
        engine.wait_for_prefect()
        engine.start_serve()
        yield engine
    finally:
        engine.stop_serve()
        engine.stop_prefect()


def warm_worker_pids(parent: int) -> set[int]:
    """The `followup warm-worker` children of `followup serve`."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # the process ended while it was read
        if int(fields[1]) == parent and b"warm-worker" in command:
            pids.add(int(stat.parent.name))
    return pids


def test_worker_killed_mid_burst_every_scan_is_processed_once(engine: Engine) -> None:
    """Fault: the warm worker is SIGKILLed while it runs a burst of 16 scans.
    Expected: 16 AA; every row processed once (16 appointments, 16 sets of messages); the
    killed scan's run Crashed and a second run completed it; each accession has exactly one
    completed run; `followup serve` replaced the worker and stayed up."""
    assert engine.serve is not None
    accessions = [
        f"{KILL_WORKER}W{n:02d}" if n == KILLED_AT else f"FLTW00{n:02d}" for n in range(BURST)
    ]
    [first_worker] = warm_worker_pids(engine.serve.pid)

    acks = [
        engine.send(sample_message(accession=a, control_id=f"FLT-W-{n}", mrn=f"FLW{n:06d}"))
        for n, a in enumerate(accessions)
    ]
    wait_until(
        lambda: warm_worker_pids(engine.serve.pid) - {first_worker} != set(),  # type: ignore[union-attr]
        RUN_SECONDS,
        "serve to start a new warm worker",
    )
    # The new worker reaps the dead one's runs once its heartbeat is stale (30 s); rows of
    # crashed runs go back at the next sweep after the lease.
    # Rows never claimed are swept only once older than the trigger's lag in creating the
    # burst's runs, as in production (120 s): a sweep that creates a row's run before the
    # trigger has created its own adds a second, idle run (the open defect of issue 22).
    deadline = time.monotonic() + RUN_SECONDS
    while set(inbox_statuses(engine.database_url, accessions)) - DONE_STATUSES:
        assert time.monotonic() < deadline, {a: engine.run_states(f"scan-{a}") for a in accessions}
        time.sleep(LEASE_SECONDS)
        engine.sweep(older_than_seconds=UNCLAIMED_AFTER_SECONDS)
    settle(engine, accessions)

    runs = {a: tally(engine.run_states(f"scan-{a}")) for a in accessions}
    crashed = sum(states.get("CRASHED", 0) for states in runs.values())
    check_counts(
        "W warm worker killed mid-burst",
        {
            "acks": tally(ack_code(ack) for ack in acks),
            **outcome_counts(engine.database_url, accessions),
            "completed_runs_per_scan": tally(s.get("COMPLETED", 0) for s in runs.values()),
            "killed_scan_runs": runs[accessions[KILLED_AT]],
            "other_states": sorted(
                {s for states in runs.values() for s in states} - {"COMPLETED", "CRASHED"}
            ),
            "serve_up": engine.serve.poll() is None,
        },
        {
            "acks": {"AA": BURST},
            "inbox": {"processed": BURST},
            "appointments": BURST,
            "messages": {kind: BURST * n for kind, n in ONE_SET.items()},
            "completed_runs_per_scan": {"1": BURST},
            "killed_scan_runs": {"COMPLETED": 1, "CRASHED": 1},
            "other_states": [],
            "serve_up": True,
        },
        shown={
            "crashed_runs": crashed,
            "creators_of_scans_with_two_runs": {
                a: engine.run_creators(f"scan-{a}")
                for a, states in runs.items()
                if sum(states.values()) > 1 and a != accessions[KILLED_AT]
            },
        },
    )
