"""Case 8 of issue 8: oversize, wrongly encoded and hostile input; forged and replayed webhooks.

HL7 v2 goes over a real socket to the production MLLP listener (tests/gateway's fixture) on
SQLite and PostgreSQL; accepted rows then go through the scan-completed flow's steps
(tests/faults/flow_steps.py). Twilio's webhooks go to the production router, signed (or not)
with Twilio's own RequestValidator, as in tests/sms.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text as sql
from sqlmodel import col, select
from twilio.request_validator import RequestValidator

from followup import pipeline
from followup.messaging.replies import REPLY_TASK
from followup.scheduling import site_holidays
from followup.settings import get_settings
from models.db import session_scope
from models.seed import seed_demo_clinic
from models.tables import (
    Escalation,
    ImagingStudy,
    InboxMessage,
    OutboundMessage,
    OutboundStatus,
    Patient,
    Provider,
    TwilioEvent,
)
from tests.faults.counting import check_counts, tally
from tests.faults.messages import sample_message
from tests.flow_steps import run_flow_steps
from tests.gateway.conftest import VT, RunningListener, exchange, read_acks, segments
from tests.sms.conftest import CLINIC_FROM, NOW, PHONE, Clock, World
from tests.sms.test_webhooks import SID, make_gateway
from tests.sms.twilio_mock import ACCOUNT_SID, AUTH_TOKEN


def ack_parts(ack: bytes) -> list[str]:
    return segments(ack)["MSA"][1:3]


def rows(database_url: str) -> list[InboxMessage]:
    with session_scope(database_url) as session:
        return list(session.exec(select(InboxMessage).order_by(col(InboxMessage.id))))


def flow_outcomes(database_url: str) -> dict[str, str]:
    """Run the flow's steps on every accepted row: {accession: "processed" or the error}."""
    outcomes = {}
    for row in rows(database_url):
        if row.status == "received":
            assert row.id is not None and row.accession is not None
            try:
                outcomes[row.accession] = run_flow_steps(database_url, row.id)["status"]
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


def test_over_long_fields_are_refused_or_processed(mllp: RunningListener) -> None:
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


def test_wrongly_encoded_messages_are_answered_stored_and_read(mllp: RunningListener) -> None:
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
    mllp: RunningListener, caplog: pytest.LogCaptureFixture
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


def test_hostile_text_is_stored_verbatim_and_rendered_inertly(mllp: RunningListener) -> None:
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
    summary = run_flow_steps(mllp.database_url, row.id)
    artifact = pipeline.scheduler_markdown(summary)
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
