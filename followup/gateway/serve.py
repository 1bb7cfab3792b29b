"""`followup serve`: the whole engine in one process tree, on embedded defaults.

What runs:
* a local Prefect server (`prefect server start`, 127.0.0.1) when PREFECT_API_URL is not set,
  on SQLite under PREFECT_HOME, or on PostgreSQL when DATABASE_URL is (a database of its own
  on the same server, `prefect_server_database`); with PREFECT_API_URL set, that server is
  used instead;
* the MLLP listener and the HTTP gateway (uvicorn: FHIR, /healthz and Twilio's webhooks),
  both emitting `ris.scan.completed`;
* every deployment in prefect.yaml, registered from this process with the triggers, schedules,
  parameters and concurrency limits written there, read with the same code `prefect deploy`
  uses, so the served and the deployed engine cannot drift apart:
  - those on the warm pool (scan-completed) run in `followup warm-worker`, a subprocess this
    process restarts whenever it exits (followup/warm_worker.py): each scan is its own flow
    run, executed in that one warm process;
  - the others (sweep-inbox, dispatch-reminders, … a few runs a minute) are served by
    Prefect's runner in this process, each run in a subprocess; their work pool is ignored.
    The runner polls every second.

Ctrl-C (SIGINT) or SIGTERM stops the listeners, the runner and the Prefect server started here.

`followup gateway` (`serve_gateway`) runs the listeners alone, for the scale-out setup
(docs/deploy.md): its events go to the Prefect server at PREFECT_API_URL, whose deployments
workers elsewhere run. Without PREFECT_API_URL it refuses to start: events would go nowhere.

Prefect reads its settings when first imported, so PREFECT_API_URL and PREFECT_HOME are set in
the environment before anything imports Prefect; hence the imports inside `_serve`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
import yaml
from fastapi import FastAPI

from followup.core.redaction import install_redaction
from followup.errors import FollowupError
from followup.gateway import OnAccepted
from followup.gateway.http import create_app
from followup.gateway.mllp import MLLPListener
from followup.gateway.twilio_webhooks import twilio_router
from followup.messaging.sender import SmsSender, build_sender
from followup.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentTriggerTypes, TriggerTypes
    from prefect.schedules import Schedule

logger = logging.getLogger(__name__)

PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
RUNNER_POLL_SECONDS = 1
SERVER_STARTUP_SECONDS = 180  # a cold first start migrates Prefect's own SQLite database
# The Prefect server's own settings for a burst of scans (each a flow run with three task
# runs), set for the server `followup serve` starts and by docs/deploy.md for a production one;
# bench/results/cpu_breakdown.md has the measurements behind them.
PREFECT_SERVER_TUNING = {
    # Its database pool: at the default 5 (+10 overflow) a burst opened and closed ~5
    # PostgreSQL connections per scan (a backend started, asyncpg's type introspection and
    # every statement prepared again each time). The runs in flight, the worker's polls and
    # the services' consumers need about 15 at once; PostgreSQL allows 100 by default.
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
    # A run of a backlog waits for a concurrency slot in Scheduled; after the default 15 s the
    # late-runs service moves every one of them to Late (a state transition, its event and
    # its DB writes per scan) only for the worker to take it from Late. Late now means behind
    # by more than the flow's own timeout.
    "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "300",
    # Task-run states arrive as events; by default each is written in a transaction of its
    # own (nine per scan). In batches, within a second.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "25",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}
_PREFECT_SERVER_ENV = {
    "PREFECT_HOME": str(PROJECT_ROOT / "var" / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # clinic networks are often offline
    "PREFECT_RUNNER_POLL_FREQUENCY": str(RUNNER_POLL_SECONDS),
    **PREFECT_SERVER_TUNING,
}


class StartupRefused(FollowupError):
    """A setting the listeners cannot run safely without; the message says which, in a line."""


class PrefectApiNotSet(StartupRefused):
    """`followup gateway` needs the Prefect server its events go to (PREFECT_API_URL)."""


def check_listener_settings(settings: Settings) -> None:
    """Refuse to start what would accept requests it cannot verify."""
    if settings.twilio_auth_token is not None and not settings.twilio_webhook_base_url:
        # Without it, webhook signatures could only be checked against the URL as received,
        # whose host the caller chooses: a signature made for another URL would pass.
        raise StartupRefused(
            "TWILIO_AUTH_TOKEN is set but FOLLOWUP_TWILIO_WEBHOOK_BASE_URL is not: set it to "
            "the public https URL Twilio calls, so webhook signatures are checked against it"
        )


def serve_engine(settings: Settings, *, prefect_yaml: Path = PREFECT_YAML) -> None:
    """Run the engine until Ctrl-C or SIGTERM."""
    from models.db import migrate

    check_listener_settings(settings)
    migrate(settings.database_url)
    for name, value in _PREFECT_SERVER_ENV.items():
        os.environ.setdefault(name, value)
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        if not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") and (
            prefect_database := prefect_server_database(settings.database_url)
        ):
            os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_database
        server = start_prefect_server(port=int(os.environ.get("PREFECT_SERVER_API_PORT", "4200")))
        os.environ["PREFECT_API_URL"] = server.api_url
    warm_worker = SupervisedProcess(warm_worker_command(limit=warm_run_limit(prefect_yaml)))
    try:
        asyncio.run(_serve(settings, prefect_yaml, warm_worker))
    finally:
        _drain_prefect_queues()
        warm_worker.stop()
        if server is not None:
            server.stop()


def prefect_server_database(database_url: str) -> str | None:
    """With the application on PostgreSQL, the Prefect server `serve` starts goes there too, in
    a database of its own (`<name>_prefect`, created when missing; Prefect's tables would clash
    with the application's). On its SQLite file the server's own writes fail with "database is
    locked" during bursts (docs/deploy.md). None for an application on SQLite."""
    from sqlalchemy import create_engine, make_url, text

    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    name = f"{url.database}_prefect"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists is None:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(drivername="postgresql+asyncpg", database=name, query={}).render_as_string(
        hide_password=False
    )


def serve_gateway(settings: Settings) -> None:
    """Run the MLLP and HTTP listeners until Ctrl-C or SIGTERM, emitting their events to the
    Prefect server at PREFECT_API_URL; no flows run here."""
    from models.db import migrate

    check_listener_settings(settings)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise PrefectApiNotSet(
            "PREFECT_API_URL is not set: the gateway emits its events to the Prefect server "
            "whose workers run the flows (docs/deploy.md)"
        )
    migrate(settings.database_url)
    try:
        asyncio.run(_serve_gateway(settings, api_url))
    finally:
        # Events still queued when the listeners stopped (accepted rows the sweep would
        # otherwise re-emit up to two minutes later).
        _drain_prefect_queues()


def _drain_prefect_queues() -> None:
    """Send the logs and events still queued while the Prefect server started here runs."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 20) -> None:
    """SIGTERM, and SIGKILL if it has not exited `timeout` seconds later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PrefectServer:
    """A `prefect server start` subprocess on 127.0.0.1."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.api_url = f"http://127.0.0.1:{port}/api"

    def stop(self) -> None:
        stop_process(self.process)


def warm_worker_command(*, limit: int | None) -> list[str]:
    """`followup warm-worker` on the warm pool, stopping when this process ends (however)."""
    return [
        str(Path(sys.executable).with_name("followup")),
        "warm-worker",
        "--stop-with-parent",
        *(["--limit", str(limit)] if limit is not None else []),
    ]


def warm_run_limit(prefect_yaml: Path) -> int | None:
    """The largest concurrency limit of the warm pool's deployments: the worker takes no more
    runs than that at once. Taking more, it would move the surplus to Pending only to have the
    server send each back to wait for a slot (AwaitingConcurrencySlot, retried seconds later),
    which measured 0.35 scans/s on a 30-scan burst."""
    from followup.warm_worker import WARM_POOL

    limits = [
        spec.get("concurrency_limit")
        for spec in yaml.safe_load(prefect_yaml.read_text())["deployments"]
        if _pool_of(spec) == WARM_POOL
    ]
    if not limits or None in limits:
        return None
    return max(limits)


class SupervisedProcess:
    """A subprocess started again whenever it exits until `stop`: a warm worker killed (OOM,
    kill -9) is replaced at once, and the new one marks the dead one's runs Crashed.

    Its stdin is a pipe this process holds open: it stops when this process ends, even by
    SIGKILL. Its own session: a Ctrl-C in the terminal reaches this process only, which stops
    the listeners before the worker."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, env=os.environ.copy(), stdin=subprocess.PIPE, start_new_session=True
        )

    async def keep_running(self) -> None:
        self.start()
        while not self.stopped:
            await asyncio.sleep(0.5)
            assert self.process is not None
            code = self.process.poll()
            if code is not None and not self.stopped:
                logger.error("%s exited with code %s; starting it again", self.command[1], code)
                self.start()

    def stop(self) -> None:
        self.stopped = True
        if self.process is not None:
            stop_process(self.process)


