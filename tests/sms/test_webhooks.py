"""POST /twilio/status and /twilio/inbound, signed with Twilio's RequestValidator."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import col, select
from twilio.request_validator import RequestValidator

from followup.core.worklist import CRITICAL_KINDS
from followup.gateway import twilio_webhooks
from followup.gateway.serve import gateway_app
from followup.gateway.twilio_webhooks import twilio_router
from followup.messaging.sender import SmsSender
from followup.services import visits
from followup.services.dispatch import UNDELIVERABLE_TASK
from followup.services.replies import REPLY_TASK, RESCHEDULE_TASK, WORSENING_TASK
from models import messaging_queries as mq
from models import worklist
from models.db import session_scope
from models.tables import (
    Appointment,
    Escalation,
    ImagingStudy,
    InboxMessage,
    OutboundStatus,
    RescheduleHold,
    Slot,
    TwilioEvent,
    WaitlistOffer,
)
from tests.sms.conftest import (
    CLINIC_FROM,
    NOW,
    PHONE,
    Clock,
    RecordingSender,
    World,
    dispatcher,
    twilio_sender,
    twilio_settings,
)
from tests.sms.twilio_mock import ACCOUNT_SID, AUTH_TOKEN

PUBLIC = "https://followup.example.org"
SID = "SM" + "ab" * 16


@dataclass
class Gateway:
    client: TestClient
    base: str  # the URL Twilio signs: what it called

    def post(
        self,
        path: str,
        params: dict[str, str],
        *,
        query: str = "",
        signature: str | None = None,
        signed_params: dict[str, str] | None = None,
    ) -> httpx.Response:
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        if signature is None:
            signature = RequestValidator(AUTH_TOKEN).compute_signature(
                url, signed_params if signed_params is not None else params
            )
        return self.client.post(
            path + (f"?{query}" if query else ""),
            content=urlencode(params),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature,
            },
        )

    def status(self, sid: str, status: str, *, error: str | None = None, query: str = "") -> int:
        params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": ACCOUNT_SID}
        if error:
            params["ErrorCode"] = error
        return self.post("/twilio/status", params, query=query).status_code

    def text(
        self, body: str, *, sid: str = SID, phone: str = PHONE, opt_out_type: str | None = None
    ) -> httpx.Response:
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "AccountSid": ACCOUNT_SID,
            "From": phone,
            "To": CLINIC_FROM,
            "Body": body,
            "NumMedia": "0",
            "SmsStatus": "received",
        }
        if opt_out_type:
            params["OptOutType"] = opt_out_type
        return self.post("/twilio/inbound", params)


def make_gateway(
    database_url: str,
    *,
    public_base: str | None = PUBLIC,
    sender: SmsSender | None = None,
    token: str | None = AUTH_TOKEN,
    clock: Clock | None = None,
    on_tasks_opened: Callable[[Sequence[int]], object] | None = None,
) -> Gateway:
    settings = twilio_settings(
        "http://127.0.0.1:9",
        twilio_auth_token=token,
        twilio_webhook_base_url=public_base,
        database_url=database_url,
    )
    app = FastAPI()
    app.include_router(
        twilio_router(
            settings,
            database_url=database_url,
            sender=sender,
            on_tasks_opened=on_tasks_opened,
            clock=clock or Clock(),
        )
    )
    return Gateway(TestClient(app), public_base or PUBLIC)


@pytest.fixture
def gateway(database_url: str, clock: Clock) -> Iterator[Gateway]:
    gateway = make_gateway(database_url, clock=clock)
    with gateway.client:
        yield gateway


def sent_message(world: World, **values: object) -> int:
    """A message already handed to Twilio under SID."""
    message_id = world.message(world.patient(), **values)  # type: ignore[arg-type]
    with session_scope(world.database_url) as session:
        message = mq.get_message(session=session, message_id=message_id)
        message.status, message.twilio_sid, message.sent_at = OutboundStatus.SENDING, SID, NOW
        session.add(message)
    return message_id


def events(world: World) -> list[TwilioEvent]:
    with session_scope(world.database_url) as session:
        return list(session.exec(select(TwilioEvent).order_by(col(TwilioEvent.id))))


# --- signatures --------------------------------------------------------------------------------


def test_a_signed_status_callback_moves_the_message_on(gateway: Gateway, world: World) -> None:
    message_id = sent_message(world)

    assert gateway.status(SID, "sent") == 204
    assert gateway.status(SID, "delivered") == 204

    assert world.get(message_id).status == OutboundStatus.DELIVERED
    assert [(e.message_status, e.outbound_id) for e in events(world)] == [
        ("sent", message_id),
        ("delivered", message_id),
    ]


@pytest.mark.parametrize(
    "signature",
    ["", "bm90IGEgc2lnbmF0dXJl", RequestValidator("another-token").compute_signature("x", {})],
)
def test_an_unsigned_or_wrongly_signed_request_is_refused_and_changes_nothing(
    gateway: Gateway, world: World, signature: str
) -> None:
    message_id = sent_message(world)
    params = {"MessageSid": SID, "MessageStatus": "delivered"}

    assert gateway.post("/twilio/status", params, signature=signature).status_code == 403
    assert gateway.post("/twilio/inbound", {"MessageSid": SID, "From": PHONE, "Body": "STOP"},
                        signature=signature).status_code == 403  # fmt: skip
    assert world.get(message_id).status == OutboundStatus.SENDING
    assert events(world) == []


def test_a_tampered_body_fails_the_signature(gateway: Gateway, world: World) -> None:
    message_id = sent_message(world)
    signed = {"MessageSid": SID, "MessageStatus": "sent"}
    sent = {"MessageSid": SID, "MessageStatus": "delivered"}

    response = gateway.post("/twilio/status", sent, signed_params=signed)

    assert response.status_code == 403
    assert world.get(message_id).status == OutboundStatus.SENDING


def test_without_an_auth_token_every_webhook_is_refused(database_url: str, world: World) -> None:
    gateway = make_gateway(database_url, token=None)

    assert gateway.status(SID, "sent") == 403
    assert gateway.text("STOP").status_code == 403


def test_behind_a_proxy_the_public_url_is_what_is_signed(database_url: str, world: World) -> None:
    message_id = sent_message(world)
    behind_proxy = make_gateway(database_url, public_base=PUBLIC)
    as_received = Gateway(behind_proxy.client, "http://testserver")

    assert as_received.status(SID, "sent") == 403
    assert behind_proxy.status(SID, "sent") == 204
    assert world.get(message_id).status == OutboundStatus.SENT


# --- status callbacks --------------------------------------------------------------------------


def test_a_repeated_callback_is_stored_once_and_changes_nothing(
    gateway: Gateway, world: World
) -> None:
    message_id = sent_message(world)

    assert [gateway.status(SID, "undelivered", error="30006") for _ in range(3)] == [204] * 3

    assert len(events(world)) == 1
    assert len(world.escalations()) == 1
    assert world.get(message_id).status == OutboundStatus.UNDELIVERED


def test_callbacks_out_of_order_never_move_a_message_back(gateway: Gateway, world: World) -> None:
    message_id = sent_message(world)

    for status in ("delivered", "sent", "queued", "sending"):
        gateway.status(SID, status)

    assert world.get(message_id).status == OutboundStatus.DELIVERED
    assert len(events(world)) == 4  # every report is kept, whatever it changed


def test_a_callback_that_beats_the_sid_finds_its_row_by_the_signed_id(
    gateway: Gateway, world: World
) -> None:
    message_id = world.message(world.patient())
    with session_scope(world.database_url) as session:
        assert mq.claim_due_messages(session=session, now=NOW, limit=1) == [message_id]

    assert gateway.status(SID, "sent", query=f"outbound_id={message_id}") == 204

    message = world.get(message_id)
    assert (message.twilio_sid, message.status) == (SID, OutboundStatus.SENT)


def test_the_id_hint_cannot_move_a_row_that_belongs_to_another_sid(
    gateway: Gateway, world: World
) -> None:
    message_id = sent_message(world)
    other = "SM" + "cd" * 16

    assert gateway.status(other, "delivered", query=f"outbound_id={message_id}") == 204

    assert (world.get(message_id).twilio_sid, world.get(message_id).status) == (SID, "sending")
    assert events(world)[0].outbound_id is None


def test_an_unreachable_handset_is_tried_again_a_few_times_then_a_person_calls(
    gateway: Gateway, world: World
) -> None:
    message_id = sent_message(world, key="appt:1:reminder:d1")

    gateway.status(SID, "undelivered", error="30003")

    again = world.messages()[-1]
    assert world.get(message_id).status == OutboundStatus.UNDELIVERED
    assert (again.idempotency_key, again.status, again.body) == (
        "appt:1:reminder:d1:redeliver1",
        OutboundStatus.SCHEDULED,
        world.get(message_id).body,
    )
    assert again.scheduled_for > NOW
    for number in (1, 2):
        sid = f"SM{number:032x}"
        with session_scope(world.database_url) as session:
            row = mq.get_message(session=session, message_id=world.messages()[-1].id or 0)
            row.status, row.twilio_sid = OutboundStatus.SENDING, sid
            session.add(row)
        gateway.status(sid, "undelivered", error="30003")

    keys = [m.idempotency_key for m in world.messages()]
    assert keys == ["appt:1:reminder:d1", "appt:1:reminder:d1:redeliver1",
                    "appt:1:reminder:d1:redeliver2"]  # fmt: skip
    assert [e.kind for e in world.escalations()] == [UNDELIVERABLE_TASK]


@pytest.mark.parametrize(("status", "code"), [("failed", "30006"), ("undelivered", "30005")])
def test_a_landline_or_unknown_handset_opens_a_call_task(
    gateway: Gateway, world: World, status: str, code: str
) -> None:
    message_id = sent_message(world)

    gateway.status(SID, status, error=code)

    assert (world.get(message_id).status, world.get(message_id).error_code) == (status, code)
    [task] = world.escalations()
    assert task.kind == UNDELIVERABLE_TASK and code in task.reason


def test_a_21610_callback_suppresses_the_number(gateway: Gateway, world: World) -> None:
    message_id = sent_message(world)

    gateway.status(SID, "failed", error="21610")

    message = world.get(message_id)
    assert (message.status, message.error_code) == (OutboundStatus.SUPPRESSED, "21610")
    assert world.get_patient(message.patient_id).sms_opt_out is True


def test_a_callback_for_an_unknown_message_is_kept_and_ignored(
    gateway: Gateway, world: World
) -> None:
    assert gateway.status("SM" + "ee" * 16, "delivered") == 204
    assert [(e.outbound_id, e.message_status) for e in events(world)] == [(None, "delivered")]


# --- inbound texts -----------------------------------------------------------------------------


def replies(world: World) -> list[tuple[str, str]]:
    return [(m.kind, m.status) for m in world.messages() if m.idempotency_key.startswith("reply:")]


@pytest.mark.parametrize("body", ["STOP", "stop", "Unsubscribe", "please stop texting me",
                                  "No me envien mas mensajes"])  # fmt: skip
def test_stop_and_free_text_revocation_suppress_and_cancel_what_is_queued(
    gateway: Gateway, world: World, body: str
) -> None:
    patient = world.patient()
    queued = world.message(patient, scheduled_for=NOW + timedelta(days=1))

    response = gateway.text(body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert "<Response>" in response.text and "<Message" not in response.text
    assert world.get_patient(patient).sms_opt_out is True
    assert world.get(queued).status == OutboundStatus.CANCELLED
    with session_scope(world.database_url) as session:
        assert mq.phone_suppressed(session=session, phone=PHONE)
    assert replies(world) == [("opt_out_confirmation", OutboundStatus.SCHEDULED)]


def test_when_twilio_answered_the_keyword_the_engine_does_not_answer_again(
    gateway: Gateway, world: World
) -> None:
    patient = world.patient()

    gateway.text("STOP", opt_out_type="STOP")
    gateway.text("HELP", sid="SM" + "01" * 16, opt_out_type="HELP")

    assert world.get_patient(patient).sms_opt_out is True
    assert replies(world) == []


def test_start_after_stop_resumes_texts(gateway: Gateway, world: World) -> None:
    patient = world.patient()

    gateway.text("STOP")
    gateway.text("START", sid="SM" + "02" * 16)

    assert world.get_patient(patient).sms_opt_out is False
    with session_scope(world.database_url) as session:
        assert not mq.phone_suppressed(session=session, phone=PHONE)


def test_help_is_answered_with_the_help_text(gateway: Gateway, world: World) -> None:
    world.patient(language="es")

    gateway.text("AYUDA")

    [answer] = [m for m in world.messages() if m.kind == "help"]
    assert answer.language == "es" and "Para ayuda llame al" in answer.body
    assert (answer.to_phone, answer.scheduled_for) == (PHONE, NOW)


def test_confirm_confirms_the_visit_the_last_text_was_about(gateway: Gateway, world: World) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=3))
    world.message(patient, appointment_id=visit, status="delivered", sent_at=NOW)

    gateway.text("C")
    gateway.text("C")  # Twilio repeating the webhook: one acknowledgement

    assert world.get_appointment(visit).status == "confirmed"
    assert world.escalations() == []
    [ack] = [m for m in world.messages() if m.kind == "visit_confirmed"]
    assert (ack.idempotency_key, ack.appointment_id, ack.scheduled_for) == (
        f"reply:{SID}:visit_confirmed",
        visit,
        NOW,
    )
    assert ack.body.startswith("Riverside Health Clinic: Thank you. Your visit with Dr. Okafor")


def test_confirm_with_no_visit_on_file_goes_to_a_person(gateway: Gateway, world: World) -> None:
    world.patient()

    gateway.text("CONFIRM")

    assert [e.kind for e in world.escalations()] == [REPLY_TASK]


@pytest.mark.parametrize(
    "body",
    ["I'm getting worse", "can't walk since this morning", "lost bladder control",
     "the numbness is spreading", "me siento peor", "no puedo caminar"],
)  # fmt: skip
def test_worsening_opens_an_urgent_task_and_answers_call_now(
    gateway: Gateway, world: World, body: str
) -> None:
    patient = world.patient()
    world.visit(patient, NOW + timedelta(days=3))

    response = gateway.text(body)

    [task] = world.escalations()
    assert (task.kind, task.status) == (WORSENING_TASK, "open")
    assert f"patient {patient}" in task.reason and body not in task.reason
    # Answered in the webhook's own response; the outbox row is the thread's record of it,
    # handed to Twilio already, so no dispatcher sends it a second time.
    # (`<Message action=…>`: Twilio reports the answer's delivery on the status callback.)
    assert ">Riverside Health Clinic: Please call us now at (555) 555-0100." in response.text
    assert replies(world) == [("urgent_advice", OutboundStatus.QUEUED)]


def test_the_worklist_hears_of_a_red_flag_task_once_it_is_committed(
    database_url: str, world: World
) -> None:
    patient = world.patient()
    world.visit(patient, NOW + timedelta(days=3))
    heard: list[list[int]] = []

    def on_tasks_opened(task_ids: Sequence[int]) -> None:
        # Called after the commit: the task is already there for the worklist to read.
        with session_scope(database_url) as session:
            heard.append([t for t in task_ids if session.get(Escalation, t) is not None])

    gateway = make_gateway(database_url, on_tasks_opened=on_tasks_opened)
    gateway.text("cant feel my legs and I peed myself")
    gateway.text("what time is my visit", sid="SM" + "04" * 16)
    gateway.text("C", sid="SM" + "05" * 16)  # confirmed: no task, nothing to refresh

    worsening, reply = world.escalations()
    assert (worsening.kind, reply.kind) == (WORSENING_TASK, REPLY_TASK)
    assert heard == [[worsening.id], [reply.id]]


def test_worsening_from_an_opted_out_patient_is_still_answered(
    gateway: Gateway, world: World, clock: Clock
) -> None:
    world.patient()
    gateway.text("STOP", opt_out_type="STOP")
    sender = RecordingSender()

    response = gateway.text("stop texting me, I am worse", sid="SM" + "03" * 16)
    dispatcher(world.database_url, sender, clock).run()

    assert "call 911" in response.text
    assert [m.kind for m in world.messages()] == ["urgent_advice", "opt_out_confirmation"]
    assert [sms.body.split(":")[0] for sms in sender.sent] == ["Riverside Health Clinic"]
    assert [e.kind for e in world.escalations()] == [WORSENING_TASK]


def test_other_text_goes_to_a_scheduler(gateway: Gateway, world: World) -> None:
    world.patient()

    gateway.text("Is parking free at the clinic?")

    [task] = world.escalations()
    assert (task.kind, task.target) == (REPLY_TASK, "scheduler-queue")
    assert replies(world) == []


def test_a_text_from_an_unknown_number_still_reaches_a_person(
    gateway: Gateway, world: World
) -> None:
    response = gateway.text("who is this? I feel worse", phone="+15555559999")

    [task] = world.escalations()
    assert task.kind == WORSENING_TASK and "an unknown number" in task.reason
    assert world.messages() == []
    assert response.headers["content-type"].startswith("text/xml")
    assert "call 911 or go to the nearest emergency room" in response.text


def test_a_red_flag_from_an_unknown_number_is_answered_in_the_webhook_response(
    gateway: Gateway,
) -> None:
    response = gateway.text("numb between my legs and I peed myself", phone="+15555559999")

    assert response.status_code == 200
    assert response.text == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Message>Riverside Health Clinic: '
        "Please call us now at (555) 555-0100. If this is an emergency, call 911 or go to the "
        "nearest emergency room. Reply STOP to opt out.</Message></Response>"
    )


@pytest.mark.parametrize("phone", [PHONE, "+15555559999"])
def test_a_repeated_red_flag_webhook_is_answered_again_and_acted_on_once(
    gateway: Gateway, world: World, phone: str
) -> None:
    world.patient()

    first = gateway.text("I can't walk", phone=phone)
    again = gateway.text("I can't walk", phone=phone)

    assert "call 911" in first.text and again.text == first.text
    assert len(world.escalations()) == 1
    assert len(replies(world)) == (1 if phone == PHONE else 0)


def test_a_spanish_red_flag_from_an_unknown_number_is_answered_in_spanish(
    gateway: Gateway,
) -> None:
    response = gateway.text("no puedo caminar y me orine", phone="+15555559999")

    assert "Llame ahora al (555) 555-0100" in response.text and "llame al 911" in response.text


def test_a_text_that_is_not_a_red_flag_gets_an_empty_twiml_answer(
    gateway: Gateway, world: World
) -> None:
    world.patient()

    response = gateway.text("I'm not worse, just asking about parking")

    assert response.text == twilio_webhooks.EMPTY_TWIML
    assert [e.kind for e in world.escalations()] == [REPLY_TASK]


def test_every_later_text_is_shown_with_the_open_task_and_brings_its_notice_forward(
    database_url: str, world: World
) -> None:
    patient = world.patient()
    world.visit(patient, NOW + timedelta(days=3))
    clock = Clock()
    gateway = make_gateway(database_url, clock=clock)

    gateway.text("the pain is worse", sid="SM" + "11" * 16)
    with session_scope(world.database_url) as session:  # a notice went out since
        task = session.exec(select(Escalation)).one()
        task.notified_at = clock() + timedelta(minutes=1)
        session.add(task)
    clock.now += timedelta(minutes=2)
    gateway.text("now I can't pee", sid="SM" + "12" * 16)
    gateway.text("hello??", sid="SM" + "13" * 16)

    tasks = {task.kind: task for task in world.escalations()}
    worsening = tasks[WORSENING_TASK]
    assert worsening.status == "open"
    assert "2 texts on this task" in worsening.reason and "SM" + "12" * 16 in worsening.reason
    # Due for a notice at once: last notice set one re-notify interval back.
    assert worsening.notified_at == clock() - timedelta(minutes=15)
    with session_scope(world.database_url) as session:
        shown = mq.texts_on_task(session=session, escalation_id=worsening.id or 0)
        due = worklist.due_notices(
            session=session,
            kinds=CRITICAL_KINDS,
            due_before=clock() - timedelta(minutes=15),
            now=clock(),
        )
    assert [event.message_sid for event in shown] == ["SM" + "11" * 16, "SM" + "12" * 16]
    assert [notice.escalation_id for notice in due] == [worsening.id]
    assert [e.escalation_id for e in events(world)][-1] == tasks[REPLY_TASK].id


def test_a_repeated_inbound_webhook_is_acted_on_once(gateway: Gateway, world: World) -> None:
    world.patient()

    assert {gateway.text("HELP").status_code for _ in range(3)} == {200}

    assert replies(world) == [("help", OutboundStatus.SCHEDULED)]
    assert len(events(world)) == 1


def test_with_a_sender_the_answer_goes_out_at_once(database_url: str, world: World) -> None:
    world.patient()
    sender = RecordingSender()
    gateway = make_gateway(database_url, sender=sender)

    gateway.text("HELP")

    [sms] = sender.sent
    assert sms.to == PHONE and "For help call" in sms.body
    assert replies(world) == [("help", OutboundStatus.SENT)]


def test_the_served_gateway_sends_answers_at_once_through_twilio(
    database_url: str, world: World, prism_url: str
) -> None:
    # gateway_app as `followup serve` builds it: the sender passed in, here Twilio's client
    # over HTTP to the Prism mock; the answer to C leaves with the webhook, not a minute later.
    patient = world.patient()
    world.visit(patient, NOW + timedelta(days=5))
    settings = twilio_settings(prism_url, twilio_webhook_base_url=PUBLIC, database_url=database_url)
    app = gateway_app(
        settings, on_accepted=lambda receipt: None, sms_sender=twilio_sender(prism_url)
    )
    with TestClient(app) as client:
        assert Gateway(client, PUBLIC).text("C").status_code == 200

    [(kind, status)] = replies(world)
    assert (kind, status) == ("visit_confirmed", OutboundStatus.SENT)
    [answer] = [m for m in world.messages() if m.kind == "visit_confirmed"]
    assert answer.twilio_sid is not None


# --- STOP in the middle of a sequence ----------------------------------------------------------


def test_stop_mid_sequence_means_no_later_text(
    gateway: Gateway, world: World, clock: Clock
) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=5))
    confirmation = world.message(patient, appointment_id=visit, kind="confirmation")
    reminders = [
        world.message(patient, appointment_id=visit, scheduled_for=NOW + timedelta(days=d))
        for d in (2, 4)
    ]
    sender = RecordingSender()
    dispatcher(world.database_url, sender, clock).run()
    assert [sms.message_id for sms in sender.sent] == [confirmation]

    gateway.text("STOP", opt_out_type="STOP")
    for days in (2, 4):
        clock.now = NOW + timedelta(days=days)
        dispatcher(world.database_url, sender, clock).run()

    assert [sms.message_id for sms in sender.sent] == [confirmation]
    assert {world.get(r).status for r in reminders} == {OutboundStatus.CANCELLED}


def test_stop_suppresses_rows_queued_after_it_too(
    gateway: Gateway, world: World, clock: Clock
) -> None:
    patient = world.patient()
    gateway.text("STOP", opt_out_type="STOP")
    late = world.message(patient)  # planned by a booking after the STOP
    sender = RecordingSender()

    dispatcher(world.database_url, sender, clock).run()

    assert sender.sent == []
    assert world.get(late).status == OutboundStatus.SUPPRESSED


# --- rescheduling by text ----------------------------------------------------------------------


def study_visit(world: World, patient: int) -> tuple[int, list[int]]:
    """A follow-up booked for a study, with its window, and two free slots later in it."""
    start = NOW + timedelta(days=1, hours=-4)  # Wed Dec 9, 10:00 New York
    visit = world.visit(patient, start)
    with session_scope(world.database_url) as session:
        inbox = InboxMessage(source="test", content_type="hl7v2", raw=b"MSH|")
        session.add(inbox)
        session.flush()
        study = ImagingStudy(
            accession="ACC1",
            patient_id=patient,
            ordering_provider_id=world.provider_id,
            ordering_provider_key="1234567890",
            report_status="F",
            report_text="",
            inbox_id=inbox.id or 0,
        )
        session.add(study)
        session.flush()
        appointment = session.get(Appointment, visit)
        assert appointment is not None and world.provider_id is not None
        appointment.study_id = study.id
        appointment.tier = "routine"
        appointment.window_start = NOW
        appointment.window_end = NOW + timedelta(days=14)
        session.add(appointment)
        free = [
            Slot(provider_id=world.provider_id, start=start + timedelta(days=d),
                 end=start + timedelta(days=d, minutes=30))
            for d in (1, 2)
        ]  # fmt: skip
        session.add_all(free)
        session.flush()
        return visit, [slot.id or 0 for slot in free]


def test_reschedule_never_offers_a_later_time_the_same_day(gateway: Gateway, world: World) -> None:
    patient = world.patient()
    visit, later_days = study_visit(world, patient)
    with session_scope(world.database_url) as session:  # the only free slot: 30 minutes on
        for slot_id in later_days:
            slot = session.get_one(Slot, slot_id)
            slot.status = "blocked"
            session.add(slot)
        start = world.get_appointment(visit).start + timedelta(minutes=30)
        session.add(
            Slot(
                provider_id=world.provider_id or 0,
                start=start,
                end=start + timedelta(minutes=30),
            )
        )

    gateway.text("R")

    assert world.get_appointment(visit).status == "booked"
    [task] = world.escalations()
    assert task.kind == RESCHEDULE_TASK and "no free slot on another day" in task.reason
    assert replies(world) == []


def slot_states(world: World, slot_ids: list[int]) -> list[str]:
    with session_scope(world.database_url) as session:
        return [session.get_one(Slot, slot_id).status for slot_id in slot_ids]


def test_reschedule_holds_choices_on_other_days_and_a_number_moves_the_visit_there(
    gateway: Gateway, world: World
) -> None:
    patient = world.patient()
    visit, (thursday, friday) = study_visit(world, patient)
    with session_scope(world.database_url) as session:  # a later Thursday slot: not a choice
        thursday_later = Slot(
            provider_id=world.provider_id or 0,
            start=session.get_one(Slot, thursday).start + timedelta(hours=2),
            end=session.get_one(Slot, thursday).start + timedelta(hours=2, minutes=30),
        )
        session.add(thursday_later)
        session.flush()
        thursday_later_id = thursday_later.id or 0
    old_reminder = world.message(
        patient, appointment_id=visit, scheduled_for=NOW + timedelta(hours=18)
    )
    waiting = world.patient(phone="+15555550177")
    world.waitlist(waiting)

    gateway.text("R")

    # Held for the patient, one a day, the visit's own day left out; the visit stays put.
    assert slot_states(world, [thursday, friday, thursday_later_id]) == ["held", "held", "free"]
    assert world.get_appointment(visit).status == "booked"
    [choices] = [m for m in world.messages() if m.kind == "reschedule_choices"]
    assert choices.body == (
        "Riverside Health Clinic: To move your visit with Dr. Okafor, reply 1 for Thu Dec 10 at "
        "10:00 AM, 2 for Fri Dec 11 at 10:00 AM. Held until Tue Dec 8 at 3:00 PM. Questions: "
        "(555) 555-0100. Reply STOP to opt out."
    )
    assert (choices.appointment_id, choices.to_phone) == (visit, PHONE)

    gateway.text("2", sid="SM" + "06" * 16)

    old = world.get_appointment(visit)
    assert old.status == "cancelled" and old.replaced_by_id is not None
    new = world.get_appointment(old.replaced_by_id)
    assert (new.slot_id, new.status) == (friday, "booked")
    assert slot_states(world, [thursday, friday]) == ["free", "booked"]
    [answer] = [m for m in world.messages() if m.kind == "reschedule"]
    assert "Fri Dec 11 at 10:00 AM" in answer.body and answer.appointment_id == new.id
    assert world.get(old_reminder).status == "cancelled"
    # The old slot goes to the waitlist, offered by text.
    [offer_text] = [m for m in world.messages() if m.kind == "waitlist_offer"]
    assert (offer_text.patient_id, offer_text.status) == (waiting, "scheduled")
    assert "Wed Dec 9 at 10:00 AM" in offer_text.body
    assert world.escalations() == []


def test_a_second_r_holds_the_same_times_again_without_offering_them_away(
    gateway: Gateway, world: World
) -> None:
    patient = world.patient()
    _, free = study_visit(world, patient)
    world.waitlist(world.patient(phone="+15555550177"))

    gateway.text("R")
    gateway.text("R", sid="SM" + "08" * 16)

    assert slot_states(world, free) == ["held", "held"]
    first, second = [m.body for m in world.messages() if m.kind == "reschedule_choices"]
    assert first == second
    with session_scope(world.database_url) as session:
        holds = session.exec(select(RescheduleHold).order_by(col(RescheduleHold.id))).all()
        assert [(h.slot_id, h.status) for h in holds] == [
            (free[0], "released"), (free[1], "released"), (free[0], "held"), (free[1], "held")
        ]  # fmt: skip
    assert [m for m in world.messages() if m.kind == "waitlist_offer"] == []


def test_a_lapsed_hold_frees_its_slot_and_a_late_number_moves_nothing(
    gateway: Gateway, world: World, clock: Clock
) -> None:
    patient = world.patient()
    visit, free = study_visit(world, patient)
    gateway.text("R")
    assert slot_states(world, free) == ["held", "held"]

    clock.now = NOW + timedelta(minutes=61)  # FOLLOWUP_RESCHEDULE_HOLD_MINUTES is 60
    with session_scope(world.database_url) as session:
        visits.release_lapsed_reschedule_holds(
            session=session, settings=twilio_settings(""), now=clock.now, actor="test"
        )
    gateway.text("1", sid="SM" + "07" * 16)

    assert slot_states(world, free) == ["free", "free"]
    assert world.get_appointment(visit).status == "booked"
    [task] = world.escalations()
    assert task.kind == RESCHEDULE_TASK and "no such time is held" in task.reason


# --- waitlist offers answered by text ----------------------------------------------------------


def offer_sent(world: World, *, waiting: int) -> int:
    """Another patient's visit is cancelled; its slot's offer went to `waiting` by text: the
    offer's id."""
    visit = world.visit(world.patient(phone="+15555550199"), NOW + timedelta(days=2))
    world.waitlist(waiting)
    with session_scope(world.database_url) as session:
        cancelled = visits.cancel_visit(
            session=session,
            appointment_id=visit,
            reason="patient called",
            settings=twilio_settings("http://127.0.0.1:9"),
            now=NOW,
            actor="test",
        )
        for message_id in cancelled.texts.offers:
            text = mq.get_message(session=session, message_id=message_id)
            text.status, text.sent_at = OutboundStatus.DELIVERED, NOW
            session.add(text)
        assert cancelled.result.offer is not None and cancelled.result.offer.id is not None
        return cancelled.result.offer.id


