"""HTTP gateway: FHIR R4 DiagnosticReport (alone or in a Bundle) in, an OperationOutcome out.

Choices, and why:

* Both `POST /fhir/DiagnosticReport` and `POST /fhir` take either a DiagnosticReport or a
  Bundle holding one: RIS integrations differ in which they send, and the parser finds the
  report either way.
* Answers: 201 for a new accepted report, 200 for a resend of one (the same identifier, status
  and text: idempotent), 400 for what is not a readable FHIR resource or not a type taken here,
  422 for a readable report missing what routing needs (accession, patient...), 401 without the
  bearer token, 403 when the gateway has no token configured, 413 over the size limit, 503
  when the message could not be stored. Every answer is an OperationOutcome; its `expression`
  names the element at fault.
* Routes that change state (FHIR intake, escalation acknowledgements) never run without a
  token: with FOLLOWUP_HTTP_TOKEN unset they answer 403 (settings refuse an empty or blank
  one). The token is checked before the body is read, and compared with
  `hmac.compare_digest` (constant time), so response timing does not reveal how much of a
  guess was right.
* Size limits hold on every route before anything is buffered (`BodyLimits`, an ASGI
  middleware, so a new route cannot forget them): a Content-Length over the route's limit is
  answered 413 before the app runs, and a chunked body is counted as it arrives and cut off
  at the limit (413, connection closed). FHIR takes FOLLOWUP_HTTP_MAX_BODY_BYTES, Twilio's
  webhooks FOLLOWUP_TWILIO_MAX_BODY_BYTES, anything else FOLLOWUP_HTTP_MAX_OTHER_BODY_BYTES.
* The body is stored raw by intake (committed) before anything is parsed, so every request
  that passed authentication and the gateway's limits leaves an inbox row, whatever its
  content. Unauthenticated requests leave none: they are not from the RIS. Nor do bodies over
  a limit: over the size, or JSON nested deeper than FOLLOWUP_FHIR_MAX_JSON_DEPTH (found by a
  scan of the bytes, not a parse). Those are the gateway protecting itself, like the size
  limit, not content a person could act on: parsing them is what would fail (a deep body
  raised RecursionError, answered 503 and left `received`, so the sweep re-submitted it
  forever). They are answered 400 naming the limit and logged with the peer, which is the
  trace an integration engineer needs.
* `on_accepted` (the event emitter) runs as a background task after the response is sent.
* Logs carry the inbox id, accession and status, never the body (PHI); control characters
  in logged values are escaped by the log filter (followup/core/redaction.py).
* `POST /escalations/{id}/ack` closes an escalation (who: `by` in a JSON body or the query)
  through the same function as `followup escalations ack`, so both keep the first
  acknowledgement and audit it: 200 with the acknowledgement (the original one on a repeat),
  404 for an unknown id, 401 without the bearer token. Acknowledging silences the re-notices
  of a critical finding, so it is never open: without a configured token the endpoint
  answers 403.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, SecretStr, StringConstraints, ValidationError
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from followup.gateway import OnAccepted, in_database_thread
from followup.ris.fhir import json_depth_exceeds
from followup.services import intake
from followup.services.intake import Receipt
from followup.settings import Settings
from models import worklist
from models.db import get_engine, session_scope
from models.tables import Escalation, InboxStatus
from models.types import utcnow

logger = logging.getLogger(__name__)

SOURCE = "http"
FHIR_JSON = "application/fhir+json"
FHIR_PATHS = ("/fhir",)
TWILIO_PATHS = ("/twilio/",)

# OperationOutcome issue type (FHIR value set issue-type) and HTTP status per rejection kind.
_ISSUES = {
    "MalformedMessage": ("structure", 400),
    "UnsupportedMessage": ("not-supported", 400),
    "MissingField": ("required", 422),
    "InvalidField": ("value", 422),
}


# Who acknowledges: a user name or id, as long as the audit trail's actor column takes.
Acknowledger = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class Acknowledgement(BaseModel):
    by: Acknowledger


class AcknowledgedEscalation(BaseModel):
    """The answer: the escalation's acknowledgement, never its reason (clinical text)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    acknowledged_at: datetime | None
    acknowledged_by: str | None


