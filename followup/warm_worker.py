"""`followup warm-worker`: deployment flow runs executed inside one long-lived process.

Prefect's process worker and runner start a new Python process per flow run (~3 CPU-s and ~3 s
before the flow's first line on 2 cores); the scan itself needs ~0.02 CPU-s. This worker is a
Prefect worker type (`BaseWorker`, Prefect's public extension point for workers): it polls its
work pool, proposes PENDING (where the server enforces the deployment's concurrency limit),
labels the run with its name and runs the deployment's own flow run with
`prefect.flow_engine.run_flow` on its event loop, so NLP, SQLAlchemy and the models are loaded
once. Each scan stays its own flow run `scan-{accession}`, with its tags, task runs, logs and
artifacts, as under a process worker.

What a process per run gave for free, done here:
* A dead worker (kill -9, OOM, host lost) leaves its runs Running: every warm worker reaps the
  pool's runs labelled with a worker whose heartbeat stopped (`reap_orphaned_runs`), marking
  them Crashed; sweep-inbox then hands their rows to another run once the inbox lease expires
  (a run that had done nothing yet is scheduled again instead).
  `followup serve` restarts its worker, so the restarted one reaps its predecessor's runs.
* Cancel from the UI or API (state Cancelling): the worker watches its in-flight runs and
  cancels the one asked, then records it Cancelled.
* A hung scan: the flow's `timeout_seconds` ends the run (its blocking steps run in threads,
  see flows/scan_completed.py); the worker and its other runs go on.

Two ways to start one, both running `WarmWorker.start` (BaseWorker's poll and heartbeat loops
plus the cancellation watch and the reaper above):
* `followup warm-worker --pool POOL` (what `followup serve` runs): the event loop in a thread
  of its own, the main thread keeping SIGTERM/SIGINT for an orderly stop (no new runs,
  in-flight runs finish within a grace period). Prefect's flow engine installs its SIGTERM
  handler only in the main thread, so a SIGTERM does not crash the runs in flight.
* `prefect worker start --pool POOL --type followup-warm`: Prefect finds the type through this
  package's `prefect.collections` entry point (pyproject.toml). The loop runs in the main
  thread, so a SIGTERM crashes the runs in flight as it would a process per run; their rows
  go to new runs through the inbox lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import AsyncClientContext, SyncClientContext
from prefect.exceptions import InfrastructureNotFound, ObjectAlreadyExists
from prefect.flow_engine import run_flow
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_WORKER_QUERY_SECONDS,
    temporary_settings,
)
from prefect.states import AwaitingRetry, Cancelled, Crashed, State
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

from followup.settings import PROJECT_ROOT, Settings, get_settings

logger = logging.getLogger(__name__)

WORKER_TYPE = "followup-warm"
WARM_POOL = "followup-warm"
SCAN_ENTRYPOINT = "flows/scan_completed.py:scan_completed"
# The label Prefect's BaseWorker gives every flow run it submits (the reaper's key).
WORKER_NAME_LABEL = "prefect.worker.name"
HEARTBEAT_SECONDS = 10
POLL_SECONDS = 0.25
# Prefect's server marks a worker offline after three missed heartbeats; so does the reaper.
MISSED_HEARTBEATS = 3
REAP_EVERY_SECONDS = 10.0
CANCEL_POLL_SECONDS = 2.0
# Even with every slot busy, a poll this often: Prefect's foreman marks a work queue and its
# deployments not ready after 60 s without one (runs hung until their timeout, say).
FULL_POLL_SECONDS = 30.0
# The Prefect settings the worker and the runs it executes see.
RUN_SETTINGS = {
    # Prefect's default poll (10 s) would add seconds to every scan; a poll is one query.
    PREFECT_WORKER_QUERY_SECONDS: POLL_SECONDS,
    # No flow-run heartbeat thread and event per run (Prefect sends one at the start of each
    # run, then every 180 s): nothing on the server acts on them unless an automation is
    # written for them, and a dead worker's runs are found by the reaper below, from the
    # worker's own heartbeats.
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
}
STOP_GRACE_SECONDS = 15.0
LIVE_STATES = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]


class WarmRunResult(BaseWorkerResult):
    """`identifier` is `<worker name>:<flow run id>` (the run's infrastructure_pid)."""


class WarmWorker(BaseWorker[BaseJobConfiguration, BaseVariables, WarmRunResult]):
    type = WORKER_TYPE
    job_configuration = BaseJobConfiguration
    _description = "Runs deployment flow runs inside this long-lived process (followup)."

    def __init__(
        self,
        work_pool_name: str,
        work_queues: list[str] | None = None,
        name: str | None = None,
        prefetch_seconds: float | None = None,
        create_pool_if_not_found: bool = True,
        limit: int | None = None,
        heartbeat_interval_seconds: int | None = HEARTBEAT_SECONDS,
        *,
        base_job_template: dict[str, Any] | None = None,
        preload: Iterable[str] = (SCAN_ENTRYPOINT,),
    ) -> None:
        """BaseWorker's arguments (those `prefect worker start` passes), and the flows to
        import before the first run."""
        super().__init__(
            work_pool_name,
            work_queues=work_queues,
            name=name or default_worker_name(),
            prefetch_seconds=prefetch_seconds,
            create_pool_if_not_found=create_pool_if_not_found,
            limit=limit,
            heartbeat_interval_seconds=heartbeat_interval_seconds,
            base_job_template=base_job_template,
        )
        self.pool = work_pool_name
        self._flows: dict[str, Flow[..., Any]] = {}
        self._entrypoints: dict[UUID, str] = {}
        self._in_flight: dict[UUID, anyio.CancelScope] = {}
        # Taken from the pool and not yet run: Pending, not yet labelled with this worker.
        self._taken: set[UUID] = set()
        self._polled_at = float("-inf")  # time.monotonic() of the last poll sent
        self._cancel_asked: set[UUID] = set()
        self.accepting = True
        for entrypoint in preload:
            self._flow(entrypoint)

    # --- Prefect's worker interface ----------------------------------------------------------

    async def start(
        self,
        run_once: bool = False,
        with_healthcheck: bool = False,
        printer: Callable[..., None] = print,
    ) -> None:
        """BaseWorker's loops, polling every POLL_SECONDS, beside the cancellation watch and
        the reaper; the NLP pipeline is loaded first. One API client (and connection pool)
        serves the worker and every run it executes: a flow run's engine uses the client of
        the context it starts in and creates its own only without one, at ~25 ms of CPU each
        (a TLS context is built even for http), two or three per run."""
        prepare(get_settings())
        quiet_run_loggers()
        with temporary_settings(RUN_SETTINGS):
            async with AsyncClientContext() as client_context:
                with SyncClientContext():
                    client = client_context.client
                    await ensure_pool(client, self.pool)
                    async with anyio.create_task_group() as duties:
                        duties.start_soon(self.watch_cancellations, client)
                        duties.start_soon(self.reap_periodically, client)
                        await super().start(
                            run_once=run_once, with_healthcheck=with_healthcheck, printer=printer
                        )
                        duties.cancel_scope.cancel()

    async def run(
        self,
        flow_run: FlowRun,
        configuration: BaseJobConfiguration,
        task_status: anyio.abc.TaskStatus[Any] | None = None,
    ) -> WarmRunResult:
        identifier = f"{self.name}:{flow_run.id}"
        flow = await self._flow_of(flow_run)
        with anyio.CancelScope() as scope:
            self._in_flight[flow_run.id] = scope
            if task_status is not None:
                task_status.started(identifier)
            try:
                # A coroutine: the warm pool's flows are async (see _flow).
                await run_flow(flow, flow_run=flow_run, return_type="state")  # type: ignore[misc]
            except Exception:
                # The engine records the run's own failures; this is the engine itself failing
                # (the API gone, say): a non-zero status has BaseWorker mark the run Crashed.
                logger.exception("the flow engine failed for flow run %s", flow_run.id)
                return WarmRunResult(identifier=identifier, status_code=1)
            finally:
                del self._in_flight[flow_run.id]
                self._taken.discard(flow_run.id)
        asked = flow_run.id in self._cancel_asked
        self._cancel_asked.discard(flow_run.id)
        if scope.cancelled_caught and asked:
            # The engine saw an asyncio cancellation and recorded a crash; what happened is a
            # cancellation someone asked for.
            await self.client.set_flow_run_state(
                flow_run.id, Cancelled(message="Cancelled on request"), force=True
            )
        return WarmRunResult(identifier=identifier, status_code=0)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: BaseJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        worker, _, run_id = infrastructure_pid.rpartition(":")
        if worker != self.name or not self.cancel(UUID(run_id)):
            raise InfrastructureNotFound(f"flow run {run_id} is not running in {self.name}")

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        if not self.accepting:
            return []
        if self.full() and time.monotonic() - self._polled_at < FULL_POLL_SECONDS:
            # Every slot holds a run: a poll could take nothing, and in a backlog each poll
            # has the server list (and this worker parse) up to 200 waiting runs and queue
            # two bookkeeping tasks. The next tick after a run ends polls again.
            return []
        self._polled_at = time.monotonic()
        taken = await super().get_and_submit_flow_runs()
        self._taken.update(flow_run.id for flow_run in taken)
        return taken

    def full(self) -> bool:
        """True while every slot of `--limit` holds a run (never without a limit)."""
        try:
            return self.limiter.available_tokens < 1
        except RuntimeError:  # no limit: no limiter
            return False

    def is_worker_still_polling(self, query_interval_seconds: float) -> bool:
        # A worker whose slots are all busy skips its polls (above) and is healthy.
        return self.full() or super().is_worker_still_polling(query_interval_seconds)

    # --- this worker's own duties ------------------------------------------------------------

    def cancel(self, flow_run_id: UUID) -> bool:
        """Cancel an in-flight run of this worker; False when it holds no such run."""
        scope = self._in_flight.get(flow_run_id)
        if scope is None:
            return False
        self._cancel_asked.add(flow_run_id)
        scope.cancel()
        return True

    @property
    def in_flight(self) -> set[UUID]:
        return set(self._in_flight)

    async def watch_cancellations(self, client: PrefectClient) -> None:
        """Cancel in-flight runs whose state became Cancelling (the UI's or API's Cancel).
        Prefect's worker only cancels runs that have not started; the running ones are ours."""
        while True:
            await anyio.sleep(CANCEL_POLL_SECONDS)
            running = self.in_flight
            if not running:
                continue
            try:
                cancelling = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=list(running)),
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.CANCELLING])
                        ),
                    )
                )
            except Exception:
                logger.exception("could not read cancellations; trying again")
                continue
            for flow_run in cancelling:
                if self.cancel(flow_run.id):
                    logger.info("cancelling flow run %s on request", flow_run.id)

    async def reap_periodically(self, client: PrefectClient) -> None:
        stale_after = timedelta(seconds=MISSED_HEARTBEATS * self.heartbeat_interval_seconds)
        while True:
            try:
                await reap_orphaned_runs(
                    client,
                    self.pool,
                    alive={self.name},
                    stale_after=stale_after,
                    taken=self._taken,
                )
            except Exception:
                logger.exception("could not reap orphaned runs; trying again")
            await anyio.sleep(REAP_EVERY_SECONDS)

    async def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            await anyio.sleep(0.2)
        return not self._in_flight

    # --- flows -------------------------------------------------------------------------------

    async def _flow_of(self, flow_run: FlowRun) -> Flow[..., Any]:
        """The flow of the run's deployment. Its entrypoint is read once per deployment: the
        flow's code is imported once per process anyway, so a changed flow needs a restart."""
        deployment_id = flow_run.deployment_id
        if deployment_id is None:
            raise ValueError(f"flow run {flow_run.id} has no deployment to load a flow from")
        if deployment_id not in self._entrypoints:
            deployment = await self.client.read_deployment(deployment_id)
            if not deployment.entrypoint:
                raise ValueError(f"deployment {deployment.name} has no entrypoint")
            self._entrypoints[deployment_id] = deployment.entrypoint
        return self._flow(self._entrypoints[deployment_id])

    def _flow(self, entrypoint: str) -> Flow[..., Any]:
        """The flow at a deployment's entrypoint, imported once per process."""
        if entrypoint not in self._flows:
            if str(PROJECT_ROOT) not in sys.path:
                sys.path.insert(0, str(PROJECT_ROOT))  # the flows package, as the runner's cwd
            path, _, function = entrypoint.rpartition(":")
            resolved = Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path
            flow: Flow[..., Any] = load_flow_from_entrypoint(f"{resolved}:{function}")
            if not flow.isasync:
                # It would run on the event loop's thread and stall every other run meanwhile.
                raise ValueError(f"{entrypoint}: the warm worker runs async flows only")
            self._flows[entrypoint] = flow
        return self._flows[entrypoint]


