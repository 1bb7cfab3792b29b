"""`followup warm-worker` against a real Prefect server: deployment flow runs executed inside
the worker process, with the crash, cancel, timeout and concurrency semantics of a process
per run (followup/warm_worker.py).

Each test deploys to a work pool of its own and starts the worker as an operator does, as a
subprocess of `followup warm-worker`, so a test can SIGKILL it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import prefect
import pytest
from prefect import Flow, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelling
from sqlmodel import select

from followup.settings import Settings
from followup.warm_worker import WORKER_NAME_LABEL, reap_orphaned_runs
from models.db import session_scope
from models.tables import Appointment, OutboundMessage
from tests.flows.conftest import receive_sample

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_api")]

ROOT = Path(__file__).resolve().parents[2]
FOLLOWUP = str(Path(sys.executable).with_name("followup"))
PREFECT = str(Path(sys.executable).with_name("prefect"))
WAIT_SECONDS = 120  # a loaded 2-core machine; every wait ends as soon as its condition holds


def test_the_locked_prefect_is_the_one_the_warm_worker_was_built_on() -> None:
    """The worker relies on BaseWorker's submission (PENDING, then the `prefect.worker.name`
    label, then `run`), on `run_flow` taking an existing flow run, on the flow engine
    leaving SIGTERM alone outside the main thread, and on `prefect worker start` finding
    worker types through `prefect.collections` entry points and constructing them with
    BaseWorker's arguments; the tests below check each against this version. A new Prefect
    needs them to pass again before the pin moves."""
    assert prefect.__version__ == "3.9.1"


@contextmanager
def warm_worker(
    pool: str, database_url: str | None = None, *, command: list[str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The worker as a subprocess, `followup warm-worker` unless `command` says otherwise."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    process = subprocess.Popen(
        command or [FOLLOWUP, "warm-worker", "--pool", pool],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_prefects_worker_lookup_finds_the_warm_worker_through_the_entry_point(
    tmp_path: Path,
) -> None:
    """The lookup `prefect worker start --type` makes, in an interpreter that has imported
    nothing of this project: the `prefect.collections` entry point (pyproject.toml) loads it."""
    lookup = (
        "from prefect.workers.base import BaseWorker\n"
        "found = BaseWorker.get_worker_class_from_type('followup-warm')\n"
        "print(found.__module__, found.__qualname__)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", lookup], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == ["followup.warm_worker", "WarmWorker"]


def test_prefect_worker_start_runs_a_deployment_flow_run_in_the_warm_worker() -> None:
    from tests.flows.warm_flows import quick

    pool = new_pool()
    deployment_id = asyncio.run(deploy(quick, pool))
    command = [PREFECT, "worker", "start", "--pool", pool, "--type", "followup-warm"]

    with warm_worker(pool, command=command):
        flow_run = asyncio.run(start_run(deployment_id))
        done = wait_for(flow_run.id, in_state(StateType.COMPLETED), "the run to complete")

    # The warm worker's own identifier: the run went through WarmWorker.run, in its process.
    worker = done.labels[WORKER_NAME_LABEL]
    assert done.infrastructure_pid == f"{worker}:{flow_run.id}"


def new_pool() -> str:
    return f"warm-test-{uuid.uuid4().hex[:8]}"


async def deploy(
    flow: Flow[..., Any], pool: str, *, name: str | None = None, **options: Any
) -> uuid.UUID:
    from followup.warm_worker import ensure_pool

    async with get_client() as client:
        await ensure_pool(client, pool)
    deployment = await flow.ato_deployment(name=name or pool, work_pool_name=pool, **options)
    return await deployment.aapply()


async def start_run(deployment_id: uuid.UUID, **parameters: Any) -> FlowRun:
    async with get_client() as client:
        return await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)


async def read_run(flow_run_id: uuid.UUID) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def wait_for(flow_run_id: uuid.UUID, done: Callable[[FlowRun], bool], what: str) -> FlowRun:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        flow_run = asyncio.run(read_run(flow_run_id))
        if done(flow_run):
            return flow_run
        assert time.monotonic() < deadline, f"{what}: still {flow_run.state_type}"
        time.sleep(0.5)


def in_state(*types: StateType) -> Callable[[FlowRun], bool]:
    return lambda flow_run: flow_run.state_type in types


def test_a_scan_runs_as_its_own_named_tagged_flow_run_inside_the_worker(
    settings: Settings,
) -> None:
    from flows.scan_completed import scan_completed

    pool = new_pool()
    deployment_id = asyncio.run(deploy(scan_completed, pool, tags=["followup"]))
    accepted = receive_sample(settings, "spine_neurology_root_compression.hl7")

    with warm_worker(pool, settings.database_url) as worker:
        flow_run = asyncio.run(
            start_run(deployment_id, inbox_id=accepted.inbox_id, accession=accepted.accession)
        )
        done = wait_for(flow_run.id, in_state(StateType.COMPLETED, StateType.FAILED), "the scan")

        async def task_run_names() -> list[str]:
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

            async with get_client() as client:
                task_runs = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
                )
            return sorted(task_run.name.rsplit("-", 1)[0] for task_run in task_runs)

        names = asyncio.run(task_run_names())
        assert worker.poll() is None

    assert done.state_type == StateType.COMPLETED
    assert done.name == f"scan-{accepted.accession}"
    assert {"followup", "route:neurology", "urgency:routine"} <= set(done.tags)
    # Given by Prefect's BaseWorker when it submits the run: what the reaper goes by.
    assert str(done.labels[WORKER_NAME_LABEL]).startswith("warm-")
    assert names == ["book-and-finish", "decide", "load-scan"]
    with session_scope(settings.database_url) as session:
        assert len(session.exec(select(Appointment)).all()) == 1
        kinds = sorted(m.kind for m in session.exec(select(OutboundMessage)).all())
    assert kinds == ["confirmation", "reminder", "reminder"]


def test_a_killed_workers_run_is_marked_crashed_and_run_again_by_the_next_worker() -> None:
    """The run had completed no task (for a scan: had not claimed its row), so it is
    scheduled again, with the death recorded in that state, and the next worker runs it. It
    never passes through a finished state, where sweep-inbox would see its row unheld."""
    from tests.flows.warm_flows import wait

    pool = new_pool()
    deployment_id = asyncio.run(deploy(wait, pool))

    with warm_worker(pool) as first:
        flow_run = asyncio.run(start_run(deployment_id))
        running = wait_for(flow_run.id, in_state(StateType.RUNNING), "the run to start")
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = time.monotonic()
    dead_worker = str(running.labels[WORKER_NAME_LABEL])
    with warm_worker(pool):
        rerun = wait_for(
            flow_run.id,
            lambda run: (
                run.state_type == StateType.RUNNING
                and run.labels.get(WORKER_NAME_LABEL) != dead_worker
            ),
            "the run to be reaped and run again",
        )
        reaped_after = time.monotonic() - killed_at

        async def states() -> list[tuple[str, str]]:
            async with get_client() as client:
                history = await client.read_flow_run_states(flow_run.id)
            return [(state.name or "", state.message or "") for state in history]

        history = asyncio.run(states())

    # The dead worker's heartbeat goes stale after 30 s; the next reaping round follows.
    assert reaped_after < 60
    assert rerun.run_count == 2
    rescheduled = [message for name, message in history if name == "AwaitingRetry"]
    assert len(rescheduled) == 1 and dead_worker in rescheduled[0]
    assert "Crashed" not in [name for name, _ in history]


def test_cancel_stops_a_running_run_and_the_worker_goes_on() -> None:
    from tests.flows.warm_flows import quick, wait

    pool = new_pool()
    waiting = asyncio.run(deploy(wait, pool))
    quick_deployment = asyncio.run(deploy(quick, pool, name=f"{pool}-quick"))

    with warm_worker(pool) as worker:
        flow_run = asyncio.run(start_run(waiting))
        wait_for(flow_run.id, in_state(StateType.RUNNING), "the run to start")

        async def cancel() -> None:
            async with get_client() as client:
                await client.set_flow_run_state(flow_run.id, Cancelling())

        asyncio.run(cancel())
        cancelled = wait_for(flow_run.id, in_state(StateType.CANCELLED), "the cancellation")
        after = asyncio.run(start_run(quick_deployment))
        completed = wait_for(after.id, in_state(StateType.COMPLETED), "the next run")
        assert worker.poll() is None

    assert cancelled.state_type == StateType.CANCELLED
    assert completed.state_type == StateType.COMPLETED


def test_a_hung_run_times_out_and_the_worker_goes_on() -> None:
    from tests.flows.warm_flows import hang, quick

    pool = new_pool()
    hanging = asyncio.run(deploy(hang, pool))
    quick_deployment = asyncio.run(deploy(quick, pool, name=f"{pool}-quick"))

    with warm_worker(pool) as worker:
        flow_run = asyncio.run(start_run(hanging))
        timed_out = wait_for(flow_run.id, in_state(StateType.FAILED), "the timeout")
        after = asyncio.run(start_run(quick_deployment))
        completed = wait_for(after.id, in_state(StateType.COMPLETED), "the next run")
        assert worker.poll() is None

    assert timed_out.state is not None and timed_out.state.name == "TimedOut"
    assert completed.state_type == StateType.COMPLETED


def test_the_deployment_concurrency_limit_holds_in_one_worker() -> None:
    from tests.flows.warm_flows import wait

    pool = new_pool()
    deployment_id = asyncio.run(deploy(wait, pool, concurrency_limit=1))

    with warm_worker(pool):
        runs = [asyncio.run(start_run(deployment_id, seconds=2)) for _ in range(3)]
        done = [wait_for(run.id, in_state(StateType.COMPLETED), "the limited runs") for run in runs]

    spans = []
    for run in done:
        assert run.start_time is not None and run.end_time is not None
        spans.append((run.start_time, run.end_time))
    spans.sort()
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def test_the_reaper_leaves_runs_of_live_workers_and_finished_runs_alone() -> None:
    """A live worker's runs, and a run whose owner is gone but which already finished."""
    from datetime import timedelta

    from tests.flows.warm_flows import wait

    pool = new_pool()
    deployment_id = asyncio.run(deploy(wait, pool))

    with warm_worker(pool):
        flow_run = asyncio.run(start_run(deployment_id, seconds=5))
        running = wait_for(flow_run.id, in_state(StateType.RUNNING), "the run to start")

        async def reap() -> list[uuid.UUID]:
            async with get_client() as client:
                return await reap_orphaned_runs(
                    client, pool, alive=set(), stale_after=timedelta(seconds=30)
                )

        assert asyncio.run(reap()) == []
        wait_for(flow_run.id, in_state(StateType.COMPLETED), "the run to end")
    assert str(running.labels[WORKER_NAME_LABEL]).startswith("warm-")

    async def reap_later() -> list[uuid.UUID]:
        async with get_client() as client:
            return await reap_orphaned_runs(
                client, pool, alive=set(), stale_after=timedelta(seconds=0)
            )

    assert asyncio.run(reap_later()) == []
    assert asyncio.run(read_run(flow_run.id)).state_type == StateType.COMPLETED


