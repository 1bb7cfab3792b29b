"""Shared fixtures: databases (SQLite always, PostgreSQL when a URL is given) and Prefect."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

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
    sweep-inbox creates wait there as Scheduled (live, holding their rows) and are deleted
    after the test, since row ids and sample accessions repeat from test to test."""
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
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            for run in runs:
                await client.delete_flow_run(run.id)

    deployment_id = asyncio.run(deploy())
    try:
        yield deployment_id
    finally:
        asyncio.run(delete_runs(deployment_id))


def seed_clinic(database_url: str) -> None:
    """The demo clinic with slots from today, closed on the site's holidays, as `./run` seeds it."""
    from datetime import datetime

    from followup.scheduling import site_holidays
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
