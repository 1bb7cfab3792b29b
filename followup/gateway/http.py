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
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from followup import intake
from followup.gateway import OnAccepted, in_database_thread
from followup.intake import Receipt
from followup.settings import Settings
from models.db import get_engine, session_scope
from models.tables import InboxStatus

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
        if settings.http_token is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = settings.http_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            raise _Refusal(
                401, "login", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
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

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await in_database_thread(settings.database_url, _ping, settings.database_url)
        except Exception as exc:
            logger.error("health check: database unreachable: %s", type(exc).__name__)
            return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return app


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