def test_a_sync_flow_is_refused_rather_than_run_on_the_workers_loop() -> None:
    from followup.warm_worker import WarmWorker

    with pytest.raises(ValueError, match="async flows only"):
        WarmWorker(new_pool(), preload=["tests/flows/warm_flows.py:sync_flow"])


def test_a_worker_with_every_slot_taken_skips_its_polls_and_stays_healthy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `--limit` slots all running, a poll could take nothing: none is sent (in a
    backlog each lists up to 200 waiting runs) but one every FULL_POLL_SECONDS, and the
    healthcheck still says polling."""
    from prefect.workers.base import BaseWorker

    from followup import warm_worker as warm_worker_module
    from followup.warm_worker import WarmWorker

    polls: list[int] = []

    async def poll(self: BaseWorker[Any, Any, Any]) -> list[FlowRun]:
        polls.append(1)
        return []

    monkeypatch.setattr(BaseWorker, "get_and_submit_flow_runs", poll)
    worker = WarmWorker(new_pool(), limit=1, preload=())

    async def scenario() -> None:
        async with worker:
            await worker.get_and_submit_flow_runs()
            assert polls == [1]
            worker.limiter.acquire_on_behalf_of_nowait("a run")
            assert await worker.get_and_submit_flow_runs() == []
            assert polls == [1]
            assert worker.is_worker_still_polling(query_interval_seconds=0)
            # Full for FULL_POLL_SECONDS: one poll anyway, so the server keeps the work
            # queue and its deployments ready.
            monkeypatch.setattr(warm_worker_module, "FULL_POLL_SECONDS", 0.0)
            await worker.get_and_submit_flow_runs()
            assert polls == [1, 1]
            monkeypatch.setattr(warm_worker_module, "FULL_POLL_SECONDS", 30.0)
            worker.limiter.release_on_behalf_of("a run")
            await worker.get_and_submit_flow_runs()
            assert polls == [1, 1, 1]

    asyncio.run(scenario())
