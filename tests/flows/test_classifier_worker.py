"""Classification in `followup classifier-worker`: the flow queues it on Prefect's task queue.

The worker is the real command in a subprocess, talking to the session's Prefect API; the flow
runs as in tests/flows/test_scan_completed.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.settings import get_current_settings
from sqlmodel import select

from followup.classifier_worker import purge_stored_results
from followup.pipeline import InboxRowClaimed
from followup.settings import PROJECT_ROOT, Settings
from models import inbox_queries
from models.db import session_scope
from models.tables import ImagingStudy, InboxMessage, InboxStatus
from models.types import utcnow
from tests.flows.conftest import receive_sample, run_sample

pytestmark = pytest.mark.prefect

FOLLOWUP = Path(sys.executable).with_name("followup")


def _classify_runs() -> list[TaskRun]:
    async def read() -> list[TaskRun]:
        async with get_client() as client:
            return await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="classify"))
            )

    return asyncio.run(read())


def _scan_runs_since(moment: datetime) -> list[UUID]:
    """The scan-completed flow runs started after `moment` (the Prefect API serves the whole
    session, whose earlier tests ran the same samples)."""

    async def read() -> list[FlowRun]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["scan-completed"])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=moment)),
            )

    return [run.id for run in asyncio.run(read())]


def _start_worker(log: Path) -> subprocess.Popen[bytes]:
    """`followup classifier-worker` against this session's Prefect API, once subscribed."""
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [FOLLOWUP, "classifier-worker", "--stop-with-parent"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while b"Subscribing to runs of task(s): classify" not in log.read_bytes():
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise AssertionError(log.read_text())
        time.sleep(0.2)
    return worker


@pytest.fixture
def classifier_worker(settings: Settings, tmp_path: Path) -> Iterator[Path]:
    """A running classifier worker; yields its log."""
    log = tmp_path / "classifier.log"
    worker = _start_worker(log)
    try:
        yield log
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def _result_storage() -> Path:
    # The worker's, since it inherits this process's PREFECT_HOME (tests/conftest.py).
    return Path(get_current_settings().results.local_storage_path).expanduser()


@pytest.mark.usefixtures("prefect_api")
def test_the_worker_purges_stored_results_past_their_retention(tmp_path: Path) -> None:
    storage = _result_storage()
    storage.mkdir(parents=True, exist_ok=True)
    old, recent = storage / "old-classify-result", storage / "recent-classify-result"
    old.write_text("{}")
    recent.write_text("{}")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))

    worker = _start_worker(tmp_path / "classifier.log")
    worker.terminate()
    worker.wait(timeout=30)

    assert (
        "purged 1 stored classify results older than 24 h"
        in (tmp_path / "classifier.log").read_text()
    )
    assert not old.exists()
    assert recent.exists()


def test_purging_keeps_what_is_within_the_retention(tmp_path: Path) -> None:
    now = time.time()
    for name, age_hours in (("a", 30.0), ("b", 23.0), ("c", 0.0)):
        path = tmp_path / name
        path.write_text("{}")
        os.utime(path, (now - age_hours * 3600, now - age_hours * 3600))
    (tmp_path / "folder").mkdir()

    purged = purge_stored_results(tmp_path, older_than_seconds=24 * 3600, now=now)

    assert purged == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c", "folder"]
    assert purge_stored_results(tmp_path / "missing", older_than_seconds=1, now=now) == 0


@pytest.mark.usefixtures("prefect_api")
def test_the_worker_stops_when_its_parent_goes(tmp_path: Path) -> None:
    # What the kernel does to the pipe when `followup serve` ends, even by SIGKILL.
    worker = _start_worker(tmp_path / "classifier.log")
    assert worker.stdin is not None
    worker.stdin.close()
    try:
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()