class _Refusal(Exception):
    """Answered with an OperationOutcome before intake (authentication, size)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class BodyTooLarge(HTTPException):
    """A request body over its route's limit. An HTTPException, so that FastAPI's own body
    reading lets it through as it is (it turns other exceptions into a 400)."""

    def __init__(self, limit: int) -> None:
        # The sender's rest is not read: the connection closes after the answer.
        super().__init__(413, f"the body is over {limit} bytes", {"Connection": "close"})
        self.limit = limit


def outcome(
    severity: str, code: str, diagnostics: str, expression: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def body_limit(settings: Settings, path: str) -> int:
    """The most a request body to `path` may hold."""
    if path.startswith(FHIR_PATHS):
        return settings.http_max_body_bytes
    if path.startswith(TWILIO_PATHS):
        return settings.twilio_max_body_bytes
    return settings.http_max_other_body_bytes


class BodyLimits:
    """ASGI middleware: every request body held to its route's limit while it streams in.

    A declared Content-Length over the limit is answered 413 before the app runs; otherwise
    the app's `receive` counts what arrives and raises BodyTooLarge once the count passes the
    limit, so neither the app nor a framework reading the body for it holds more than the
    limit plus one chunk.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await too_large_response(scope["path"], BodyTooLarge(limit))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def too_large_response(path: str, refusal: BodyTooLarge) -> JSONResponse:
    """413 as the route answers: an OperationOutcome on FHIR paths, FastAPI's shape elsewhere."""
    if path.startswith(FHIR_PATHS):
        return JSONResponse(
            outcome("error", "too-costly", str(refusal.detail)),
            status_code=413,
            media_type=FHIR_JSON,
            headers=refusal.headers,
        )
    return JSONResponse({"detail": refusal.detail}, status_code=413, headers=refusal.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with BodyTooLarge as soon as it passes `limit` bytes: the
    declared length first, then the bytes as they stream in (chunked bodies declare none)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def create_app(settings: Settings, *, on_accepted: OnAccepted) -> FastAPI:
    app = FastAPI(title="followup gateway", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimits, settings=settings)
    if settings.http_token is None:
        logger.warning(
            "FOLLOWUP_HTTP_TOKEN is not set: FHIR intake and escalation acknowledgements over "
            "HTTP answer 403"
        )

    @app.exception_handler(_Refusal)
    async def _refused(_request: Request, refusal: _Refusal) -> JSONResponse:
        return JSONResponse(
            outcome("error", refusal.code, refusal.message),
            status_code=refusal.status,
            media_type=FHIR_JSON,
            headers=refusal.headers,
        )

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, refusal: BodyTooLarge) -> JSONResponse:
        peer = f"{request.client.host}:{request.client.port}" if request.client else None
        logger.warning("refused a body over %d bytes to %s from %s", refusal.limit,
                       request.url.path, peer)  # fmt: skip
        return too_large_response(request.url.path, refusal)

    def authorized(request: Request) -> None:
        if settings.http_token is None:
            raise _Refusal(403, "forbidden", "FHIR intake needs FOLLOWUP_HTTP_TOKEN on the gateway")
        if not _bearer_matches(request, settings.http_token):
            raise _Refusal(
                401, "login", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    def token_required(request: Request) -> None:
        if settings.http_token is None:
            raise HTTPException(
                403, "acknowledging over HTTP needs FOLLOWUP_HTTP_TOKEN set on the gateway"
            )
        if not _bearer_matches(request, settings.http_token):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    async def receive(request: Request, background: BackgroundTasks) -> JSONResponse:
        raw = await read_body(request, settings.http_max_body_bytes)
        peer = f"{request.client.host}:{request.client.port}" if request.client else None
        depth = settings.fhir_max_json_depth
        # In a thread: a large body takes a moment to scan, and this loop also ACKs MLLP.
        if await asyncio.to_thread(json_depth_exceeds, raw, depth):
            logger.warning("refused a FHIR request from %s: JSON nested over %d deep", peer, depth)
            raise _Refusal(400, "structure", f"the JSON is nested deeper than {depth} levels")
        try:
            receipt = await in_database_thread(settings.database_url, _store, settings, raw, peer)
        except Exception as exc:  # database down: the sender must retry
            # The type only: database errors can quote the body (PHI).
            logger.error("could not store a FHIR request from %s: %s", peer, type(exc).__name__)
            return JSONResponse(
                outcome("error", "transient", "the report could not be stored; retry later"),
                status_code=503,
                media_type=FHIR_JSON,
            )
        logger.info(
            "inbox %d from %s: %s %s", receipt.inbox_id, peer, receipt.status, receipt.accession
        )
        if receipt.should_process:
            background.add_task(on_accepted, receipt)
        return _answer(receipt)

    async def receive_task(request: Request) -> JSONResponse:
        raw = await read_body(request, settings.http_max_other_body_bytes)
        peer = f"{request.client.host}:{request.client.port}" if request.client else None
        if await asyncio.to_thread(json_depth_exceeds, raw, settings.fhir_max_json_depth):
            raise _Refusal(400, "structure", "the JSON is nested too deep")
        try:
            receipt = await in_database_thread(
                settings.database_url, _store_task, settings, raw, peer
            )
        except Exception as exc:
            logger.error("could not store a FHIR Task from %s: %s", peer, type(exc).__name__)
            return JSONResponse(
                outcome("error", "transient", "the Task could not be stored; retry later"),
                status_code=503,
                media_type=FHIR_JSON,
            )
        logger.info("inbox %d (Task) from %s: %s", receipt.inbox_id, peer, receipt.status)
        if receipt.ack_code != "AA":
            return _answer(receipt)
        body = outcome("information", "informational", f"applied as inbox {receipt.inbox_id}")
        return JSONResponse(body, status_code=200, media_type=FHIR_JSON)

    # A specialist's system reports its Task's state: create-or-update semantics either way.
    app.post("/fhir/Task", dependencies=[Depends(authorized)])(receive_task)
    app.put("/fhir/Task", dependencies=[Depends(authorized)])(receive_task)
    app.post("/fhir/DiagnosticReport", dependencies=[Depends(authorized)])(receive)
    app.post("/fhir", dependencies=[Depends(authorized)])(receive)

    @app.post("/escalations/{escalation_id}/ack", dependencies=[Depends(token_required)])
    async def acknowledge(
        escalation_id: int,
        request: Request,
        by: Annotated[Acknowledger | None, Query()] = None,
    ) -> AcknowledgedEscalation:
        # Read here, not declared as a body parameter: FastAPI reads and parses declared
        # bodies before it runs the dependencies, so before the token check.
        raw = await read_body(request, settings.http_max_other_body_bytes)
        who = _acknowledger(raw) if raw.strip() else by
        if who is None:
            raise HTTPException(422, "say who acknowledges: `by` in a JSON body or the query")
        try:
            escalation = await in_database_thread(
                settings.database_url, _acknowledge, settings.database_url, escalation_id, who
            )
        except LookupError as error:
            raise HTTPException(404, str(error)) from error
        logger.info("escalation %d (%s) acknowledged over HTTP", escalation_id, escalation.kind)
        return AcknowledgedEscalation.model_validate(escalation)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await in_database_thread(settings.database_url, _ping, settings.database_url)
        except Exception as exc:
            logger.error("health check: database unreachable: %s", type(exc).__name__)
            return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return app


def _acknowledger(raw: bytes) -> str:
    """`by` from a JSON body, or the 422 FastAPI gives an invalid body."""
    try:
        return Acknowledgement.model_validate_json(raw).by
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False)) from error