def start_prefect_server(*, port: int, timeout: float = SERVER_STARTUP_SECONDS) -> PrefectServer:
    """Start a local Prefect server and wait until its API answers."""
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("prefect")),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=os.environ.copy(),
        # Its own session: a Ctrl-C in the terminal reaches this process only, which stops the
        # runner (it still needs the API) before it stops the server.
        start_new_session=True,
    )
    server = PrefectServer(process, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode}")
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                logger.info("Prefect server at %s", server.api_url)
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"the Prefect server did not answer within {timeout:.0f} s")


async def served_deployments(prefect_yaml: Path) -> list[RunnerDeployment]:
    """Every deployment of prefect.yaml as a runner deployment, as `prefect deploy` reads it;
    those on the warm pool keep it (`work_pool_name`), the others are served by the runner.

    Built with Prefect's public classes (`prefect deploy`'s own readers are private): event
    triggers named as `prefect deploy` names them, interval and cron schedules, the forms this
    prefect.yaml uses; anything else is refused rather than served differently."""
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint

    from followup.warm_worker import WARM_POOL

    project = yaml.safe_load(prefect_yaml.read_text())
    deployments = []
    for spec in project["deployments"]:
        path, _, function = spec["entrypoint"].partition(":")
        flow: Flow[..., Any] = load_flow_from_entrypoint(f"{prefect_yaml.parent / path}:{function}")
        triggers: list[DeploymentTriggerTypes | TriggerTypes] = []
        for number, trigger in enumerate(spec.get("triggers") or [], start=1):
            if trigger.get("type") != "event":
                raise ValueError(f"{spec['name']}: only event triggers are served: {trigger}")
            triggers.append(
                DeploymentEventTrigger.model_validate(
                    {"name": f"{spec['name']}__automation_{number}", **trigger}
                )
            )
        deployments.append(
            await flow.ato_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=spec.get("parameters"),
                concurrency_limit=spec.get("concurrency_limit"),
                work_pool_name=WARM_POOL if _pool_of(spec) == WARM_POOL else None,
                triggers=triggers,
                schedules=[_schedule(spec["name"], s) for s in spec.get("schedules") or []],
            )
        )
    return deployments


