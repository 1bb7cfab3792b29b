"""End to end on a real Prefect server: MLLP message → event → trigger → flow run → appointment.

`followup serve` runs as a subprocess, exactly as an operator starts it: it starts its own
`prefect server start` (the test harness's server is not used, so triggers, the runner and
the shutdown are the real ones), the gateways and the served deployments. The message goes in
with python-hl7's `mllp_send`; the test waits (bounded) for the booked follow-up in the
application database, then stops the engine with SIGINT, as Ctrl-C would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from followup.core.demo import restamp_for_today
from followup.settings import PROJECT_ROOT, get_settings
from models.db import session_scope
from models.tables import Appointment, ImagingStudy, InboxMessage, InboxStatus
from tests.conftest import SAMPLES
from tests.gateway.test_mllp import mllp_send, segments

FOLLOWUP = Path(sys.executable).with_name("followup")
STARTUP_SECONDS = 300  # a cold Prefect server migrates its database first
FLOW_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(
    condition: Callable[[], bool], timeout: float, process: subprocess.Popen[bytes]
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        assert process.poll() is None, "followup serve exited early"
        time.sleep(0.5)
    return False


@pytest.mark.prefect
def test_mllp_message_books_a_follow_up_through_prefect(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'followup.db'}"
    prefect_port, mllp_port, http_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_API_PORT": str(prefect_port),
        "FOLLOWUP_MLLP_PORT": str(mllp_port),
        "FOLLOWUP_HTTP_PORT": str(http_port),
    }
    env.pop("PREFECT_API_URL", None)
    subprocess.run([FOLLOWUP, "seed-demo"], env=env, cwd=PROJECT_ROOT, check=True, timeout=300)
    settings = get_settings(database_url=database_url)
    message = tmp_path / "message.hl7"
    message.write_bytes(
        restamp_for_today(
            (SAMPLES / "hl7" / "spine_neurology_root_compression.hl7").read_bytes(),
            now=datetime.now(settings.site_zone),
        )
    )
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [FOLLOWUP, "serve"], env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT
    )

    def booked() -> bool:
        with session_scope(database_url) as session:
            study = session.exec(
                select(ImagingStudy).where(ImagingStudy.accession == "ACC2026000101")
            ).first()
            return study is not None and bool(
                session.exec(select(Appointment).where(Appointment.study_id == study.id)).all()
            )

    def completed_run() -> bool:
        """The scan-completed run the trigger started, named after the accession, is done."""
        response = httpx.post(
            f"http://127.0.0.1:{prefect_port}/api/flow_runs/filter",
            json={"flow_runs": {"name": {"any_": ["scan-ACC2026000101"]}}},
            timeout=10,
        )
        response.raise_for_status()
        return [run["state_type"] for run in response.json()] == ["COMPLETED"]

    try:
        assert wait_until(lambda: listening(mllp_port), STARTUP_SECONDS, serve), "no listener"
        # Deployments are registered after the listener starts; the HTTP port comes up last.
        assert wait_until(lambda: listening(http_port), 60, serve), "engine not up"

        [ack] = mllp_send(message, mllp_port)

        assert segments(ack)["MSA"][1:3] == ["AA", "DEMO-ORU-0001"]
        assert wait_until(completed_run, FLOW_SECONDS, serve), "no completed flow run"
        assert booked()
        with session_scope(database_url) as session:
            [row] = session.exec(select(InboxMessage)).all()
            assert row.status == InboxStatus.PROCESSED
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            returncode = serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
            raise
        log.close()
    assert returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert not listening(prefect_port)  # the Prefect server it started is gone too
    assert not listening(mllp_port)
