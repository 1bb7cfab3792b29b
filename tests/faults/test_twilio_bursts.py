"""Fault: Twilio answers bursts of 500 and 429, and every message goes exactly once.

The production dispatcher and TwilioSender, with the official client, talk to a local stand-in
at the HTTP edge: it answers the first requests with Twilio's error bodies (a burst of 500,
then of 429, then of 503) and forwards every later one to Prism serving Twilio's OpenAPI spec,
so what finally goes through is checked against Twilio's contract and gets a real-looking sid.
The dispatcher's clock moves on by its longest backoff between runs, as the minutes would.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx

from followup.services.dispatch import MAX_RETRY_DELAY, DispatchPolicy
from models.tables import OutboundStatus
from tests.faults.counting import check_counts, tally
from tests.sms.conftest import Clock, World, dispatcher, twilio_sender
from tests.sms.twilio_mock import Answer

MESSAGES = 12
BURST = [Answer(500, 20500)] * 8 + [Answer(429, 20429)] * 8 + [Answer(503, 20503)] * 4
CALLBACKS = "https://followup.example.org"


@dataclass
class FlakyTwilio:
    """Answers from `burst` first, then forwards to `upstream`; records every answer."""

    upstream: str
    burst: list[Answer]
    base_url: str = ""
    answers: list[tuple[int, int | None]] = field(default_factory=list)  # (status, outbox id)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        # The outbox row rides in the signed status-callback URL (…?outbound_id=<id>).
        query = parse_qs(urlsplit(form.get("StatusCallback", "")).query)
        outbox_id = int(query["outbound_id"][0]) if "outbound_id" in query else None
        with self.lock:
            scripted = self.burst.pop(0) if self.burst else None
        if scripted is not None:
            status = scripted.status
            payload = (
                f'{{"code": {scripted.code}, "message": "burst", "status": {status}}}'.encode()
            )
        else:
            forwarded = httpx.post(f"{self.upstream}{path}", content=body, headers=headers)
            status, payload = forwarded.status_code, forwarded.content
        with self.lock:
            self.answers.append((status, outbox_id))
        return status, payload


@contextmanager
def flaky_twilio(upstream: str, burst: list[Answer]) -> Iterator[FlakyTwilio]:
    fake = FlakyTwilio(upstream, list(burst))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            forwarded = {
                name: self.headers[name]
                for name in ("Authorization", "Content-Type", "Accept")
                if name in self.headers
            }
            status, payload = fake.answer(self.path, forwarded, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_bursts_of_500_and_429_still_send_every_message_exactly_once(
    world: World, clock: Clock, prism_url: str
) -> None:
    """Fault: Twilio answers the first 20 requests with a burst of 8 HTTP 500, then 8 HTTP 429
    (20429), then 4 HTTP 503, and accepts from then on; 12 messages to 12 patients are due.
    Expected: each message is accepted by Twilio exactly once (12 accepted requests, one per
    outbox row) after 20 refused attempts; every row holds one sid and is `sent`; no row
    failed and no scheduler task was opened."""
    messages = [
        world.message(world.patient(phone=f"+1555555{n:04d}"), to_phone=f"+1555555{n:04d}")
        for n in range(MESSAGES)
    ]
    policy = DispatchPolicy(rate_per_second=1000.0, status_callback_base=CALLBACKS)

    with flaky_twilio(prism_url, BURST) as twilio:
        runs = 0
        while any(world.get(m).status == OutboundStatus.SCHEDULED for m in messages):
            assert runs < 10, "messages still scheduled after 10 dispatcher runs"
            dispatcher(world.database_url, twilio_sender(twilio.base_url), clock, policy).run()
            clock.now += MAX_RETRY_DELAY + timedelta(seconds=1)
            runs += 1

    rows = [world.get(m) for m in messages]
    accepted = Counter(outbox for status, outbox in twilio.answers if status == 201)
    check_counts(
        "4 Twilio 500/429 bursts",
        {
            "twilio_answers": tally(status for status, _ in twilio.answers),
            "accepted_per_message": tally(accepted[m] for m in messages),
            "outbox": tally(row.status for row in rows),
            "sids": len({row.twilio_sid for row in rows if row.twilio_sid}),
            "attempts": sum(row.attempts for row in rows),
            "tasks": len(world.escalations()),
        },
        {
            "twilio_answers": {"201": MESSAGES, "429": 8, "500": 8, "503": 4},
            "accepted_per_message": {"1": MESSAGES},
            "outbox": {OutboundStatus.SENT: MESSAGES},
            "sids": MESSAGES,
            "attempts": MESSAGES + len(BURST),
            "tasks": 0,
        },
    )