def _schedule(deployment: str, spec: dict[str, Any]) -> Schedule:
    from prefect.schedules import Cron, Interval

    if set(spec) <= {"interval"}:
        return Interval(timedelta(seconds=spec["interval"]))
    if set(spec) <= {"cron", "timezone"}:
        return Cron(spec["cron"], timezone=spec.get("timezone"))
    raise ValueError(f"{deployment}: only interval and cron (with timezone) schedules: {spec}")


def _pool_of(spec: dict[str, Any]) -> str | None:
    return (spec.get("work_pool") or {}).get("name")


def gateway_app(
    settings: Settings,
    *,
    on_accepted: OnAccepted,
    sms_sender: SmsSender | None = None,
    on_tasks_opened: Callable[[Sequence[int]], object] | None = None,
) -> FastAPI:
    """The HTTP gateway of the design contract: FHIR, health, and Twilio's webhooks.

    With `sms_sender`, answers to patients' texts (keyword acknowledgements, the answers to C
    and R) are sent as soon as the webhook is answered; without one they wait in the outbox for
    the next dispatch-reminders run (up to a minute). `on_tasks_opened` hears of the tasks a
    text opened or joined (`followup serve` emits the event that refreshes the worklist)."""
    app = create_app(settings, on_accepted=on_accepted)
    app.include_router(
        twilio_router(
            settings,
            database_url=settings.database_url,
            sender=sms_sender,
            on_tasks_opened=on_tasks_opened,
        )
    )
    return app


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _http_server(
    settings: Settings,
    on_accepted: OnAccepted,
    on_tasks_opened: Callable[[Sequence[int]], object],
) -> uvicorn.Server:
    config = uvicorn.Config(
        gateway_app(
            settings,
            on_accepted=on_accepted,
            # The sender dispatch-reminders uses (Twilio, or the dry-run outbox while
            # unconfigured), built when the server starts, never at import.
            sms_sender=build_sender(settings),
            on_tasks_opened=on_tasks_opened,
        ),
        host=settings.http_host,
        port=settings.http_port,
        log_level="info",
    )
    # After the Config, which gives uvicorn's loggers handlers of their own (they do not
    # propagate to the root's): their records too get the PHI masks and the escaping.
    install_redaction("", "uvicorn", "uvicorn.access")
    return uvicorn.Server(config)