def test_c_to_an_open_offer_books_the_slot_and_confirms_it_with_reminders(
    gateway: Gateway, world: World
) -> None:
    waiting = world.patient()
    offer_id = offer_sent(world, waiting=waiting)

    response = gateway.text("C")

    assert response.status_code == 200
    with session_scope(world.database_url) as session:
        offer = session.get_one(WaitlistOffer, offer_id)
        booked = session.get_one(Appointment, offer.appointment_id)
    assert (offer.status, booked.patient_id, booked.status) == ("accepted", waiting, "booked")
    texts = [m for m in world.messages() if m.appointment_id == booked.id]
    assert [(m.idempotency_key, m.scheduled_for) for m in texts] == [
        (f"reply:{SID}:confirmation", NOW),
        (f"appt:{booked.id}:reminder:d1", datetime(2026, 12, 9, 15, tzinfo=UTC)),  # 10:00 NY
    ]
    assert "Thu Dec 10 at 2:00 PM" in texts[0].body
    assert world.escalations() == []


def test_c_after_the_deadline_books_nothing_and_the_next_patient_gets_the_offer(
    gateway: Gateway, world: World, clock: Clock
) -> None:
    late = world.patient()
    offer_id = offer_sent(world, waiting=late)
    next_patient = world.patient(phone="+15555550177")
    world.waitlist(next_patient, since=NOW)
    clock.now = NOW + timedelta(hours=5)  # the offer ran four hours

    gateway.text("C")

    with session_scope(world.database_url) as session:
        assert session.get_one(WaitlistOffer, offer_id).status == "expired"
        assert session.exec(select(Appointment).where(Appointment.patient_id == late)).all() == []
    [next_text] = [
        m for m in world.messages() if m.kind == "waitlist_offer" and m.patient_id == next_patient
    ]
    assert (next_text.status, next_text.scheduled_for) == ("scheduled", clock.now)
    assert [e.kind for e in world.escalations()] == [REPLY_TASK]


