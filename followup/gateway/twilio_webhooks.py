"""Twilio's webhooks: message status callbacks and patients' texts back.

`twilio_router(settings, database_url=...)` returns an APIRouter with

* `POST /twilio/status`: a status callback for one of our messages. The row is found by its
  sid, or by the `outbound_id` our status-callback URL carries (a callback can beat the sid
  into the database), and moves through the monotonic state machine (dispatch.advance).
* `POST /twilio/inbound`: a patient's text, acted on by messaging.replies. A red flag's
  call-now / 911 advice goes back in the TwiML response itself (known number or not), with a
  status-callback `action` on its outbox row; other answers go through the outbox (tracked,
  exactly once), sent at once when the router was given a sender. No answer: empty TwiML.

Both check X-Twilio-Signature with the twilio library's RequestValidator against the URL
Twilio called, FOLLOWUP_TWILIO_WEBHOOK_BASE_URL + path + query, and only that: the URL as
received carries the request's own Host header, so checking against it accepted a signature
made for another site's URL. They answer 403 when the signature is missing, malformed or
wrong, or when no auth token or no base URL is configured (`followup serve` and `followup
gateway` refuse to start with Twilio credentials and no base URL). Everything that can be
checked without the body is checked before it is read (configuration, the header's shape);
the body is then read up to FOLLOWUP_TWILIO_MAX_BODY_BYTES as it streams (413 past it), and
only that bounded body is parsed, for the validator, which needs the form's values.

Every signed request is stored raw (TwilioEvent) before it is acted on, in the same
transaction as its effect; (MessageSid, MessageStatus) is unique, so a repeat is answered 200
and changes nothing.
Inserting the event first also takes SQLite's write lock, which serialises callbacks racing
for one message; on PostgreSQL the message row is locked.

Logs carry sids, ids and statuses, never numbers or text.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response
from sqlmodel import Session
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from followup.gateway.http import read_body
from followup.messaging.sender import SmsSender
from followup.services.dispatch import Dispatcher, DispatchPolicy, apply_status_report
from followup.services.replies import (
    InboundSms,
    InstantAnswer,
    handle_inbound,
    repeated_answers,
)
from followup.settings import Settings
from models import messaging_queries as mq
from models.db import session_scope
from models.tables import OutboundMessage, TwilioEvent, TwilioEventKind
from models.types import utcnow

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
# Base64 of an HMAC-SHA1 (what Twilio sends) or HMAC-SHA256 digest.
WELL_FORMED_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{27}=|[A-Za-z0-9+/]{43}=")


@dataclass(frozen=True, slots=True)
class SignedRequest:
    params: dict[str, str]
    query: dict[str, str]


def twilio_router(
    settings: Settings,
    *,
    database_url: str,
    sender: SmsSender | None = None,
    on_tasks_opened: Callable[[Sequence[int]], object] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> APIRouter:
    """The webhook routes; `sender` (optional) sends answers to patients at once, and
    `on_tasks_opened` (optional) hears of every task a text opened or joined once it is
    committed (the schedulers' tables are refreshed on it)."""
    router = APIRouter(prefix="/twilio", tags=["twilio"])
    callbacks = DispatchPolicy.from_settings(settings)
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
    validator = RequestValidator(token) if token else None
    dispatcher = (
        Dispatcher(
            database_url=database_url,
            sender=sender,
            policy=DispatchPolicy.from_settings(settings),
            now=clock,
            workers=1,
        )
        if sender is not None
        else None
    )

    async def signed(request: Request) -> SignedRequest:
        signature = request.headers.get(SIGNATURE_HEADER, "")
        public_base = settings.twilio_webhook_base_url
        if validator is None or not public_base or not WELL_FORMED_SIGNATURE.fullmatch(signature):
            logger.warning("Twilio webhook %s refused: %s", request.url.path,
                           _unverifiable(validator, public_base))  # fmt: skip
            raise HTTPException(403, "invalid Twilio signature")
        raw = await read_body(request, settings.twilio_max_body_bytes)
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise HTTPException(400, "the body is not form-encoded UTF-8") from None
        params = dict(pairs)
        if not validator.validate(_public_url(request, public_base), params, signature):
            logger.warning("Twilio webhook %s refused: wrong signature", request.url.path)
            raise HTTPException(403, "invalid Twilio signature")
        return SignedRequest(params=params, query=dict(request.query_params))

    @router.post("/status")
    async def status(request: Request) -> Response:
        signed_request = await signed(request)
        params = signed_request.params
        sid = params.get("MessageSid") or params.get("SmsSid")
        reported = params.get("MessageStatus") or params.get("SmsStatus")
        if not sid or not reported:
            raise HTTPException(400, "MessageSid and MessageStatus are required")
        hint = signed_request.query.get("outbound_id", "")
        result = await asyncio.to_thread(
            _record_status,
            database_url,
            params,
            sid=sid,
            reported=reported,
            outbound_id=int(hint) if hint.isdigit() else None,
            now=clock(),
        )
        logger.info("Twilio status %s %s: %s", sid, reported, result)
        return Response(status_code=204)

    @router.post("/inbound")
    async def inbound(request: Request, background: BackgroundTasks) -> Response:
        params = (await signed(request)).params
        sid = params.get("MessageSid") or params.get("SmsSid")
        from_phone = params.get("From")
        if not sid or not from_phone:
            raise HTTPException(400, "MessageSid and From are required")
        sms = InboundSms(
            message_sid=sid,
            from_phone=from_phone,
            body=params.get("Body", ""),
            carrier_handled=(params.get("OptOutType") or "").upper() or None,
        )
        recorded = await asyncio.to_thread(
            _record_inbound, database_url, settings, params, sms, now=clock()
        )
        if on_tasks_opened is not None and recorded.task_ids:
            on_tasks_opened(recorded.task_ids)
        if dispatcher is not None and recorded.reply_ids:
            background.add_task(dispatcher.run, ids=recorded.reply_ids)
        return Response(_twiml(recorded.instant, callbacks), media_type="text/xml")

    return router


def _unverifiable(validator: RequestValidator | None, public_base: str | None) -> str:
    """Why a request was refused before its body was read."""
    if validator is None:
        return "no TWILIO_AUTH_TOKEN configured"
    if not public_base:
        return "no FOLLOWUP_TWILIO_WEBHOOK_BASE_URL configured"
    return "missing or malformed signature"


def _public_url(request: Request, public_base: str) -> str:
    """The URL Twilio signed: the configured public base + the path and query received."""
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{public_base.rstrip('/')}{request.url.path}{query}"


def _record_status(
    database_url: str,
    params: dict[str, str],
    *,
    sid: str,
    reported: str,
    outbound_id: int | None,
    now: datetime,
) -> str:
    with session_scope(database_url) as session:
        event = mq.record_twilio_event(
            session=session,
            event=TwilioEvent(
                kind=TwilioEventKind.STATUS,
                message_sid=sid,
                message_status=reported,
                error_code=params.get("ErrorCode") or None,
                params=params,
            ),
        )
        if event is None:
            return "duplicate"
        message = _message_for(session, sid=sid, outbound_id=outbound_id)
        if message is None:
            return "unknown message"
        event.outbound_id = message.id
        event.patient_id = message.patient_id
        session.add(event)
        new = apply_status_report(
            session=session,
            message=message,
            sid=sid,
            reported=reported,
            error_code=event.error_code,
            now=now,
        )
        return f"message {message.id} -> {new}" if new else f"message {message.id} unchanged"


def _message_for(session: Session, *, sid: str, outbound_id: int | None) -> OutboundMessage | None:
    message = mq.message_by_sid(session=session, sid=sid, lock=True)
    if message is None and outbound_id is not None:
        candidate = session.get(OutboundMessage, outbound_id, with_for_update=True)
        # The id rides in a signed URL, but a row already tied to another sid is not this one.
        if candidate is not None and candidate.twilio_sid in (None, sid):
            message = candidate
    return message


def _twiml(answers: list[InstantAnswer], callbacks: DispatchPolicy) -> str:
    """The webhook's answer: a <Message> per instant answer, Twilio reporting on each to
    /twilio/status with its outbox id (as for dispatched texts); empty when there is none."""
    if not answers:
        return EMPTY_TWIML
    response = MessagingResponse()
    for answer in answers:
        action = callbacks.status_callback(answer.message_id) if answer.message_id else None
        if action:
            response.message(answer.body, action=action, method="POST")
        else:
            response.message(answer.body)
    return str(response.to_xml(xml_declaration=True))


@dataclass(frozen=True, slots=True)
class RecordedInbound:
    reply_ids: list[int]  # answers in the outbox, to send now
    instant: list[InstantAnswer]  # answers in the TwiML response
    task_ids: list[int]  # tasks the text opened or joined


def _record_inbound(
    database_url: str, settings: Settings, params: dict[str, str], sms: InboundSms, *, now: datetime
) -> RecordedInbound:
    with session_scope(database_url) as session:
        event = mq.record_twilio_event(
            session=session,
            event=TwilioEvent(
                kind=TwilioEventKind.INBOUND,
                message_sid=sms.message_sid,
                message_status=params.get("SmsStatus") or "received",
                params=params,
            ),
        )
        if event is None:
            logger.info("inbound SMS %s already handled", sms.message_sid)
            return RecordedInbound(
                [], list(repeated_answers(session=session, sms=sms, settings=settings)), []
            )
        outcome = handle_inbound(
            session=session, sms=sms, settings=settings, now=now, event_id=event.id
        )
        event.patient_id = outcome.patient_id
        event.intents = [str(intent) for intent in outcome.intents]
        session.add(event)
        return RecordedInbound(
            list(outcome.reply_message_ids),
            list(outcome.instant_answers),
            list(outcome.task_ids),
        )
