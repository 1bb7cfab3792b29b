"""`followup serve`: the whole engine in one process tree, on embedded defaults.

What runs:
* a local Prefect server (`prefect server start`, SQLite under PREFECT_HOME, 127.0.0.1) when
  PREFECT_API_URL is not set; with PREFECT_API_URL set, that server is used instead;
* the MLLP listener and the HTTP gateway (uvicorn: FHIR, /healthz and Twilio's webhooks),
  both emitting `ris.scan.completed`;
* every deployment in prefect.yaml, served from this process (flow runs execute in
  subprocesses started by Prefect's runner) with the triggers, schedules, parameters and
  concurrency limits written there, read with the same code `prefect deploy` uses, so the
  served and the deployed engine cannot drift apart. Work pools are ignored: this process is
  the worker. The runner polls every second (an event-triggered run starts in about 1.4 s,
  against 5.7 s with Prefect's default 10 s poll);
* `followup classifier-worker` in a subprocess, which classifies for the flow runs (see
  followup/classifier_worker.py).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
import yaml
from fastapi import FastAPI

from followup.errors import FollowupError
from followup.gateway import OnAccepted
from followup.gateway.http import create_app
from followup.gateway.mllp import MLLPListener
from followup.gateway.twilio_webhooks import twilio_router
from followup.redaction import install_redaction
from followup.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentTriggerTypes, TriggerTypes

logger = logging.getLogger(__name__)

PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
RUNNER_POLL_SECONDS = 1
SERVER_STARTUP_SECONDS = 180  # a cold first start migrates Prefect's own SQLite database
_PREFECT_SERVER_ENV = {
    "PREFECT_HOME": str(PROJECT_ROOT / "var" / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # clinic networks are often offline
    "PREFECT_RUNNER_POLL_FREQUENCY": str(RUNNER_POLL_SECONDS),
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
    server = classifier = None
    if not os.environ.get("PREFECT_API_URL"):
        server = start_prefect_server(port=int(os.environ.get("PREFECT_SERVER_API_PORT", "4200")))
        os.environ["PREFECT_API_URL"] = server.api_url
    try:
        classifier = start_classifier_worker()
        # Read by the flow-run processes the runner starts, which inherit this environment.
        os.environ["FOLLOWUP_CLASSIFIER_WORKER"] = "true"
        asyncio.run(_serve(settings, prefect_yaml))
    finally:
        _drain_prefect_queues()
        if classifier is not None:
            stop_process(classifier)
        if server is not None:
            server.stop()


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


def start_classifier_worker() -> subprocess.Popen[bytes]:
    """`followup classifier-worker` against the Prefect server in PREFECT_API_URL.

    Not waited for: until it subscribes, the classify runs wait on Prefect's task queue. Its
    stdin is a pipe this process holds open: it stops when this process ends, even by SIGKILL.
    """
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("followup")),
            "classifier-worker",
            "--stop-with-parent",
        ],
        env=os.environ.copy(),
        stdin=subprocess.PIPE,
        # Its own session, as the server's: Ctrl-C reaches this process, which stops the
        # runner before the classifier the runner's flows may still be waiting on.
        start_new_session=True,
    )


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
    """Every deployment of prefect.yaml as a runner deployment, as `prefect deploy` reads it."""
    # The helpers `prefect deploy` itself uses to read these sections.
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.flows import load_flow_from_entrypoint

    project = yaml.safe_load(prefect_yaml.read_text())
    deployments = []
    for spec in project["deployments"]:
        path, _, function = spec["entrypoint"].partition(":")
        flow: Flow[..., Any] = load_flow_from_entrypoint(f"{prefect_yaml.parent / path}:{function}")
        triggers: list[DeploymentTriggerTypes | TriggerTypes] = [
            *_initialize_deployment_triggers(spec["name"], spec.get("triggers", []))
        ]
        deployments.append(
            await flow.ato_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=spec.get("parameters"),
                concurrency_limit=spec.get("concurrency_limit"),
                triggers=triggers,
                schedules=[
                    _schedule_config_to_deployment_schedule(schedule)
                    for schedule in spec.get("schedules") or []
                ],
            )
        )
    return deployments


def gateway_app(settings: Settings, *, on_accepted: OnAccepted) -> FastAPI:
    """The HTTP gateway of the design contract: FHIR, health, and Twilio's webhooks."""
    app = create_app(settings, on_accepted=on_accepted)
    # No sender: answers to patients go through the outbox, sent by dispatch-reminders.
    app.include_router(twilio_router(settings, database_url=settings.database_url))
    return app


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _http_server(settings: Settings, on_accepted: OnAccepted) -> uvicorn.Server:
    config = uvicorn.Config(
        gateway_app(settings, on_accepted=on_accepted),
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
    from flows.events import emit_scan_completed

    stop = _stop_on_signals()
    listener = MLLPListener(settings, on_accepted=emit_scan_completed)
    http = _http_server(settings, emit_scan_completed)
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


async def _serve(settings: Settings, prefect_yaml: Path) -> None:
    from prefect.runner import Runner

    from flows.events import emit_scan_completed

    deployments = await served_deployments(prefect_yaml)
    stop = _stop_on_signals()
    listener = MLLPListener(settings, on_accepted=emit_scan_completed)
    http = _http_server(settings, emit_scan_completed)
    # Schedules are not paused on shutdown: the server may already be gone (Ctrl-C), and a
    # restart re-applies the deployments anyway.
    runner = Runner(query_seconds=RUNNER_POLL_SECONDS, pause_on_shutdown=False)
    tasks: list[asyncio.Task[object]] = []
    try:
        await listener.start()
        for deployment in deployments:
            await runner.aadd_deployment(deployment)
        # The runner stops itself on SIGTERM; uvicorn captures SIGINT/SIGTERM while it serves
        # and re-raises them when done, which sets `stop`: whichever ends first ends it all.
        tasks = [
            asyncio.create_task(http.serve(), name="http"),
            asyncio.create_task(runner.start(), name="runner"),
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
        if runner.started:
            await asyncio.wait_for(runner.astop(), timeout=30)
        stop.set()
        await _wind_down(tasks)