@pytest.mark.parametrize("answer", ["NO", "n", "No gracias"])
def test_no_to_an_open_offer_declines_it_and_the_next_patient_gets_the_offer(
    gateway: Gateway, world: World, answer: str
) -> None:
    declining = world.patient()
    offer_id = offer_sent(world, waiting=declining)
    next_patient = world.patient(phone="+15555550177")
    world.waitlist(next_patient, since=NOW)

    response = gateway.text(answer)

    assert response.status_code == 200
    with session_scope(world.database_url) as session:
        declined = session.get_one(WaitlistOffer, offer_id)
        [pending] = session.exec(select(WaitlistOffer).where(WaitlistOffer.status == "pending"))
        assert (declined.status, declined.responded_at) == ("declined", NOW)
        assert (
            session.exec(select(Appointment).where(Appointment.patient_id == declining)).all() == []
        )
    [next_text] = [
        m for m in world.messages() if m.kind == "waitlist_offer" and m.patient_id == next_patient
    ]
    assert (next_text.idempotency_key, next_text.status) == (
        mq.offer_message_key(pending.id or 0),
        "scheduled",
    )
    assert world.escalations() == []


def test_no_without_an_open_offer_goes_to_a_scheduler(gateway: Gateway, world: World) -> None:
    world.visit(world.patient(), NOW + timedelta(days=2))

    gateway.text("NO")

    assert [e.kind for e in world.escalations()] == [REPLY_TASK]


