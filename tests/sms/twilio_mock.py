"""Local stand-ins for Twilio's API, shared by the SMS tests and bench/bench_sms.py.

* `running_prism()`: Stoplight Prism serving Twilio's own OpenAPI spec of the 2010 API
  (tests/thirdparty/twilio). Prism validates every request against the spec (a wrong parameter,
  path or missing auth is a 4xx) and answers with data generated from the response schema
  (`--dynamic`: each message gets its own random SM… sid). Installed from
  tools/twilio-mock/package-lock.json with `npm ci` when node_modules is missing.
* `ScriptedTwilio`: a tiny HTTP server answering the Messages endpoint with scripted status
  codes and Twilio error bodies (429, 500, 21610, 21211 …), or accepting a message and
  answering only after the client gave up (`Answer(201, delay=…)`), which Prism cannot
  produce, so the error paths run through the same official client and TwilioSender. GET on
  the endpoint lists the messages it accepted (newest first, as Twilio does).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from followup.gateway.serve import stop_process

ROOT = Path(__file__).resolve().parents[2]
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


@dataclass(frozen=True)
class Answer:
    status: int
    code: int | None = None  # Twilio's error code in the JSON body of an error answer
    delay: float = 0.0  # seconds before answering: past the client's timeout, accepted unseen


ACCEPTED = Answer(201)


@dataclass
class ScriptedTwilio:
    """Answers POST …/Messages.json from `script` (then 201s); records each request's form."""

    base_url: str
    script: list[Answer] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    sids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Messages accepted, as the list endpoint returns them; `created_at` dates them (tests
    # pass their clock, so a lookup "since the first attempt" compares like with like).
    accepted: list[dict[str, str]] = field(default_factory=list)
    lookups: list[dict[str, str]] = field(default_factory=list)
    created_at: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def next_answer(self, form: dict[str, str]) -> tuple[Answer, str]:
        with self.lock:
            self.requests.append(form)
            answer = self.script.pop(0) if self.script else ACCEPTED
            sid = "SM" + secrets.token_hex(16)
            if answer.status < 300:
                self.sids.append(sid)
                self.accepted.insert(
                    0,
                    {
                        "sid": sid,
                        "to": form.get("To", ""),
                        "body": form.get("Body", ""),
                        "status": "queued",
                        "date_created": format_datetime(self.created_at(), usegmt=True),
                    },
                )
            return answer, sid

    def listed(self, query: dict[str, str]) -> list[dict[str, str]]:
        with self.lock:
            self.lookups.append(query)
            return [m for m in self.accepted if m["to"] == query.get("To", m["to"])]


def _handler(fake: ScriptedTwilio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            answer, sid = fake.next_answer(form)
            if answer.delay:
                time.sleep(answer.delay)
            body: dict[str, object]
            if answer.status < 300:
                body = {"sid": sid, "status": "queued", "to": form.get("To"), "body": ""}
            else:
                body = {
                    "code": answer.code,
                    "message": "scripted error",
                    "more_info": f"https://www.twilio.com/docs/errors/{answer.code}",
                    "status": answer.status,
                }
            payload = json.dumps(body).encode()
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                # A late answer: the client timed out and hung up, as the test means it to.
                self.close_connection = True

        def do_GET(self) -> None:
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            payload = json.dumps(
                {"messages": fake.listed(query), "next_page_uri": None, "page": 0}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return  # keep test output quiet

    return Handler


@contextmanager
def scripted_twilio() -> Iterator[ScriptedTwilio]:
    fake = ScriptedTwilio("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
