"""Shared fixtures: databases (SQLite always, PostgreSQL when a URL is given) and Prefect."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, text

if TYPE_CHECKING:
    from followup.settings import Settings

# Prefect reads PREFECT_HOME when first imported: point it at a throwaway folder before any
# test module imports a flow, so tests never touch the developer's ~/.prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="followup-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)

POSTGRES_URL = os.environ.get("FOLLOWUP_TEST_POSTGRES_URL")
# Third-party messages and specs, vendored with their sources and licences (README there).
THIRD_PARTY = Path(__file__).resolve().parent / "thirdparty"
SAMPLES = Path(__file__).resolve().parent / "samples"


def _postgres_schema_url(base_url: str) -> Iterator[str]:
    """A throwaway schema per test: isolation without creating databases."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        from models.db import get_engine

        get_engine.cache_clear()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL (skipped without a URL)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'followup.db'}"
        return
    if not POSTGRES_URL:
        if os.environ.get("CI") == "true":  # .ci/run sets it: a missing URL is a broken CI
            pytest.fail("FOLLOWUP_TEST_POSTGRES_URL not set under CI")
        pytest.skip("FOLLOWUP_TEST_POSTGRES_URL not set")
    yield from _postgres_schema_url(POSTGRES_URL)


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    from models.db import migrate

    migrate(empty_database_url)
    return empty_database_url


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect API (the test harness's local server), started once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def scan_deployment(prefect_api: None) -> Iterator[uuid.UUID]:
    """scan-completed deployed on the test server, to a work pool no worker serves: the runs
    sweep-inbox creates wait there as Scheduled (live, holding their rows). The deployment's
    runs are deleted before and after the test, since row ids and sample accessions repeat
    from test to test."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.scan_completed import scan_completed
    from followup.warm_worker import ensure_pool

    pool = "sweep-test-unserved"

    async def deploy() -> uuid.UUID:
        async with get_client() as client:
            await ensure_pool(client, pool)
        deployment = await scan_completed.ato_deployment(name="scan-completed", work_pool_name=pool)
        return await deployment.aapply()

    async def delete_runs(deployment_id: uuid.UUID) -> None:
        async with get_client() as client:
            while runs := await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            ):
                for run in runs:
                    await client.delete_flow_run(run.id)

    async def drop_triggers(deployment_id: uuid.UUID) -> None:
        # A trigger another test deployed on the same deployment would start runs of its own.
        async with get_client() as client:
            await client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")

    deployment_id = asyncio.run(deploy())
    asyncio.run(drop_triggers(deployment_id))
    # Runs other tests left on the same deployment (it is one deployment for the whole session)
    # would hold their rows: each test starts from none.
    asyncio.run(delete_runs(deployment_id))
    try:
        yield deployment_id
    finally:
        asyncio.run(delete_runs(deployment_id))


def seed_clinic(database_url: str) -> None:
    """The demo clinic with slots from today, closed on the site's holidays, as `./run` seeds it."""
    from followup.core.scheduling import site_holidays
    from followup.settings import get_settings
    from models.db import session_scope
    from models.seed import seed_demo_clinic

    settings = get_settings(database_url=database_url)
    today = datetime.now(settings.site_zone).date()
    with session_scope(database_url) as session:
        seed_demo_clinic(
            session=session,
            zone=settings.site_zone,
            first_day=today,
            closed_days=site_holidays("US", None, (today.year, today.year + 1)),
        )


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright's own download is not used


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium for the browser tests: skipped without it, except under CI (.ci/run
    installs it), where a missing browser is a broken CI."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} missing under CI (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture(scope="session")
def prefect_ui_server(chromium: Path) -> Iterator[str]:
    """A real `prefect server start` (API and UI) on a free 127.0.0.1 port, shared by the
    browser tests; its base URL. The test harness's server serves no UI."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    base = f"http://127.0.0.1:{port}"
    home = tempfile.mkdtemp(prefix="followup-prefect-ui-")
    env = {
        **os.environ,
        "PREFECT_HOME": home,
        "PREFECT_API_URL": f"{base}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*(sys.executable, "-m", "prefect", "server", "start"), *listen],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("prefect server did not start") from None
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def flow_database_url(database_url: str, monkeypatch: pytest.MonkeyPatch, prefect_api: None) -> str:
    """A migrated database the scan-completed flow runs against: the flow builds its own
    Settings from the environment, as it does under a worker."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url


def run_scan(inbox_id: int) -> dict[str, Any]:
    """Process one accepted inbox row through the scan-completed flow itself (its tasks, tags,
    failure handling, summary and worklist), against the `flow_database_url` fixture's
    database and Prefect API; the run's summary, or the flow's exception."""
    from flows.scan_completed import scan_completed

    return asyncio.run(scan_completed(inbox_id=inbox_id, accession=f"inbox-{inbox_id}"))


def days_after_result(settings: Settings, summary: dict[str, Any]) -> int:
    """Site-calendar days from the study's result time to its follow-up, as the booking window
    counts them. Not from today: tests stamp results half an hour before now
    (`followup.core.demo.restamp_for_today`), which is the day before in a day's first half hour."""
    from models import queries
    from models.db import session_scope

    with session_scope(settings.database_url) as session:
        study = queries.study_by_accession(session=session, accession=summary["accession"])
        assert study is not None and study.final_at is not None
        result_day = study.final_at.astimezone(settings.site_zone).date()
    start = datetime.fromisoformat(summary["appointment"]["start"])
    return (start.astimezone(settings.site_zone).date() - result_day).days