def _bearer_matches(request: Request, expected: SecretStr) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.encode(), expected.get_secret_value().encode()
    )


def _acknowledge(database_url: str, escalation_id: int, by: str) -> Escalation:
    with session_scope(database_url) as session:
        return worklist.acknowledge_escalation(
            session=session, escalation_id=escalation_id, by=by, now=utcnow(), via="http"
        )


def _store(settings: Settings, raw: bytes, peer: str | None) -> Receipt:
    with session_scope(settings.database_url) as session:
        return intake.receive_fhir(
            session=session, raw=raw, source=SOURCE, settings=settings, peer=peer
        )


def _store_task(settings: Settings, raw: bytes, peer: str | None) -> Receipt:
    with session_scope(settings.database_url) as session:
        return intake.receive_fhir_task(
            session=session, raw=raw, source=intake.TASK_SOURCE, settings=settings, peer=peer
        )


def _ping(database_url: str) -> None:
    with get_engine(database_url).connect() as connection:
        connection.execute(text("SELECT 1"))


def _answer(receipt: Receipt) -> JSONResponse:
    if receipt.ack_code != "AA":
        code, status = _ISSUES.get(receipt.error_kind or "", ("exception", 500))
        body = outcome("error", code, receipt.reason, receipt.location)
    elif receipt.status == InboxStatus.DUPLICATE:
        status = 200
        body = outcome(
            "information",
            "duplicate",
            f"already received as inbox message {receipt.duplicate_of}; not processed again",
        )
    else:
        status = 201
        body = outcome(
            "information",
            "informational",
            f"accepted as inbox message {receipt.inbox_id} (accession {receipt.accession})",
        )
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)
