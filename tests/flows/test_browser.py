"""Schedulers act in the real Prefect UI, driven by headless Chromium (Debian's, through
Playwright) against a real `prefect server start`: a review run's form answered and resumed
books the visit; a critical finding is acknowledged from a deployment's parameter form.

The runs the UI creates or resumes are executed here by Prefect's own engine, as the
`followup` pool's runner executes them under `followup serve`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlmodel import select

from followup.services import review
from followup.settings import Settings, get_settings
from models.db import session_scope
from models.tables import Appointment, AuditEvent, Escalation
from tests.conftest import seed_clinic
from tests.flows.conftest import UNKNOWN_PROVIDER, run_sample
from tests.flows.review_runs import create_review_run, execute, form_of, state_of

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True),
]
UI_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(UI_TIMEOUT_MS)
    yield opened
    opened.screenshot(path=str(tmp_path / "last.png"))  # kept by pytest for a failure's look
    context.close()


@pytest.fixture
def ui_settings(
    prefect_ui_server: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    seed_clinic(database_url)
    with temporary_settings({PREFECT_API_URL: f"{prefect_ui_server}/api"}):
        yield get_settings()


T = TypeVar("T")


def elsewhere(call: Callable[[], T]) -> T:
    """Run `call` in a thread of its own (Playwright's sync API keeps an event loop running in
    this one, where asyncio.run refuses), in this thread's context (Prefect's API setting)."""
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(context.run, call).result()


def wait_for_state(flow_run_id: UUID, name: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (state := elsewhere(lambda: asyncio.run(state_of(flow_run_id)))).name != name:
        assert time.monotonic() < deadline, f"flow run still {state.name}, not {name}"
        time.sleep(0.2)


def test_a_review_run_is_answered_in_the_ui_and_the_visit_is_booked(
    ui_settings: Settings, prefect_ui_server: str, page: Any
) -> None:
    summary = elsewhere(
        lambda: run_sample(ui_settings, "spine_inconclusive.hl7", replacing=UNKNOWN_PROVIDER)
    )
    accession = summary["accession"]
    flow_run = elsewhere(lambda: asyncio.run(create_review_run(accession)))
    assert elsewhere(lambda: asyncio.run(execute(flow_run.id))) is None
    schema, _ = elsewhere(lambda: asyncio.run(form_of(flow_run.id)))
    chosen = schema["properties"]["slot"]["enum"][1]

    page.goto(f"{prefect_ui_server}/runs/flow-run/{flow_run.id}")
    page.get_by_role("button", name="Resume").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"Scan {accession} (").wait_for()
    shown = dialog.inner_text()
    assert "ordering provider 1999999999 not in the directory" in shown
    assert "Dr. Okafor (NPI 1000000001)" in shown
    assert " EST · " in shown or " EDT · " in shown
    # The UI's drop-down opens from the keyboard (a scripted click toggles it shut again).
    dialog.locator(".p-label", has_text="Slot to book").locator(
        "button.p-select-button__control"
    ).focus()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name=chosen).click()
    dialog.locator(".p-label", has_text="Your name or user id").locator("textarea").fill("sam.lee")
    dialog.get_by_role("button", name="Submit").click()

    wait_for_state(flow_run.id, "Resuming")
    final = elsewhere(lambda: asyncio.run(execute(flow_run.id)))
    assert final is not None and final.is_completed(), final
    with session_scope(ui_settings.database_url) as session:
        [visit] = session.exec(select(Appointment).where(Appointment.status == "booked")).all()
        assert visit.slot_id == review.slot_id_of(chosen)
        [answered] = session.exec(
            select(AuditEvent).where(AuditEvent.action == "review.answered")
        ).all()
        assert (answered.actor, answered.detail["action"]) == ("sam.lee", review.BOOK)


def test_a_critical_finding_is_acknowledged_from_the_deployment_form(
    ui_settings: Settings, prefect_ui_server: str, page: Any
) -> None:
    from flows.acknowledge_escalation import acknowledge_escalation

    summary = elsewhere(lambda: run_sample(ui_settings, "spine_critical_cord_compression.hl7"))
    [escalation] = summary["escalations"]

    async def deploy() -> UUID:
        deployment = await acknowledge_escalation.ato_deployment(name="acknowledge-escalation")
        return await deployment.aapply()

    deployment_id = elsewhere(lambda: asyncio.run(deploy()))
    page.goto(f"{prefect_ui_server}/deployments/deployment/{deployment_id}/run")
    page.locator(".p-label", has_text="escalation_id").locator("input").fill(str(escalation["id"]))
    page.locator(".p-label", has_text="by").locator("input, textarea").first.fill("dr.brennan")
    page.get_by_role("button", name="Submit").click()

    async def created_run() -> Any:
        async with get_client() as client:
            deadline = time.monotonic() + 30
            while not (
                runs := await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
                )
            ):
                assert time.monotonic() < deadline, "the form created no flow run"
                await asyncio.sleep(0.2)
            [flow_run] = runs
            state = await run_flow(acknowledge_escalation, flow_run=flow_run, return_type="state")  # type: ignore[misc, arg-type]
            return state

    state = elsewhere(lambda: asyncio.run(created_run()))
    assert state.is_completed(), state
    with session_scope(ui_settings.database_url) as session:
        stored = session.get_one(Escalation, escalation["id"])
        assert (stored.status, stored.acknowledged_by) == ("acknowledged", "dr.brennan")