# The engine's own lines at INFO ("Beginning flow run", "Finished in state Completed()", one
# per run and per task run) go to the Prefect API as log rows: the run's state history says
# the same. Warnings and errors (a failed scan, a retry) still reach the run's log in the UI.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def quiet_run_loggers() -> None:
    for name in RUN_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def default_worker_name() -> str:
    """Unique per process: a restarted worker is a new worker, so the reaper can tell that its
    predecessor's runs have no one left to finish them."""
    return f"warm-{socket.gethostname()}-{os.getpid()}"


async def reap_orphaned_runs(
    client: PrefectClient,
    pool: str,
    *,
    alive: set[str],
    stale_after: timedelta,
    taken: set[UUID] | frozenset[UUID] = frozenset(),
    now: datetime | None = None,
) -> list[UUID]:
    """Settle the pool's live runs whose worker is gone; the runs settled. A worker is gone
    when it has sent no heartbeat for `stale_after` (those in `alive` are trusted); a run
    Pending that long with no worker label lost its worker between Pending and the label,
    unless it is one of the runs this worker has `taken` and not yet labelled (on a busy
    Prefect server that step can take longer than `stale_after`).

    * Cancelling: Cancelled, as its worker would have done.
    * A run that completed no task run did nothing (for scan-completed: it never claimed its
      row, which would otherwise wait in `received` for sweep-inbox's `older_than_seconds`):
      scheduled again (AwaitingRetry, naming the dead worker) for a live worker, in one
      transition, as Prefect reschedules a run on SIGTERM. Through Crashed first, the run
      would be finished for a moment, and a sweep reading the live runs then would create a
      second run for the same row.
    * Otherwise Crashed; the inbox lease gives its row to a new run (sweep-inbox).

    Transitions are proposed, not forced: a run that finished meanwhile keeps its state."""
    now = now or datetime.now(UTC)
    workers = await client.read_workers_for_work_pool(pool)
    alive = alive | {
        worker.name
        for worker in workers
        if worker.last_heartbeat_time is not None and now - worker.last_heartbeat_time < stale_after
    }
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=LIVE_STATES))
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
    )
    reaped = []
    for flow_run in runs:
        owner = flow_run.labels.get(WORKER_NAME_LABEL)
        if owner is None:
            if flow_run.id in taken:
                continue
            since = flow_run.state.timestamp if flow_run.state else now
            if flow_run.state_type != StateType.PENDING or now - since < stale_after:
                continue
            message = "its worker stopped between Pending and taking it"
        elif owner in alive:
            continue
        else:
            message = f"worker {owner} stopped sending heartbeats with this run in flight"
        if flow_run.state_type == StateType.CANCELLING:
            if await _propose(client, flow_run, Cancelled(message=message)):
                reaped.append(flow_run.id)
            continue
        if await _did_work(client, flow_run.id):
            settled: State[Any] = Crashed(message=message)
        else:
            settled = AwaitingRetry(message=f"{message}; it had done no work: run again")
        if await _propose(client, flow_run, settled):
            reaped.append(flow_run.id)
    return reaped