async def _until_one_ends(tasks: list[asyncio.Task[object]]) -> None:
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task.exception() is not None:
            logger.error("%s stopped: %r", task.get_name(), task.exception())


async def _wind_down(tasks: list[asyncio.Task[object]]) -> None:
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=15)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _serve_gateway(settings: Settings, api_url: str) -> None:
    from flows.events import emit_scan_completed, emit_tasks_opened

    stop = _stop_on_signals()
    listener = MLLPListener(settings, on_accepted=emit_scan_completed)
    http = _http_server(settings, emit_scan_completed, emit_tasks_opened)
    tasks: list[asyncio.Task[object]] = []
    try:
        await listener.start()
        # uvicorn captures SIGINT/SIGTERM while it serves and re-raises them when done, which
        # sets `stop`: whichever ends first ends both.
        tasks = [
            asyncio.create_task(http.serve(), name="http"),
            asyncio.create_task(stop.wait(), name="stop"),
        ]
        logger.info(
            "gateway up: MLLP %s:%d, HTTP %s:%d, events to %s",
            settings.mllp_host,
            listener.port,
            settings.http_host,
            settings.http_port,
            api_url,
        )
        await _until_one_ends(tasks)
    finally:
        logger.info("stopping the gateway")
        http.should_exit = True
        await listener.stop()
        stop.set()
        await _wind_down(tasks)


async def _serve(settings: Settings, prefect_yaml: Path, warm_worker: SupervisedProcess) -> None:
    from prefect import get_client
    from prefect.runner import Runner

    from flows.events import emit_scan_completed, emit_tasks_opened
    from followup.warm_worker import WARM_POOL, ensure_pool

    deployments = await served_deployments(prefect_yaml)
    stop = _stop_on_signals()
    listener = MLLPListener(settings, on_accepted=emit_scan_completed)
    http = _http_server(settings, emit_scan_completed, emit_tasks_opened)
    # Schedules are not paused on shutdown: the server may already be gone (Ctrl-C), and a
    # restart re-applies the deployments anyway.
    runner = Runner(query_seconds=RUNNER_POLL_SECONDS, pause_on_shutdown=False)
    tasks: list[asyncio.Task[object]] = []
    try:
        await listener.start()
        async with get_client() as client:
            await ensure_pool(client, WARM_POOL)
        for deployment in deployments:
            if deployment.work_pool_name == WARM_POOL:
                await deployment.aapply()
            else:
                await runner.aadd_deployment(deployment)
        # The runner stops itself on SIGTERM; uvicorn captures SIGINT/SIGTERM while it serves
        # and re-raises them when done, which sets `stop`: whichever ends first ends it all.
        tasks = [
            asyncio.create_task(http.serve(), name="http"),
            asyncio.create_task(runner.start(), name="runner"),
            asyncio.create_task(warm_worker.keep_running(), name="warm-worker"),
            asyncio.create_task(stop.wait(), name="stop"),
        ]
        logger.info(
            "engine up: MLLP %s:%d, HTTP %s:%d",
            settings.mllp_host,
            listener.port,
            settings.http_host,
            settings.http_port,
        )
        await _until_one_ends(tasks)
    finally:
        logger.info("stopping the engine")
        http.should_exit = True
        await listener.stop()
        warm_worker.stopped = True  # no restart while winding down; stopped after the loop
        if runner.started:
            await asyncio.wait_for(runner.astop(), timeout=30)
        stop.set()
        await _wind_down(tasks)
