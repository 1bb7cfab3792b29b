"""Stoplight Prism serving Twilio's own OpenAPI spec of the 2010 API (vendored in
tests/thirdparty/twilio), on a free 127.0.0.1 port: the Twilio contract mock the SMS tests and
bench/bench_sms.py send through. Prism validates every request against the spec (a wrong
parameter, path or missing auth is a 4xx) and answers with data generated from the response
schema (`--dynamic`: each message gets its own random SM… sid). Installed from
tools/twilio-mock/package-lock.json with `npm ci` when node_modules is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from followup.gateway.serve import stop_process

ROOT = Path(__file__).resolve().parents[1]
MOCK_DIR = ROOT / "tools" / "twilio-mock"
SPEC = ROOT / "tests" / "thirdparty" / "twilio" / "twilio_api_v2010.json"
PRISM_STARTUP_SECONDS = 120
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-not-a-secret"


class MockUnavailable(RuntimeError):
    """npm is not installed, so the contract mock cannot be set up."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _install_prism() -> Path:
    prism = MOCK_DIR / "node_modules" / ".bin" / "prism"
    if prism.exists():
        return prism
    npm = shutil.which("npm")
    if npm is None:
        raise MockUnavailable("npm is not installed: cannot install the Prism mock of Twilio")
    subprocess.run([npm, "ci"], cwd=MOCK_DIR, check=True, capture_output=True, timeout=600)
    return prism


def _listening(port: int) -> bool:
    """Prism opens its port once the spec is loaded."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def running_prism() -> Iterator[str]:
    """Prism mocking Twilio's API on a free 127.0.0.1 port; yields its base URL."""
    prism = _install_prism()
    port = free_port()
    handle, name = tempfile.mkstemp(prefix=f"prism-{port}-", suffix=".log")
    os.close(handle)
    log = Path(name)
    with log.open("wb") as output:
        # Warnings only: Prism's per-request info lines cost it more CPU than answering.
        command = [str(prism), "mock", "--dynamic", "-v", "warn", "-h", "127.0.0.1"]
        process = subprocess.Popen(
            [*command, "-p", str(port), str(SPEC)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    try:
        deadline = time.monotonic() + PRISM_STARTUP_SECONDS
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prism did not start: {log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, timeout=10)
        log.unlink(missing_ok=True)
