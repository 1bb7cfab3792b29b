"""Faults: oversize, wrongly encoded and hostile input; forged and replayed webhooks.

HL7 v2 goes over a real socket to the production MLLP listener (tests/gateway's fixture) on
SQLite and PostgreSQL; accepted rows then go through the scan-completed flow itself, against
the test harness's Prefect API. Twilio's webhooks go to the production router, signed (or not)
with Twilio's own RequestValidator, as in tests/sms.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text as sql
from sqlmodel import col, select
from twilio.request_validator import RequestValidator

from followup.core.scheduling import site_holidays
from followup.gateway.http import FHIR_JSON, create_app
from followup.services import pipeline
from followup.services.replies import REPLY_TASK
from followup.settings import get_settings
from models.db import session_scope
from models.seed import seed_demo_clinic
from models.tables import (
    Escalation,
    EscalationStatus,
    ImagingStudy,
    InboxMessage,
    OutboundMessage,
    OutboundStatus,
    Patient,
    Provider,
    TwilioEvent,
)
from tests.conftest import SAMPLES, run_scan
from tests.faults.counting import check_counts, tally
from tests.faults.messages import sample_message
from tests.gateway.conftest import VT, RunningListener, exchange, read_acks, segments
from tests.gateway.test_http import serve
from tests.sms.conftest import CLINIC_FROM, NOW, PHONE, Clock, World
from tests.sms.test_webhooks import SID, make_gateway
from tests.sms.twilio_mock import ACCOUNT_SID, AUTH_TOKEN


def ack_parts(ack: bytes) -> list[str]:
    return segments(ack)["MSA"][1:3]


def rows(database_url: str) -> list[InboxMessage]:
    with session_scope(database_url) as session:
        return list(session.exec(select(InboxMessage).order_by(col(InboxMessage.id))))


def flow_outcomes(database_url: str) -> dict[str, str]:
    """Run the scan-completed flow on every accepted row: {accession: "processed" or the
    error}. The test asks for `flow_database_url` (the same database as `mllp`'s)."""
    outcomes = {}
    for row in rows(database_url):
        if row.status == "received":
            assert row.id is not None and row.accession is not None
            try:
                outcomes[row.accession] = run_scan(row.id)["status"]
            except Exception as error:  # counted: the run would fail on this row every time
                outcomes[row.accession] = type(error).__name__
    return outcomes


# --- oversize ----------------------------------------------------------------------------------


def test_a_frame_over_the_size_limit_is_refused_and_the_gateway_keeps_serving(
    mllp: RunningListener,
) -> None:
    """Fault: an MLLP frame 1 KiB over the listener's default limit (8 MiB) with no end
    block in sight, then a normal ORU^R01 on a new connection.
    Expected: the big frame gets one AR and its connection is closed, and nothing of it is
    stored; the next message is answered AA: one inbox row."""
    big = VT + b"MSH|^~\\&|RIS|FAC|FOLLOWUP|FAC|20261208||ORU^R01|BIG-1|P|2.5.1\r"
    limit = get_settings(database_url=mllp.database_url).mllp_max_message_bytes
    big += b"OBX|1|TX|18782-3^Findings^LN|1|" + b"x" * (limit + 1024)
    with mllp.connect(timeout=60) as sock:
        sock.sendall(big)
        refused = read_acks(sock, 1)
        closed = sock.recv(10) == b""
    [accepted] = exchange(mllp, sample_message(accession="ACCBIG01", control_id="OK-1", mrn="B1"))

    check_counts(
        "8 oversize frame",
        {
            "big_frame_acks": [ack_parts(ack)[0] for ack in refused],
            "connection_closed": closed,
            "next_ack": ack_parts(accepted)[0],
            "inbox": tally(row.status for row in rows(mllp.database_url)),
        },
        {
            "big_frame_acks": ["AR"],
            "connection_closed": True,
            "next_ack": "AA",
            "inbox": {"received": 1},
        },
    )


OVER_LONG_FIELDS: dict[str, Callable[[bytes], bytes]] = {
    "PID-3 MRN 100": lambda raw: re.sub(rb"PID\|1\|\|[^^|]*", b"PID|1||" + b"M" * 100, raw),
    "PID-5 family 300": lambda raw: raw.replace(b"Whitaker", b"W" * 300),
    "PID-5 given 300": lambda raw: raw.replace(b"Thomas", b"T" * 300),
    "OBR-4 code 100": lambda raw: raw.replace(b"|72148^", b"|" + b"7" * 100 + b"^"),
    "OBR-4 text 500": lambda raw: re.sub(rb"\^MRI LUMBAR SPINE[A-Z ]*", b"^" + b"P" * 500, raw),
}  # fmt: skip


def test_over_long_fields_are_refused_or_processed(
    mllp: RunningListener, flow_database_url: str
) -> None:
    """Fault: five ORU^R01, each with one field longer than its column: MRN (64), patient
    family and given name (128), procedure code (64) and procedure text (255).
    Expected: each is either refused with AE at intake or accepted and then processed by the
    flow; none is accepted and then fails in the flow."""
    originals = [
        sample_message(accession=f"ACCLONG{n}", control_id=f"LONG-{n}", mrn=f"LONG{n}")
        for n in range(len(OVER_LONG_FIELDS))
    ]
    messages = [
        change(raw) for raw, change in zip(originals, OVER_LONG_FIELDS.values(), strict=True)
    ]
    assert all(m != o for m, o in zip(messages, originals, strict=True))  # each fault is in

    acks = exchange(mllp, *messages)
    outcomes = flow_outcomes(mllp.database_url)

    check_counts(
        "8 over-long fields",
        {
            "acks": len(acks),
            "refused_ae": sum(ack_parts(ack)[0] == "AE" for ack in acks),
            "accepted_then_processed": sum(o == "processed" for o in outcomes.values()),
            "accepted_then_failed": sum(o != "processed" for o in outcomes.values()),
        },
        {
            "acks": len(messages),
            "refused_ae": len(messages) - len(outcomes),
            "accepted_then_processed": len(outcomes),
            "accepted_then_failed": 0,
        },
        shown={"flow": tally(outcomes.values())},
    )


# --- wrongly encoded ---------------------------------------------------------------------------


def _charset(name: bytes) -> Callable[[bytes], bytes]:
    return lambda raw: raw.replace(b"|UNICODE UTF-8", b"|" + name)


def _recoded(codec: str) -> Callable[[bytes], bytes]:
    return lambda raw: raw.decode("utf-8").encode(codec)


# name: (the fault, the answer expected, the family name the flow must store when accepted)
ENCODINGS: dict[str, tuple[Callable[[bytes], bytes], str, str | None]] = {
    "Latin-1 bytes, UTF-8 declared": (
        lambda raw: raw.replace(b"Whitaker", "Whitaké".encode("latin-1")), "AA", "Whitaké"
    ),
    "UTF-8 bytes, 8859/1 declared": (
        lambda raw: _charset(b"8859/1")(raw.replace(b"Whitaker", "Whitakér".encode())),
        "AA",
        "Whitakér",
    ),
    "UTF-8 bytes, BIG-5 declared": (
        lambda raw: _charset(b"BIG-5")(raw.replace(b"Whitaker", "Whitakér😀".encode())),
        "AA",
        "Whitakér😀",
    ),
    "unknown charset declared": (_charset(b"KLINGON"), "AA", "Whitaker"),
    "invalid UTF-8 in the report": (
        lambda raw: raw.replace(b"Paraspinal", b"Para\xff\xfe\xc3spinal"), "AA", "Whitaker"
    ),
    "overlong UTF-8, lone surrogate": (
        lambda raw: raw.replace(b"Paraspinal", b"Para\xc0\xafspinal\xed\xa0\x80"), "AA", "Whitaker"
    ),
    "UTF-8 byte order mark": (lambda raw: b"\xef\xbb\xbf" + raw, "AA", "Whitaker"),
    "CR LF segment separators": (lambda raw: raw.replace(b"\r", b"\r\n"), "AA", "Whitaker"),
    "LF segment separators": (lambda raw: raw.replace(b"\r", b"\n"), "AA", "Whitaker"),
    "UTF-16 with BOM": (_recoded("utf-16"), "AE", None),
    "UTF-32": (_recoded("utf-32"), "AE", None),
    "EBCDIC (cp500)": (_recoded("cp500"), "AE", None),
}  # fmt: skip


def test_wrongly_encoded_messages_are_answered_stored_and_read(
    mllp: RunningListener, flow_database_url: str
) -> None:
    """Fault: twelve ORU^R01 in the wrong or a surprising encoding: bytes not in the declared
    charset, an unknown charset, invalid or overlong UTF-8, BOM, CR LF or LF separators, and
    whole messages in UTF-16, UTF-32 or EBCDIC.
    Expected: nine AA, whose rows the flow processes with the patient's name as the sender
    meant it, and three AE (not HL7 v2 as read); twelve inbox rows with the bytes as sent."""
    sent = [
        fault(sample_message(accession=f"ACCENC{n}", control_id=f"ENC-{n}", mrn=f"ENC{n}"))
        for n, (fault, _, _) in enumerate(ENCODINGS.values())
    ]

    acks = exchange(mllp, *sent)
    stored = rows(mllp.database_url)
    outcomes = flow_outcomes(mllp.database_url)
    with session_scope(mllp.database_url) as session:
        names = {p.mrn: p.family_name for p in session.exec(select(Patient))}
    expected_names = {f"ENC{n}": name for n, (_, _, name) in enumerate(ENCODINGS.values())}

    assert [ack_parts(ack)[0] for ack in acks] == [code for _, code, _ in ENCODINGS.values()]
    check_counts(
        "8 wrongly encoded",
        {
            "acks": tally(ack_parts(ack)[0] for ack in acks),
            "raw_as_sent": sum(r.raw == s for r, s in zip(stored, sent, strict=True)),
            "flow": tally(outcomes.values()),
            "names_as_meant": sum(names.get(m) == n for m, n in expected_names.items() if n),
        },
        {
            "acks": {"AA": 9, "AE": 3},
            "raw_as_sent": 12,
            "flow": {"processed": 9},
            "names_as_meant": 9,
        },
    )


def test_nul_bytes_are_stored_answered_and_processed(
    mllp: RunningListener, flow_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fault: NUL bytes in MSH-10 (control id), MSH-4 (sending facility), PID-5 (name) and
    OBX-5 (report text) of four ORU^R01.
    Expected: each is answered with no error logged by the listener (its catch-all AR for an
    exception from intake), and leaves one inbox row with the bytes as sent; every accepted
    one is processed by the flow."""
    faults: list[Callable[[bytes], bytes]] = [
        lambda raw: raw.replace(b"|NUL-0|", b"|NUL\x00-0|"),
        lambda raw: raw.replace(b"|DEMO_RIS|DEMO_SPINE_NEURO|", b"|DEMO_RIS|DEMO\x00SPINE|", 1),
        lambda raw: raw.replace(b"Whitaker", b"Whit\x00aker"),
        lambda raw: raw.replace(b"Paraspinal", b"Para\x00spinal"),
    ]
    sent = [
        fault(sample_message(accession=f"ACCNUL{n}", control_id=f"NUL-{n}", mrn=f"NUL{n}"))
        for n, fault in enumerate(faults)
    ]
    assert all(b"\x00" in message for message in sent)

    caplog.set_level(logging.ERROR, logger="followup.gateway.mllp")
    acks = exchange(mllp, *sent)
    stored = rows(mllp.database_url)
    outcomes = flow_outcomes(mllp.database_url)

    check_counts(
        "8 NUL bytes",
        {
            "acks": len(acks),
            "listener_errors": sum(r.name == "followup.gateway.mllp" for r in caplog.records),
            "inbox_rows": len(stored),
            "raw_as_sent": sum(r.raw == s for r, s in zip(stored, sent, strict=False)),
            "accepted_then_failed": sum(o != "processed" for o in outcomes.values()),
        },
        {
            "acks": 4,
            "listener_errors": 0,
            "inbox_rows": 4,
            "raw_as_sent": 4,
            "accepted_then_failed": 0,
        },
        shown={
            "ack_codes": tally(ack_parts(ack)[0] for ack in acks),
            "flow": tally(outcomes.values()),
        },
    )


# --- Twilio webhooks: forged and replayed ------------------------------------------------------


def test_forged_webhooks_are_refused_and_replayed_ones_change_nothing(
    database_url: str, world: World, clock: Clock
) -> None:
    """Fault: webhooks Twilio did not sign as sent: no signature; a captured STOP's signature
    on a START; a status callback's signature on /twilio/inbound; a "delivered" callback's
    signature on "failed"; a signed body over 64 KiB. Then a signed STOP and a signed status
    callback, each replayed verbatim three times.
    Expected: 403 for the four forged requests and 413 for the oversize one, with nothing
    stored; the replays are answered 200/204 each time (a verbatim replay cannot be told from
    Twilio's own retry) and acted on once: two stored events, the patient opted out, one
    opt-out answer, the queued reminder cancelled, the sent message delivered."""
    patient = world.patient()
    sent = world.message(patient, status=OutboundStatus.SENDING)
    with session_scope(database_url) as session:
        message = session.get(OutboundMessage, sent)
        assert message is not None
        message.twilio_sid = SID
        session.add(message)
    reminder = world.message(patient, scheduled_for=NOW + timedelta(days=2))
    gateway = make_gateway(database_url, clock=clock)
    stop = {"MessageSid": "SM" + "57" * 16, "AccountSid": ACCOUNT_SID, "From": PHONE,
            "To": CLINIC_FROM, "Body": "STOP"}  # fmt: skip
    start = {**stop, "Body": "START"}
    delivered = {"MessageSid": SID, "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID}
    failed = {**delivered, "MessageStatus": "failed"}
    status_signature = RequestValidator(AUTH_TOKEN).compute_signature(
        f"{gateway.base}/twilio/status", stop
    )
    answers = [
        gateway.post("/twilio/inbound", stop, signature=""),
        gateway.post("/twilio/inbound", start, signed_params=stop),
        gateway.post("/twilio/inbound", stop, signature=status_signature),
        gateway.post("/twilio/status", failed, signed_params=delivered),
        gateway.post("/twilio/inbound", {**stop, "Body": "x" * (65 * 1024)}),
    ]
    forged_events = len(twilio_events(database_url))
    answers += [gateway.post("/twilio/inbound", stop) for _ in range(3)]
    answers += [gateway.post("/twilio/status", delivered) for _ in range(3)]

    replies = [m.kind for m in world.messages() if m.idempotency_key.startswith("reply:")]
    check_counts(
        "8 forged and replayed webhooks",
        {
            "answers": tally(a.status_code for a in answers),
            "events_after_forged": forged_events,
            "events": tally(e.kind for e in twilio_events(database_url)),
            "opted_out": world.get_patient(patient).sms_opt_out,
            "replies": tally(replies),
            "reminder": world.get(reminder).status,
            "sent_message": world.get(sent).status,
        },
        {
            "answers": {"200": 3, "204": 3, "403": 4, "413": 1},
            "events_after_forged": 0,
            "events": {"inbound": 1, "status": 1},
            "opted_out": True,
            "replies": {"opt_out_confirmation": 1},
            "reminder": OutboundStatus.CANCELLED,
            "sent_message": OutboundStatus.DELIVERED,
        },
    )


def twilio_events(database_url: str) -> list[TwilioEvent]:
    with session_scope(database_url) as session:
        return list(session.exec(select(TwilioEvent)))


# --- hostile text ------------------------------------------------------------------------------

# Template code that would print "pwned" or "QQQ" if anything evaluated it, and SQL that would
# drop a table if anything pasted it into a statement; each under its column's length.
HOSTILE_FAMILY = "{{ 'pw' ~ 'ned' }}{% for c in 'abc' %}Q{% endfor %}'); DROP TABLE patient;--"
HOSTILE_GIVEN = '{% raw %}Bobby"; DELETE FROM appointment; --'
HOSTILE_PROVIDER = "{{ 'pw' ~ 'ned' }} {% include 'x' %}'; DROP TABLE provider;--"
HOSTILE_REPORT = "4. {{ config }} {{ 'pw' ~ 'ned' }} {% for c in 'abc' %}Q{% endfor %} "
HOSTILE_REPORT += "Robert'); DROP TABLE imaging_study;--"
EVALUATED = ("pwned", "QQQ")


def hl7_escape(value: str) -> str:
    """As the RIS writes text holding HL7 delimiters (Jinja's `~` is the repetition one)."""
    for delimiter, escape in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"),
                              ("&", "\\T\\"), ("~", "\\R\\")):  # fmt: skip
        value = value.replace(delimiter, escape)
    return value


def test_hostile_text_is_stored_verbatim_and_rendered_inertly(
    mllp: RunningListener, flow_database_url: str
) -> None:
    """Fault: template syntax (Jinja {{ }} and {% %}) and SQL (`'); DROP TABLE …;--`) in the
    patient's names and the report (from the RIS), in the ordering provider's name (from the
    directory: it is printed in every SMS), and in a patient's text back.
    Expected: the message is accepted and processed; names, report and text are stored
    verbatim; the three SMS and the schedulers' artifact show the provider's name literally,
    nothing in them was evaluated; every table is still there, the reply opened one task."""
    settings = get_settings(database_url=mllp.database_url)
    today = datetime.now(settings.site_zone).date()
    with session_scope(mllp.database_url) as session:
        seed_demo_clinic(
            session=session,
            zone=settings.site_zone,
            first_day=today,
            closed_days=site_holidays("US", None, (today.year, today.year + 1)),
        )
        provider = session.exec(select(Provider).where(Provider.npi == "1000000003")).one()
        provider.family_name = HOSTILE_PROVIDER
        session.add(provider)
    raw = sample_message(accession="ACCHOSTILE1", control_id="HOSTILE-1", mrn="HOSTILE1")
    name = f"{hl7_escape(HOSTILE_FAMILY)}^{hl7_escape(HOSTILE_GIVEN)}"
    raw = raw.replace(b"Whitaker^Thomas", name.encode())
    impression = f"OBX|17|TX|19005-8^Impression^LN|2|{hl7_escape(HOSTILE_REPORT)}||||||F"
    raw = raw.rstrip(b"\r") + b"\r" + impression.encode()

    [ack] = exchange(mllp, raw)
    [row] = rows(mllp.database_url)
    assert row.id is not None
    summary = run_scan(row.id)
    artifact = pipeline.scheduler_markdown(summary, zone=settings.site_zone)
    with session_scope(mllp.database_url) as session:
        bodies = [message.body for message in session.exec(select(OutboundMessage))]
    reply_text = "{{ 'pw' ~ 'ned' }} '); DROP TABLE outbound_message;--"
    replied = make_gateway(mllp.database_url).text(reply_text, phone="+15085550145")

    with session_scope(mllp.database_url) as session:
        patient = session.exec(select(Patient).where(Patient.mrn == "HOSTILE1")).one()
        study = session.exec(select(ImagingStudy)).one()
        [event] = session.exec(select(TwilioEvent)).all()
        tasks = [task.kind for task in session.exec(select(Escalation))]
        tables = {
            name: session.execute(sql(f"SELECT count(*) FROM {name}")).scalar_one()
            for name in ("patient", "provider", "imaging_study", "appointment", "outbound_message")
        }
    outputs = [*bodies, artifact]
    check_counts(
        "8 hostile text",
        {
            "ack": ack_parts(ack)[0],
            "flow": summary["status"],
            "stored_verbatim": [
                patient.family_name == HOSTILE_FAMILY,
                patient.given_name == HOSTILE_GIVEN,
                HOSTILE_REPORT in study.report_text,
                event.params["Body"] == reply_text,
            ],
            "sms": len(bodies),
            "outputs_with_provider_literal": sum(HOSTILE_PROVIDER in out for out in outputs),
            "outputs_evaluated": sum(any(e in out for e in EVALUATED) for out in outputs),
            "reply": (replied.status_code, tally(tasks)),
            "tables": tables,
        },
        {
            "ack": "AA",
            "flow": "processed",
            "stored_verbatim": [True, True, True, True],
            "sms": 3,
            "outputs_with_provider_literal": 4,
            "outputs_evaluated": 0,
            "reply": (200, {REPLY_TASK: 1}),
            "tables": {
                "patient": 1,
                "provider": 5,
                "imaging_study": 1,
                "appointment": 1,
                "outbound_message": 3,
            },
        },
    )


# --- the HTTP gateway's limits, as a real `followup gateway` process ---------------------------

GATEWAY_TOKEN = "gateway-token-for-the-fault-cases"
PUBLIC_BASE = "https://followup.example.org"
FORM = "application/x-www-form-urlencoded"
MIB = 1024 * 1024


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    mllp_port: int
    log: Path

    def rss_kib(self, field: str) -> int:
        """VmRSS (now) or VmHWM (peak since the last reset) of the process, in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)[1])  # type: ignore[index]

    def reset_peak_rss(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # resets VmHWM (Linux)

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[GatewayProcess]:
    """`followup gateway` as an operator starts it with Twilio and a token configured; its
    events go to a Prefect API where nothing listens (no case here gets as far as an event
    but the forged accession's, whose emission fails in the background)."""
    http_port, mllp_port, log = _free_port(), _free_port(), tmp_path / "gateway.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "followup.cli", "gateway"],
            cwd=Path(__file__).resolve().parents[2],
            env={
                **os.environ,
                "DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
                "PREFECT_API_URL": f"http://127.0.0.1:{_free_port()}/api",
                "FOLLOWUP_MLLP_PORT": str(mllp_port),
                "FOLLOWUP_HTTP_PORT": str(http_port),
                "FOLLOWUP_HTTP_TOKEN": GATEWAY_TOKEN,
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                "TWILIO_FROM": CLINIC_FROM,
                "FOLLOWUP_TWILIO_WEBHOOK_BASE_URL": PUBLIC_BASE,
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    running = GatewayProcess(process, http_port, mllp_port, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not answer /healthz"
            time.sleep(0.2)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def raw_post(
    port: int,
    path: str,
    *,
    headers: dict[str, str],
    chunked_bytes: int = 0,
    chunk_bytes: int = MIB,
) -> tuple[int | None, int]:
    """POST over a plain socket, streaming `chunked_bytes` of body in chunks (or none, with the
    headers as given); (the answer's status or None, body bytes the server let in).

    The answer is read by a thread while the body streams: a server that refuses early answers
    and closes, and its answer must not be lost under the reset the unsent rest then causes.
    """
    answer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def read() -> None:
            with contextlib.suppress(OSError):
                while data := sock.recv(65536):
                    answer.extend(data)

        reader = threading.Thread(target=read)
        reader.start()
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if chunked_bytes:
            head.append("Transfer-Encoding: chunked")
        sent = 0
        with contextlib.suppress(OSError):  # the server closed: it refused the rest
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            piece = b"%x\r\n" % chunk_bytes + b"a" * chunk_bytes + b"\r\n"
            while sent < chunked_bytes:
                sock.sendall(piece)
                sent += chunk_bytes
            if chunked_bytes:
                sock.sendall(b"0\r\n\r\n")
        reader.join(30)
    status = re.match(rb"HTTP/1\.1 (\d{3}) ", bytes(answer))
    return (int(status[1]) if status else None), sent


def test_unauthenticated_bodies_of_200_mib_leave_the_gateway_s_memory_alone(
    gateway_process: GatewayProcess,
) -> None:
    """Fault: 200 MiB chunked bodies, without credentials, to every route that takes a body:
    a Twilio status callback unsigned and with a well-formed signature that is not Twilio's,
    FHIR intake without a token, an escalation acknowledgement without a token; then a FHIR
    request declaring 200 MiB in Content-Length and sending nothing.
    Expected: each is refused (403, 413, 401, 401, 413), the declared one at once; the gateway
    process (which also ACKs MLLP) grows by at most 64 MiB of peak RSS over all of them, and
    still answers /healthz. A body read whole before its limit is checked, the first one alone
    would grow it by ~400 MiB."""
    port = gateway_process.http_port
    forged = {"X-Twilio-Signature": "A" * 27 + "=", "Content-Type": FORM}
    cases = {
        "twilio unsigned": ("/twilio/status", {"Content-Type": FORM}),
        "twilio forged": ("/twilio/status", forged),
        "fhir no token": ("/fhir", {"Content-Type": "application/fhir+json"}),
        "ack no token": ("/escalations/1/ack", {"Content-Type": "application/json"}),
    }
    rss_before = gateway_process.rss_kib("VmRSS")
    gateway_process.reset_peak_rss()
    started = time.monotonic()
    answers = {
        name: raw_post(port, path, headers=headers, chunked_bytes=200 * MIB)
        for name, (path, headers) in cases.items()
    }
    declared_at = time.monotonic()
    declared = raw_post(port, "/fhir/DiagnosticReport", headers={
        "Authorization": f"Bearer {GATEWAY_TOKEN}", "Content-Length": str(200 * MIB)})  # fmt: skip
    declared_seconds = time.monotonic() - declared_at
    peak_growth_mib = (gateway_process.rss_kib("VmHWM") - rss_before) / 1024
    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code

    check_counts(
        "19 200 MiB unauthenticated bodies",
        {
            "answers": {name: status for name, (status, _) in answers.items()},
            "declared_200_mib": declared[0],
            "declared_answered_at_once": declared_seconds < 5,
            "peak_rss_growth_within_64_mib": peak_growth_mib <= 64,
            "healthz": health,
        },
        {
            "answers": {
                "twilio unsigned": 403,
                "twilio forged": 413,
                "fhir no token": 401,
                "ack no token": 401,
            },
            "declared_200_mib": 413,
            "declared_answered_at_once": True,
            "peak_rss_growth_within_64_mib": True,
            "healthz": 200,
        },
        shown={
            "peak_rss_growth_mib": round(peak_growth_mib, 1),
            "mib_let_in": {name: sent // MIB for name, (_, sent) in answers.items()},
            "seconds": round(time.monotonic() - started, 1),
        },
    )


FORGED_LINE = "INFO gateway: inbox 9 accepted FORGED"


def test_a_forged_line_in_an_accession_stays_in_its_own_log_line(
    gateway_process: GatewayProcess,
) -> None:
    """Fault: an accession ending in CR LF and a line that reads like the gateway's own, once
    in a FHIR identifier (JSON "\\r\\n") and once in an ORU^R01's OBR-3 (the HL7 escape
    `\\X0D0A\\`), both sent to a real `followup gateway` process that logs accessions.
    Expected: each message is answered (201; an ACK) and its log line holds the forged text
    escaped (`\\r\\n`); no line of the log starts with it."""
    report = json.loads((SAMPLES / "fhir" / "diagnosticreport_contained.json").read_text())
    for identifier in report["identifier"]:
        identifier["value"] += f"\r\n{FORGED_LINE}"
    stored = httpx.post(
        f"http://127.0.0.1:{gateway_process.http_port}/fhir",
        json=report,
        headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"},
        timeout=30,
    )
    oru = sample_message(accession="ACCFORGED1", control_id="FORGED-1", mrn="FORGED1")
    oru = oru.replace(b"ACCFORGED1", b"ACC1\\X0D0A\\" + FORGED_LINE.encode())
    with socket.create_connection(("127.0.0.1", gateway_process.mllp_port), timeout=30) as sock:
        sock.sendall(VT + oru + b"\x1c\r")
        acks = read_acks(sock, 1)
    holding = [line for line in gateway_process.log_lines() if "FORGED" in line]

    check_counts(
        "19 forged log lines",
        {
            "fhir_answer": stored.status_code,
            "hl7_acks": len(acks),
            "lines_starting_with_the_forged_text": sum(
                line.startswith(FORGED_LINE) for line in holding
            ),
            "fhir_line_escaped": sum(
                "followup.gateway.http" in line and f"\\r\\n{FORGED_LINE}" in line
                for line in holding
            ),
            "lines_unescaped": sum(f"\\r\\n{FORGED_LINE}" not in line for line in holding),
        },
        {
            "fhir_answer": 201,
            "hl7_acks": 1,
            "lines_starting_with_the_forged_text": 0,
            "fhir_line_escaped": 1,
            "lines_unescaped": 0,
        },
        shown={"lines": holding},
    )


@pytest.fixture
def fhir_gateway(database_url: str) -> Iterator[str]:
    """The production HTTP app (FHIR, acknowledgements) under uvicorn on 127.0.0.1, with a
    token and the default limits."""
    settings = get_settings(database_url=database_url, FOLLOWUP_HTTP_TOKEN=GATEWAY_TOKEN)
    yield from serve(create_app(settings, on_accepted=lambda _receipt: None))


def post_fhir(base_url: str, body: bytes) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{base_url}/fhir",
        content=body,
        headers={"Authorization": f"Bearer {GATEWAY_TOKEN}", "Content-Type": FHIR_JSON},
        timeout=120,
    )
    return response, time.monotonic() - started


def test_deep_json_and_crowded_bundles_are_refused_before_they_cost(
    fhir_gateway: str, database_url: str
) -> None:
    """Fault: a DiagnosticReport with an extension nested 100,000 arrays deep (sent twice, as a
    RIS retrying a 5xx would), a Bundle of 1,000 entries (its report and 995 more Patients), and
    a normal report whose conclusion holds 10,000 brackets as text.
    Expected: the deep one is answered 400 naming the depth limit both times and stored
    neither time (parsed, it would raise RecursionError: a 503, and a `received` row the sweep
    would re-submit forever); the Bundle is answered 400 naming the entry limit within seconds
    (validating it whole takes ~30 s) and stored as refused, never as received; the brackets in
    text are only text: 201. One row received, one refused."""
    report = json.loads((SAMPLES / "fhir" / "diagnosticreport_contained.json").read_text())
    deep = json.dumps({**report, "extension": "NEST"}).encode()
    deep = deep.replace(b'"NEST"', b"[" * 100_000 + b"]" * 100_000)
    bundle = json.loads((SAMPLES / "fhir" / "bundle_transaction.json").read_text())
    patient = bundle["entry"][0]
    bundle["entry"] += [
        {**patient, "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}"} for n in range(995)
    ]
    bracketed = {**report, "conclusion": report["conclusion"] + " " + "[{" * 5_000}

    deep_answers = [post_fhir(fhir_gateway, deep)[0] for _ in range(2)]
    crowded, crowded_seconds = post_fhir(fhir_gateway, json.dumps(bundle).encode())
    text_only, _ = post_fhir(fhir_gateway, json.dumps(bracketed).encode())

    def diagnostics(response: httpx.Response) -> str:
        return str(response.json()["issue"][0]["diagnostics"])

    check_counts(
        "19 deep JSON and crowded Bundles",
        {
            "deep": [(a.status_code, "deeper than 64" in diagnostics(a)) for a in deep_answers],
            "crowded_bundle": (crowded.status_code, "at most 100" in diagnostics(crowded)),
            "crowded_refused_within_5_s": crowded_seconds < 5,
            "brackets_in_text": text_only.status_code,
            "inbox": tally(row.status for row in rows(database_url)),
        },
        {
            "deep": [(400, True), (400, True)],
            "crowded_bundle": (400, True),
            "crowded_refused_within_5_s": True,
            "brackets_in_text": 201,
            "inbox": {"received": 1, "rejected": 1},
        },
        shown={"crowded_seconds": round(crowded_seconds, 2)},
    )


def test_a_signature_made_for_another_url_is_refused(database_url: str, world: World) -> None:
    """Fault: status callbacks signed with the right auth token for a URL that is not the
    gateway's public one: to a gateway with no FOLLOWUP_TWILIO_WEBHOOK_BASE_URL, signed for the
    URL as it received them (whose host the caller's Host header chose); to one with the base
    URL, signed for the same path on another host and sent with that Host header.
    Expected: 403 each, nothing stored, the message still `sending` (checked against the URL as
    received, the first would be accepted, 204, and the message marked `sent`); the
    same callback signed for the public URL is then accepted (204)."""
    message_id = world.message(world.patient(), status=OutboundStatus.SENDING)
    with session_scope(database_url) as session:
        message = session.get(OutboundMessage, message_id)
        assert message is not None
        message.twilio_sid = SID
        session.add(message)
    params = {"MessageSid": SID, "MessageStatus": "sent", "AccountSid": ACCOUNT_SID}
    no_base = make_gateway(database_url, public_base=None)
    as_received = no_base.post("/twilio/status", params, signature=RequestValidator(
        AUTH_TOKEN).compute_signature("http://testserver/twilio/status", params))  # fmt: skip
    with_base = make_gateway(database_url, public_base=PUBLIC_BASE)
    other_host = with_base.client.post(
        "/twilio/status",
        content=urlencode(params),
        headers={
            "Host": "attacker.example",
            "Content-Type": FORM,
            "X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(
                "http://attacker.example/twilio/status", params
            ),
        },
    )
    forged_events = len(twilio_events(database_url))
    forged_status = world.get(message_id).status
    genuine = with_base.post("/twilio/status", params)

    check_counts(
        "19 signature for another URL",
        {
            "answers": [as_received.status_code, other_host.status_code, genuine.status_code],
            "events_after_forged": forged_events,
            "status_after_forged": forged_status,
            "status_after_genuine": world.get(message_id).status,
        },
        {
            "answers": [403, 403, 204],
            "events_after_forged": 0,
            "status_after_forged": OutboundStatus.SENDING,
            "status_after_genuine": OutboundStatus.SENT,
        },
    )


def test_state_changing_routes_never_run_without_a_token(database_url: str) -> None:
    """Fault: FOLLOWUP_HTTP_TOKEN set empty or blank (a template left `FOLLOWUP_HTTP_TOKEN=`),
    and a gateway with no token at all, sent a FHIR report and an escalation acknowledgement
    with an empty bearer token.
    Expected: the empty and the blank token are refused by the settings (taken as configured,
    the empty one would match a bearer with nothing after it and the report be accepted);
    without a token, FHIR intake and the acknowledgement answer 403: no inbox row, the
    escalation still open."""
    with session_scope(database_url) as session:
        critical = Escalation(kind="critical_finding", reason="cord compression", target="npi:1")
        session.add(critical)
        session.flush()
        escalation_id = critical.id
    refused = 0
    for blank in ("", "   "):
        try:
            get_settings(database_url=database_url, FOLLOWUP_HTTP_TOKEN=blank)
        except ValidationError:
            refused += 1
    body = (SAMPLES / "fhir" / "diagnosticreport_contained.json").read_bytes()
    empty_bearer = {"Authorization": "Bearer", "Content-Type": FHIR_JSON}
    answers = []
    for base_url in serve(create_app(get_settings(database_url=database_url),
                                     on_accepted=lambda _receipt: None)):  # fmt: skip
        answers.append(httpx.post(f"{base_url}/fhir", content=body, headers=empty_bearer))
        answers.append(httpx.post(f"{base_url}/escalations/{escalation_id}/ack",
                                  json={"by": "intruder"}, headers=empty_bearer))  # fmt: skip
    with session_scope(database_url) as session:
        escalation = session.get(Escalation, escalation_id)
        assert escalation is not None

    check_counts(
        "19 no token",
        {
            "blank_tokens_refused_by_settings": refused,
            "answers": [answer.status_code for answer in answers],
            "inbox_rows": len(rows(database_url)),
            "escalation": escalation.status,
        },
        {
            "blank_tokens_refused_by_settings": 2,
            "answers": [403, 403],
            "inbox_rows": 0,
            "escalation": EscalationStatus.OPEN,
        },
    )
