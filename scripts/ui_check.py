"""Look at the schedulers' view in a real browser: Prefect UI pages rendered by headless Chromium.

Starts a Prefect server on 127.0.0.1 (its own PREFECT_HOME and SQLite), runs the demo against
it, then has Debian's Chromium render the flow-run list, a scan summary artifact and the
worklist tables. It asserts on the rendered DOM (text a scheduler must see) and saves PNG
screenshots under docs/screenshots/. Everything it starts stops when it ends.

    .venv/bin/python scripts/ui_check.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=15000",
]


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


def render(chromium: str, url: str, *, screenshot: Path | None, profile: Path) -> str:
    """The page's DOM after its scripts ran; a screenshot too when asked."""
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    if screenshot is not None:
        subprocess.run(
            [*base, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=90
        )
    dom = subprocess.run(
        [*base, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=90
    )
    return dom.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    SHOTS.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="followup-ui-") as scratch:
        work = Path(scratch)
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": str(work / "prefect"),
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DATABASE_URL": f"sqlite:///{work / 'followup.db'}",
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(f"{api}/health", 120)
            print("prefect server up; running the demo against it", flush=True)
            subprocess.run(
                [sys.executable, "-m", "followup.cli", "demo"], env=env, check=True, cwd=ROOT
            )
            ui = f"http://127.0.0.1:{port}"
            pages = {
                "flow-runs": (f"{ui}/runs", ["scan-ACC2026000101", "scan-ACC2026000105"]),
                "scan-summary": (
                    f"{ui}/artifacts/artifact/{artifact_id(api, 'scan-acc2026000101')}",
                    ["neurology", "Dr. Okafor", "matched rule"],
                ),
                "worklist-critical": (
                    f"{ui}/artifacts/artifact/"
                    f"{artifact_id(api, 'worklist-critical-unacknowledged')}",
                    ["ACC2026000105", "critical_finding"],
                ),
            }
            failures = []
            for name, (url, must_show) in pages.items():
                shot = SHOTS / f"{name}.png"
                dom = render(args.chromium, url, screenshot=shot, profile=work / f"chrome-{name}")
                missing = [text for text in must_show if text not in dom]
                status = "ok" if not missing else f"MISSING {missing}"
                print(f"{name:20s} {shot.relative_to(ROOT)}  {status}", flush=True)
                if missing:
                    failures.append(name)
            return 1 if failures else 0
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
