"""Look at the schedulers' view in a real browser: Prefect UI pages in headless Chromium.

Starts a Prefect server on 127.0.0.1 (its own PREFECT_HOME and SQLite), runs the demo against
it, adds a scan whose ordering provider is unknown (so a review run waits for its form) and
registers the deployments schedulers act through. Then Debian's Chromium, driven by
Playwright, renders the flow-run list, a scan summary, the worklist tables, the review form
and each deployment's parameter form; every table is checked for local times with the zone
named and for providers by name with the NPI beside, every form for its fields. Screenshots
go to docs/screenshots/. Everything it starts stops when it ends.

    .venv/bin/python scripts/ui_check.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
LOCAL_TIME = re.compile(r"\d{2}:\d{2} (EST|EDT)")
PROVIDER = re.compile(r"Dr\. [A-Z][a-z]+ \((NPI )?\d{10}\)")
FORMS = {
    "acknowledge-escalation": ("flows/acknowledge_escalation.py", "acknowledge_escalation"),
    "cancel-visit": ("flows/visit_actions.py", "cancel_visit"),
    "move-visit": ("flows/visit_actions.py", "move_visit"),
    "block-provider-time": ("flows/visit_actions.py", "block_provider_time"),
    "retry-inbox-message": ("flows/rerun_inbox_message.py", "retry_inbox_message"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f} s")


def artifact_id(api: str, key: str) -> str:
    """The latest artifact's id: its own page renders the content (the key page only lists)."""
    request = urllib.request.Request(
        f"{api}/artifacts/latest/filter",
        data=json.dumps({"artifacts": {"key": {"any_": [key]}}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        [artifact] = json.load(answer)
    return str(artifact["latest_id"])


async def prepare_review_and_forms() -> tuple[str, dict[str, str]]:
    """A scan with an unknown ordering provider through the flow, its review run suspended
    on its form; the form deployments registered. The review run's id and each deployment's."""
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow
    from prefect.flows import load_flow_from_entrypoint

    from flows.review_scan import review_scan
    from flows.scan_completed import scan_completed
    from followup.core.demo import restamp_for_today
    from followup.services.intake import receive_message
    from followup.settings import get_settings
    from models.db import session_scope

    settings = get_settings()
    raw = (ROOT / "tests/samples/hl7/spine_inconclusive.hl7").read_bytes()
    raw = raw.replace(b"1000000003^Ramanathan^Priya", b"1999999999^Vance^Iris")
    raw = raw.replace(b"ACC2026000108", b"ACC2026000199")
    with session_scope(settings.database_url) as session:
        receipt = receive_message(
            session=session,
            raw=restamp_for_today(raw, now=datetime.now(settings.site_zone)),
            source="ui-check",
            settings=settings,
        )
    assert receipt.run_inbox_id is not None and receipt.accession is not None
    await scan_completed(inbox_id=receipt.run_inbox_id, accession=receipt.accession)

    from prefect import get_client

    deployment = await review_scan.ato_deployment(name="review-scan")
    review_deployment = await deployment.aapply()
    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(
            review_deployment, parameters={"accession": receipt.accession}
        )
    try:
        await run_flow(review_scan, flow_run=flow_run, return_type="state")  # type: ignore[misc, arg-type]
    except Pause:
        pass  # suspended on its form, as intended
    else:
        raise RuntimeError("the review run did not wait for its form")
    forms = {}
    for name, (path, function) in FORMS.items():
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{function}")
        forms[name] = str(await (await flow.ato_deployment(name=name)).aapply())
    return str(flow_run.id), forms


def check(name: str, text: str, must: list[str | re.Pattern[str]]) -> list[str]:
    missing = [
        str(m.pattern if isinstance(m, re.Pattern) else m)
        for m in must
        if (m.search(text) is None if isinstance(m, re.Pattern) else m not in text)
    ]
    print(
        f"{name:28s} docs/screenshots/{name}.png  {'ok' if not missing else f'MISSING {missing}'}"
    )
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    SHOTS.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="followup-ui-") as scratch:
        work = Path(scratch)
        port = free_port()
        ui = f"http://127.0.0.1:{port}"
        api = f"{ui}/api"
        os.environ.update(
            PREFECT_HOME=str(work / "prefect"),
            PREFECT_API_URL=api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DATABASE_URL=f"sqlite:///{work / 'followup.db'}",
        )
        listen = ["--host", "127.0.0.1", "--port", str(port)]
        server = subprocess.Popen(
            [*(sys.executable, "-m", "prefect", "server", "start"), *listen],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(f"{api}/health", 120)
            print("prefect server up; running the demo against it", flush=True)
            subprocess.run([sys.executable, "-m", "followup.cli", "demo"], check=True, cwd=ROOT)
            sys.path.insert(0, str(ROOT))
            review_run, forms = asyncio.run(prepare_review_and_forms())
            return 1 if shoot(args.chromium, ui, api, review_run, forms) else 0
        finally:
            server.terminate()
            server.wait(timeout=30)


def shoot(chromium: str, ui: str, api: str, review_run: str, forms: dict[str, str]) -> list[str]:
    from playwright.sync_api import sync_playwright

    tables: dict[str, tuple[str, list[str | re.Pattern[str]]]] = {
        "flow-runs": (f"{ui}/runs", ["scan-ACC2026000101", "review-ACC2026000199"]),
        "scan-summary": (
            f"{ui}/artifacts/artifact/{artifact_id(api, 'scan-acc2026000101')}",
            ["neurology", "matched rule", LOCAL_TIME, PROVIDER],
        ),
        "worklist-critical": (
            f"{ui}/artifacts/artifact/{artifact_id(api, 'worklist-critical-unacknowledged')}",
            ["ACC2026000105", "critical_finding", LOCAL_TIME, PROVIDER],
        ),
        "worklist-bookings": (
            f"{ui}/artifacts/artifact/{artifact_id(api, 'worklist-bookings-today')}",
            [],
        ),
        "worklist-unbookable": (
            f"{ui}/artifacts/artifact/{artifact_id(api, 'worklist-unbookable')}",
            ["ordering provider 1999999999 not in the directory", LOCAL_TIME],
        ),
    }
    failures: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        for name, (url, must) in tables.items():
            page.goto(url)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
            failures += check(name, page.inner_text("body"), must)

        page.goto(f"{ui}/runs/flow-run/{review_run}")
        page.get_by_role("button", name="Resume").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("a person must decide").wait_for()
        page.screenshot(path=str(SHOTS / "form-review-scan.png"))
        failures += check(
            "form-review-scan",
            dialog.inner_text(),
            ["Slots offered", "What to do", "Your name or user id", LOCAL_TIME, PROVIDER],
        )
        for name, deployment in forms.items():
            page.goto(f"{ui}/deployments/deployment/{deployment}/run")
            page.get_by_role("button", name="Submit").wait_for()
            page.screenshot(path=str(SHOTS / f"form-{name}.png"))
            failures += check(f"form-{name}", page.inner_text("body"), ["by"])
        browser.close()
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