async def _propose(client: PrefectClient, flow_run: FlowRun, state: State[Any]) -> bool:
    result = await client.set_flow_run_state(flow_run.id, state)
    accepted = result.state is not None and result.state.type == state.type
    if accepted:
        logger.warning(
            "flow run %s (%s) %s: %s", flow_run.id, flow_run.name, state.name, state.message
        )
    return accepted


async def _did_work(client: PrefectClient, flow_run_id: UUID) -> bool:
    completed = await client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED]))
        ),
        limit=1,
    )
    return bool(completed)


async def ensure_pool(client: PrefectClient, pool: str) -> None:
    """The warm work pool, created with this worker type's job template if missing."""
    # Created by another worker or an earlier start: the same template.
    with contextlib.suppress(ObjectAlreadyExists):
        await client.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type=WORKER_TYPE,
                base_job_template=WarmWorker.get_default_base_job_template(),
            )
        )


def prepare(settings: Settings) -> None:
    """What every scan needs, loaded before the first one: the NLP pipeline and the tables."""
    from followup import nlp
    from followup.core.rules import load_rules

    nlp.prepare(load_rules(settings.rules_path))


def serve_warm_worker(
    settings: Settings,
    *,
    pool: str = WARM_POOL,
    limit: int | None = None,
    stop_with_parent: bool = False,
) -> None:
    """Run a warm worker until SIGTERM or Ctrl-C (with `stop_with_parent`, also when the pipe
    on stdin closes: the parent ended, however); in-flight runs get STOP_GRACE_SECONDS."""
    prepare(settings)  # before the first poll, as WarmWorker.start does (it is cached)
    worker = WarmWorker(pool, limit=limit)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if stop_with_parent:
        threading.Thread(
            target=_set_when_stdin_closes, args=(stop,), name="parent-watch", daemon=True
        ).start()
    failures: list[BaseException] = []

    def work() -> None:
        try:
            asyncio.run(_work(worker, stop))
        except BaseException as error:
            failures.append(error)
            raise

    loop_thread = threading.Thread(target=work, name="warm-worker")
    loop_thread.start()
    while loop_thread.is_alive():
        loop_thread.join(timeout=0.5)
    if failures:
        # Its traceback is in the log already; a non-zero exit has `followup serve` (or the
        # service manager) start the worker again.
        raise SystemExit(1)


async def _work(worker: WarmWorker, stop: threading.Event) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(worker.start)
        logger.info("warm worker %s serving pool %s", worker.name, worker.pool)
        while not stop.is_set():
            await anyio.sleep(0.2)
        logger.info("stopping: no new runs; waiting for %d in flight", len(worker.in_flight))
        worker.accepting = False
        if not await worker.wait_idle(STOP_GRACE_SECONDS):
            logger.warning(
                "runs still in flight after %.0f s are cancelled (Crashed)", STOP_GRACE_SECONDS
            )
        group.cancel_scope.cancel()


def _set_when_stdin_closes(stop: threading.Event) -> None:
    # The parent holds the write end; the kernel closes it when the parent exits, even by
    # SIGKILL, which no signal handler in the parent could pass on.
    # os.read, not sys.stdin: the buffered reader's lock, held by this daemon thread, would
    # abort the interpreter's shutdown after an ordinary SIGTERM.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    logger.info("the parent process is gone; stopping")
    stop.set()
