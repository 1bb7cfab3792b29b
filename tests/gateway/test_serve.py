"""`followup serve` serves prefect.yaml's deployments as written there; `followup gateway`
runs the listeners alone, emitting to a Prefect server elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.events.schemas.events import ResourceSpecification
from sqlalchemy import create_engine, make_url, text
from sqlmodel import select
from typer.testing import CliRunner

from flows.events import EVENT, event_id
from followup.cli import app
from followup.gateway.serve import (
    PREFECT_YAML,
    gateway_app,
    prefect_server_database,
    served_deployments,
    warm_run_limit,
)
from followup.settings import get_settings
from followup.warm_worker import WARM_POOL
from models.db import session_scope
from models.tables import InboxMessage
from tests.conftest import SAMPLES
from tests.gateway.conftest import frame, read_acks, segments
from tests.gateway.test_events import stored_events

ROOT = Path(__file__).resolve().parents[2]
RunningGateway = tuple[subprocess.Popen[bytes], int, int]  # the process, its MLLP and HTTP ports


def test_served_deployments_carry_prefect_yaml_triggers_and_schedules() -> None:
    deployments = {d.name: d for d in asyncio.run(served_deployments(PREFECT_YAML))}

    scan = deployments["scan-completed"]
    [trigger] = scan.triggers
    assert isinstance(trigger, DeploymentEventTrigger)
    assert isinstance(trigger.match, ResourceSpecification)
    assert trigger.expect == {"ris.scan.completed"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "ris.study.*"}
    assert trigger.parameters == {
        "inbox_id": "{{ event.payload.inbox_id }}",
        "accession": "{{ event.payload.accession }}",
    }
    assert scan.concurrency_limit == 8
    assert scan.entrypoint == "flows/scan_completed.py:scan_completed"
    # Run by the warm worker `followup serve` starts; the others by its runner.
    assert scan.work_pool_name == WARM_POOL
    assert warm_run_limit(PREFECT_YAML) == 8  # the worker takes no more than the limit
    assert {d.work_pool_name for name, d in deployments.items() if name != "scan-completed"} == {
        None
    }

    sweep = deployments["sweep-inbox"]
    assert sweep.schedules is not None
    [schedule] = sweep.schedules
    assert isinstance(schedule.schedule, IntervalSchedule)
    assert schedule.schedule.interval == timedelta(seconds=60)
    assert sweep.parameters == {"older_than_seconds": 120}
    assert sweep.triggers == []
    assert trigger.name == "scan-completed__automation_1"  # as `prefect deploy` names it

    worklist = deployments["daily-worklist"]
    assert worklist.schedules is not None
    [daily] = worklist.schedules
    assert isinstance(daily.schedule, CronSchedule)
    assert (daily.schedule.cron, daily.schedule.timezone) == ("0 7 * * *", "America/New_York")


def test_the_prefect_server_serve_starts_follows_the_application_onto_postgresql(
    empty_database_url: str,
) -> None:
    prefect_database = prefect_server_database(empty_database_url)

    if empty_database_url.startswith("sqlite"):
        assert prefect_database is None
        return
    assert prefect_database is not None
    url = make_url(prefect_database)
    assert url.drivername == "postgresql+asyncpg"  # what Prefect's server connects with
    assert url.database == f"{make_url(empty_database_url).database}_prefect"
    assert dict(url.query) == {}
    # Created, and found again the next time.
    assert prefect_server_database(empty_database_url) == prefect_database
    engine = create_engine(url.set(drivername="postgresql+psycopg"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT current_database()")).scalar() == url.database
    engine.dispose()


def test_gateway_app_mounts_the_twilio_webhooks() -> None:
    app = gateway_app(get_settings(), on_accepted=lambda receipt: None)

    async def post(path: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return (await client.post(path)).status_code

    # Unsigned: refused by the Twilio route itself, which is therefore mounted.
    assert asyncio.run(post("/twilio/status")) == 403
    assert asyncio.run(post("/twilio/inbound")) == 403
    assert asyncio.run(post("/twilio/elsewhere")) == 404


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1].decode()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.fixture
def gateway_process(prefect_api: None, database_url: str) -> Iterator[RunningGateway]:
    """`followup gateway` as an operator starts it, pointed at the test Prefect API."""
    from prefect.settings import PREFECT_API_URL

    mllp_port, http_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "followup.cli", "gateway"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "FOLLOWUP_MLLP_PORT": str(mllp_port),
            "FOLLOWUP_HTTP_PORT": str(http_port),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(mllp_port, process)
        _wait_for_port(http_port, process)
        yield process, mllp_port, http_port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.prefect
@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_gateway_emits_accepted_scans_to_the_prefect_api_and_stops_cleanly(
    gateway_process: RunningGateway,
    database_url: str,
    stop_with: signal.Signals,
) -> None:
    process, mllp_port, http_port = gateway_process
    raw = (SAMPLES / "hl7" / "spine_neurology_root_compression.hl7").read_bytes()

    with socket.create_connection(("127.0.0.1", mllp_port), timeout=30) as sock:
        sock.sendall(frame(raw))
        [ack] = read_acks(sock, 1)
    health = httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=10)

    assert segments(ack)["MSA"][1] == "AA"
    assert health.status_code == 200
    with session_scope(database_url) as session:
        [row] = session.exec(select(InboxMessage)).all()
    assert row.id is not None
    assert row.accession is not None
    [event] = stored_events([event_id(row.id, row.accession)], expected=1)
    assert (event.event, event.payload) == (
        EVENT,
        {"inbox_id": row.id, "accession": row.accession},
    )

    process.send_signal(stop_with)
    code = process.wait(timeout=60)

    assert code == 0, process.communicate()[1].decode()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mllp_port), timeout=1).close()


def test_gateway_refuses_to_start_without_a_prefect_api(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)

    result = CliRunner().invoke(app, ["gateway"])

    assert result.exit_code == 2
    assert "PREFECT_API_URL is not set" in result.stderr


@pytest.mark.parametrize(
    ("command", "environment", "message"),
    [
        (
            "gateway",
            {"TWILIO_AUTH_TOKEN": "twilio-token"},
            "TWILIO_AUTH_TOKEN is set but FOLLOWUP_TWILIO_WEBHOOK_BASE_URL is not",
        ),
        (
            "serve",
            {"TWILIO_AUTH_TOKEN": "twilio-token"},
            "TWILIO_AUTH_TOKEN is set but FOLLOWUP_TWILIO_WEBHOOK_BASE_URL is not",
        ),
        (
            "gateway",
            {
                "TWILIO_AUTH_TOKEN": "twilio-token",
                "FOLLOWUP_TWILIO_WEBHOOK_BASE_URL": "followup.example.org",
            },
            "FOLLOWUP_TWILIO_WEBHOOK_BASE_URL: String should match pattern",
        ),
        ("gateway", {"FOLLOWUP_HTTP_TOKEN": ""}, "FOLLOWUP_HTTP_TOKEN: Value error, empty"),
        ("serve", {"FOLLOWUP_HTTP_TOKEN": "  "}, "FOLLOWUP_HTTP_TOKEN: Value error, empty"),
    ],
    ids=[
        "gateway-twilio",
        "serve-twilio",
        "gateway-base-url-without-scheme",
        "gateway-empty-token",
        "serve-blank-token",
    ],
)
def test_listeners_refuse_to_start_on_settings_that_would_leave_them_open(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    environment: dict[str, str],
    message: str,
) -> None:
    """With Twilio's auth token and no public webhook URL, signatures could only be checked
    against a URL the caller chooses; an empty token would match an empty bearer."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{_free_port()}/api")
    monkeypatch.delenv("FOLLOWUP_TWILIO_WEBHOOK_BASE_URL", raising=False)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    result = CliRunner().invoke(app, [command])

    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(message)
