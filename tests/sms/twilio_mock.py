"""Local stand-ins for Twilio's API for the SMS tests.

* `running_prism()` (tools/prism.py, shared with bench/bench_sms.py): Stoplight Prism serving
  Twilio's own OpenAPI spec of the 2010 API.
* `ScriptedTwilio`: a tiny HTTP server answering the Messages endpoint with scripted status
  codes and Twilio error bodies (429, 500, 21610, 21211 …), or accepting a message and
  answering only after the client gave up (`Answer(201, delay=…)`), which Prism cannot
  produce, so the error paths run through the same official client and TwilioSender. GET on
  the endpoint lists the messages it accepted (newest first, as Twilio does).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tools.prism import ACCOUNT_SID, AUTH_TOKEN, MockUnavailable, free_port, running_prism

__all__ = ["ACCOUNT_SID", "AUTH_TOKEN", "MockUnavailable", "free_port", "running_prism"]


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