@pytest.mark.parametrize(
    ("why", "modules"),
    [
        ("the classifier worker classifies", ("spacy", "medspacy", "thinc", "nltk")),
        # Imported by what sends texts and parses FHIR results or calendars, never by a run
        # over an HL7 v2 result; each cost the process 40-70 ms before its first task.
        ("runs queue texts, they do not send them", ("twilio", "requests")),
        ("HL7 v2 results are most of them", ("fhir.resources",)),
    ],
)
def test_the_flow_run_process_loads_only_what_a_run_needs(
    why: str, modules: tuple[str, ...]
) -> None:
    # What a runner's flow-run process does before the first task: load the entrypoint.
    code = (
        "import sys\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "load_flow_from_entrypoint('flows/scan_completed.py:scan_completed')\n"
        f"print(sorted(m for m in {modules!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]", why


def test_the_worker_classifies_and_the_run_books(
    settings: Settings, classifier_worker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOLLOWUP_CLASSIFIER_WORKER", "true")
    before = {run.id for run in _classify_runs()}
    started = datetime.now(UTC)
    stored_before = set(_result_storage().glob("*"))

    summary = run_sample(settings, "spine_neurology_root_compression.hl7")

    assert summary["decision"]["referrals"] == ["neurology"]
    assert summary["appointment"] is not None
    [queued] = [run for run in _classify_runs() if run.id not in before]
    assert queued.state_type == StateType.COMPLETED
    # Run by the worker, and listed in the UI among the tasks of the flow run that queued it.
    worker_log = classifier_worker.read_text()
    assert f"Received task run: {queued.id}" in worker_log
    assert " ERROR " not in worker_log
    assert [queued.flow_run_id] == _scan_runs_since(started)
    # Its result is a file (Prefect drops the parameters once the worker has read them) in the
    # folder the worker purges.
    [result] = {p for p in _result_storage().glob("*") if p.is_file()} - stored_before
    assert json.loads(result.read_bytes())["metadata"]["storage_key"] == str(result)


def test_a_run_refused_its_row_writes_nothing_though_the_worker_classified_it(
    settings: Settings, classifier_worker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classification is queued before load-scan claims the row: a run refused the row (a live
    run holds it) leaves only a wasted classification, and the row to the run holding it."""
    from flows.scan_completed import scan_completed

    monkeypatch.setenv("FOLLOWUP_CLASSIFIER_WORKER", "true")
    before = {run.id for run in _classify_runs()}
    accepted = receive_sample(settings, "spine_neurology_root_compression.hl7")
    live_claim = utcnow()
    with session_scope(settings.database_url) as session:
        assert inbox_queries.claim_message(
            session=session, inbox_id=accepted.inbox_id, now=live_claim, stale_before=live_claim
        )

    with pytest.raises(InboxRowClaimed):
        asyncio.run(scan_completed(inbox_id=accepted.inbox_id, accession=accepted.accession))

    deadline = time.monotonic() + 60
    while not (queued := [run for run in _classify_runs() if run.id not in before]) or (
        queued[0].state_type != StateType.COMPLETED
    ):
        assert time.monotonic() < deadline, queued
        time.sleep(0.5)
    assert len(queued) == 1
    with session_scope(settings.database_url) as session:
        row = session.get_one(InboxMessage, accepted.inbox_id)
        assert (row.status, row.claimed_at, row.error) == (
            InboxStatus.PROCESSING,
            live_claim,
            None,
        )
        studies = select(ImagingStudy).where(ImagingStudy.accession == accepted.accession)
        assert session.exec(studies).all() == []


def test_without_a_worker_the_run_cancels_the_queued_task_and_classifies_itself(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOLLOWUP_CLASSIFIER_WORKER", "true")
    monkeypatch.setenv("FOLLOWUP_CLASSIFIER_WAIT_SECONDS", "1")
    before = {run.id for run in _classify_runs()}
    started = datetime.now(UTC)

    summary = run_sample(settings, "spine_neurology_root_compression.hl7")

    assert summary["decision"]["referrals"] == ["neurology"]
    assert summary["appointment"] is not None
    new = [run for run in _classify_runs() if run.id not in before]
    # The queued run, cancelled, and the one the flow ran itself.
    assert sorted(run.state_type.value for run in new if run.state_type) == [
        "CANCELLED",
        "COMPLETED",
    ]
    cancelled = next(run for run in new if run.state_type == StateType.CANCELLED)
    in_the_run = next(run for run in new if run.state_type == StateType.COMPLETED)
    [scan_run] = _scan_runs_since(started)
    assert cancelled.flow_run_id == in_the_run.flow_run_id == scan_run


class _LateFuture:
    """A queued run whose completion the waiter misses: each wait times out until `answers`."""

    def __init__(self, answers_after: int) -> None:
        self.calls: list[float] = []
        self.answers_after = answers_after

    async def result_async(self, timeout: float) -> str:
        self.calls.append(timeout)
        if len(self.calls) <= self.answers_after:
            await asyncio.sleep(timeout)
            raise TimeoutError
        return "decision"


def test_a_missed_completion_costs_one_poll_not_the_whole_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows import scan_completed

    monkeypatch.setattr(scan_completed, "RESULT_POLL_SECONDS", 0.05)
    late = _LateFuture(answers_after=2)

    assert asyncio.run(scan_completed._worker_result(late, 30)) == "decision"  # type: ignore[arg-type]
    assert late.calls == [0.05, 0.05, 0.05]


def test_the_wait_ends_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import scan_completed

    monkeypatch.setattr(scan_completed, "RESULT_POLL_SECONDS", 0.05)
    never = _LateFuture(answers_after=1_000)

    with pytest.raises(TimeoutError):
        asyncio.run(scan_completed._worker_result(never, 0.2))  # type: ignore[arg-type]
    assert 3 <= len(never.calls) <= 6


class _StatelessFuture:
    """A queued run that Prefect's server first shows without a state (the worker running it)."""

    def __init__(self, stateless_reads: int, error: RuntimeError | None = None) -> None:
        self.calls = 0
        self.stateless_reads = stateless_reads
        self.error = error
        self.task_run_id = "run"

    async def result_async(self, timeout: float) -> str:
        self.calls += 1
        if self.calls <= self.stateless_reads:
            raise RuntimeError("Task run run has no state which means it hasn't started yet.")
        if self.error is not None:
            raise self.error
        return "decision"


def test_a_run_read_without_a_state_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import scan_completed

    async def not_final(_task_run_id: object) -> bool:
        return False

    monkeypatch.setattr(scan_completed, "_has_final_state", not_final)
    stateless = _StatelessFuture(stateless_reads=2)

    assert asyncio.run(scan_completed._worker_result(stateless, 30)) == "decision"  # type: ignore[arg-type]
    assert stateless.calls == 3


def test_a_runtime_error_of_the_classification_itself_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows import scan_completed

    async def final(_task_run_id: object) -> bool:
        return True

    monkeypatch.setattr(scan_completed, "_has_final_state", final)
    failed = _StatelessFuture(stateless_reads=0, error=RuntimeError("the pipeline broke"))

    with pytest.raises(RuntimeError, match="the pipeline broke"):
        asyncio.run(scan_completed._worker_result(failed, 30))  # type: ignore[arg-type]
    assert failed.calls == 1
