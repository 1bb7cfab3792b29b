"""HTTP gateway: FHIR R4 DiagnosticReport (alone or in a Bundle) in, an OperationOutcome out.

Choices, and why:

* Both `POST /fhir/DiagnosticReport` and `POST /fhir` take either a DiagnosticReport or a
  Bundle holding one: RIS integrations differ in which they send, and the parser finds the
  report either way.
* Answers: 201 for a new accepted report, 200 for a resend of one (the same identifier, status
  and text: idempotent), 400 for what is not a readable FHIR resource or not a type taken here,
  422 for a readable report missing what routing needs (accession, patient...), 401 without the
  bearer token, 413 over the size limit, 503 when the message could not be stored. Every answer
  is an OperationOutcome; its `expression` names the element at fault.
* The body is stored raw by intake (committed) before anything is parsed, so every request
  that passed authentication leaves an inbox row, whatever its content. Unauthenticated
  requests leave none: they are not from the RIS.
* The token is compared with `hmac.compare_digest` (constant time), so response timing does
  not reveal how much of a guess was right.
* `on_accepted` (the event emitter) runs as a background task after the response is sent.
* Logs carry the inbox id, accession and status, never the body (PHI).
* `POST /escalations/{id}/ack` closes an escalation (who: `by` in a JSON body or the query)
  through the same function as `followup escalations ack`, so both keep the first
  acknowledgement and audit it: 200 with the acknowledgement (the original one on a repeat),
  404 for an unknown id, 401 without the bearer token. Acknowledging silences the re-notices
  of a critical finding, so it is never open: without a configured token the endpoint
  answers 403.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, SecretStr, StringConstraints
from sqlalchemy import text

from followup import intake
from followup.gateway import OnAccepted, in_database_thread
from followup.intake import Receipt
from followup.settings import Settings
from models import worklist
from models.db import get_engine, session_scope
from models.tables import Escalation, InboxStatus
from models.types import utcnow

logger = logging.getLogger(__name__)

SOURCE = "http"
FHIR_JSON = "application/fhir+json"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024

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


def outcome(
    severity: str, code: str, diagnostics: str, expression: str | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def create_app(
    settings: Settings,
    *,
    on_accepted: OnAccepted,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    app = FastAPI(title="followup gateway", docs_url=None, redoc_url=None)

    @app.exception_handler(_Refusal)
    async def _refused(_request: Request, refusal: _Refusal) -> JSONResponse:
        return JSONResponse(
            outcome("error", refusal.code, refusal.message),
            status_code=refusal.status,
            media_type=FHIR_JSON,
            headers=refusal.headers,
        )

    def authorized(request: Request) -> None:
        if settings.http_token is not None and not _bearer_matches(request, settings.http_token):
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
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise _Refusal(413, "too-costly", f"the body is over {max_body_bytes} bytes")
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise _Refusal(413, "too-costly", f"the body is over {max_body_bytes} bytes")
        peer = f"{request.client.host}:{request.client.port}" if request.client else None
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

    app.post("/fhir/DiagnosticReport", dependencies=[Depends(authorized)])(receive)
    app.post("/fhir", dependencies=[Depends(authorized)])(receive)

    @app.post("/escalations/{escalation_id}/ack", dependencies=[Depends(token_required)])
    async def acknowledge(
        escalation_id: int,
        body: Acknowledgement | None = None,
        by: Annotated[Acknowledger | None, Query()] = None,
    ) -> AcknowledgedEscalation:
        who = body.by if body is not None else by
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