def test_not_coming_is_a_call_for_a_scheduler_and_the_visit_stays_booked(
    gateway: Gateway, world: World
) -> None:
    visit = world.visit(world.patient(), NOW + timedelta(days=2))

    gateway.text("I won't be coming, please cancel my appointment")

    [task] = world.escalations()
    assert task.kind == RESCHEDULE_TASK and "will not come" in task.reason
    assert world.get_appointment(visit).status == "booked"


def test_reschedule_without_a_visit_goes_to_a_scheduler(gateway: Gateway, world: World) -> None:
    world.patient()

    gateway.text("RESCHEDULE")

    assert [e.kind for e in world.escalations()] == [RESCHEDULE_TASK]


def test_a_webhook_whose_handling_fails_leaves_no_trace_so_the_retry_is_handled(
    database_url: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = world.patient()
    gateway = make_gateway(database_url)
    failing = TestClient(gateway.client.app, raise_server_exceptions=False)
    real = twilio_webhooks.handle_inbound

    def broken(**kwargs: object) -> object:
        raise RuntimeError("database went away mid-request")

    monkeypatch.setattr(twilio_webhooks, "handle_inbound", broken)
    assert Gateway(failing, gateway.base).text("STOP").status_code == 500
    assert events(world) == []
    monkeypatch.setattr(twilio_webhooks, "handle_inbound", real)

    assert gateway.text("STOP").status_code == 200
    assert world.get_patient(patient).sms_opt_out is True
