"""The whole engine as an operator runs it, for the fault tests that kill or stop parts of it.

* a Prefect server: `prefect server start` on a free port, its own PREFECT_HOME and SQLite;
* `followup serve` pointed at that server (so it starts none of its own): MLLP and HTTP
  gateways and every deployment of prefect.yaml served from the process, flow runs in the
  subprocesses its runner starts; tests/faults/inject on its PYTHONPATH (see sitecustomize
  there) lets a test make the gateway or a flow-run process SIGKILL itself at a chosen point;
* the application database (SQLite file) with the demo clinic seeded for today.

Each can be stopped, killed and started again on the same ports and files. The schedules of
prefect.yaml are paused once the deployments are registered: sweep-inbox (every minute, rows
older than 2 minutes) is run on demand by the tests, so a case takes seconds instead of
minutes and no background run changes the counts while a case is measured.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from followup.core.scheduling import site_holidays
from followup.settings import PROJECT_ROOT, get_settings
from models.db import migrate, session_scope
from models.seed import seed_demo_clinic
from tests.gateway.conftest import frame, read_acks
from tests.gateway.test_end_to_end import free_port, listening

BIN = Path(sys.executable).parent
INJECT = Path(__file__).resolve().parent / "inject"
STARTUP_SECONDS = 240  # a cold Prefect server migrates its own database first
RUN_SECONDS = 180  # a flow run, from the event to its end, on a loaded 2-core machine
# A run's claim on its inbox row older than this belongs to a dead run (the sweep releases it).
# Short, so a test need not wait ten minutes; safe, since sweeps run only when a test asks.
LEASE_SECONDS = 5


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> int | None:
    """Stop a subprocess started here and wait for it; its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Engine:
    root: Path
    database_url: str = field(init=False)
    prefect_port: int = field(default_factory=free_port)
    mllp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    prefect: subprocess.Popen[bytes] | None = None
    serve: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.database_url = f"sqlite:///{self.root / 'followup.db'}"
        (self.root / "faults").mkdir()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def serve_log(self) -> Path:
        return self.root / "serve.log"

    def env(self) -> dict[str, str]:
        path = [str(INJECT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.root / "prefect"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DATABASE_URL": self.database_url,
            "FOLLOWUP_MLLP_PORT": str(self.mllp_port),
            "FOLLOWUP_HTTP_PORT": str(self.http_port),
            "FOLLOWUP_PROCESSING_LEASE_SECONDS": str(LEASE_SECONDS),
            "FOLLOWUP_FAULTS_DIR": str(self.root / "faults"),
            "PYTHONPATH": os.pathsep.join(path),
        }
        # No Twilio: messages go to the dry-run outbox; the counts are of outbox rows.
        for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM"):
            env.pop(name, None)
        return env

    # --- the Prefect server --------------------------------------------------------------

    def start_prefect(self) -> None:
        env = self.env()
        del env["PYTHONPATH"]  # faults are injected into the engine, not into Prefect
        with (self.root / "prefect.log").open("ab") as log:
            self.prefect = subprocess.Popen(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                 "--port", str(self.prefect_port)],
                env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_for_prefect(self) -> None:
        def healthy() -> bool:
            assert self.prefect is not None and self.prefect.poll() is None, "Prefect exited"
            try:
                # /ready: the API answers and its database too (/health: the process only).
                return httpx.get(f"{self.api_url}/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, STARTUP_SECONDS, "the Prefect server")

    def stop_prefect(self) -> None:
        stop(self.prefect)
        self.prefect = None

    # --- the application database and `followup serve` ------------------------------------

    def seed(self) -> None:
        settings = get_settings(database_url=self.database_url)
        migrate(self.database_url)
        today = datetime.now(settings.site_zone).date()
        with session_scope(self.database_url) as session:
            seed_demo_clinic(
                session=session,
                zone=settings.site_zone,
                first_day=today,
                closed_days=site_holidays("US", None, (today.year, today.year + 1)),
            )

    def start_serve(self) -> None:
        with self.serve_log.open("ab") as log:
            self.serve = subprocess.Popen(
                [str(BIN / "followup"), "serve"],
                env=self.env(), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

        def up() -> bool:
            assert self.serve is not None and self.serve.poll() is None, self.log_tail()
            return listening(self.http_port)  # the last part of the engine to come up

        wait_until(up, STARTUP_SECONDS, "followup serve")
        self.pause_schedules()

    def stop_serve(self) -> int | None:
        code = stop(self.serve, signal.SIGINT)  # as Ctrl-C
        self.serve = None
        return code

    def log_tail(self) -> str:
        return self.serve_log.read_text(errors="replace")[-4000:]

    # --- the Prefect API -------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One Prefect API call; a server still warming up after a restart answers 503."""
        deadline = time.monotonic() + 60
        while True:
            response = httpx.request(method, f"{self.api_url}{path}", json=body, timeout=30)
            if response.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(1)
        response.raise_for_status()
        return response.json() if response.content else None

    def pause_schedules(self) -> None:
        for deployment in self.api("POST", "/deployments/filter", {}):
            if deployment["schedules"]:
                self.api("POST", f"/deployments/{deployment['id']}/pause_deployment")

    def run_states(self, name: str) -> list[str]:
        """State types of the flow runs with this name (scan-<accession>), oldest first."""
        runs = self.api(
            "POST", "/flow_runs/filter",
            {"flow_runs": {"name": {"any_": [name]}}, "sort": "START_TIME_ASC"},
        )  # fmt: skip
        return [run["state_type"] for run in runs]

    def run_creators(self, name: str) -> list[str]:
        """Who created each flow run with this name, oldest first: "sweep" (its idempotency
        key) or "trigger" (the deployment's event trigger)."""
        runs = self.api(
            "POST", "/flow_runs/filter",
            {"flow_runs": {"name": {"any_": [name]}}, "sort": "START_TIME_ASC"},
        )  # fmt: skip
        keys = [str(run.get("idempotency_key") or "") for run in runs]
        return ["sweep" if key.startswith("sweep-inbox") else "trigger" for key in keys]

    def sweep(self, older_than_seconds: int = 0) -> None:
        """Run the sweep-inbox deployment now, for accepted rows older than
        `older_than_seconds` (and rows of dead runs past the lease), and wait for its end."""
        deployment = self.api("GET", "/deployments/name/sweep-inbox/sweep-inbox")
        run = self.api(
            "POST", f"/deployments/{deployment['id']}/create_flow_run",
            {"parameters": {"older_than_seconds": older_than_seconds}},
        )  # fmt: skip

        def finished() -> bool:
            state = self.api("GET", f"/flow_runs/{run['id']}")["state_type"]
            assert state not in ("FAILED", "CRASHED", "CANCELLED"), self.log_tail()
            return bool(state == "COMPLETED")

        wait_until(finished, RUN_SECONDS, "the sweep-inbox run")

    # --- MLLP ------------------------------------------------------------------------------

    def send(self, message: bytes) -> bytes | None:
        """One message on its own connection; its ACK, or None when the connection ended
        without one."""
        with socket.create_connection(("127.0.0.1", self.mllp_port), timeout=30) as sock:
            sock.sendall(frame(message))
            try:
                acks = read_acks(sock, 1)
            except ConnectionResetError:
                return None
        return acks[0] if acks else None
