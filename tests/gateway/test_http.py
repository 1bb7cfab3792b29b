"""The FHIR HTTP gateway, running under uvicorn on 127.0.0.1, driven by httpx."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlmodel import col, select

from followup.gateway.http import create_app
from followup.services.intake import Receipt
from followup.settings import get_settings
from models.db import session_scope
from models.tables import InboxMessage, InboxStatus
from tests.conftest import SAMPLES, THIRD_PARTY

FHIR = SAMPLES / "fhir"
OFFICIAL = THIRD_PARTY / "fhir-r4"
TOKEN = "s3cret-token-for-tests"


@dataclass
class RunningApp:
    client: httpx.Client
    base_url: str
    database_url: str
    server: uvicorn.Server
    accepted: list[Receipt] = field(default_factory=list)

    def rows(self) -> list[InboxMessage]:
        with session_scope(self.database_url) as session:
            return list(session.exec(select(InboxMessage).order_by(col(InboxMessage.id))))

    def post(self, path: str, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(
            path,
            content=content,
            headers={"Content-Type": "application/fhir+json", **headers},
        )


def serve_with_server(app: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """Run the app under uvicorn in a thread; its base URL and the server (whose
    `server_state.tasks` are the request cycles in flight, background tasks included)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(10)


def serve(app: Any) -> Iterator[str]:
    """Run the app under uvicorn in a thread; its base URL."""
    for base_url, _ in serve_with_server(app):
        yield base_url


@pytest.fixture
def gateway(database_url: str) -> Iterator[RunningApp]:
    settings = get_settings(
        database_url=database_url, FOLLOWUP_HTTP_TOKEN=TOKEN, FOLLOWUP_HTTP_MAX_BODY_BYTES=2_000_000
    )
    accepted: list[Receipt] = []
    app = create_app(settings, on_accepted=accepted.append)
    for base_url, server in serve_with_server(app):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base_url, headers=auth, timeout=10) as client:
            yield RunningApp(client, base_url, database_url, server, accepted)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def wait_for_events(app: RunningApp, count: int) -> bool:
    """True when exactly `count` events were emitted. The emitter runs as a background task of
    its request's cycle: once no cycle is in flight, every event there will be has been emitted."""
    deadline = time.monotonic() + 5
    while len(app.accepted) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    while app.server.server_state.tasks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not app.server.server_state.tasks, "requests still in flight"
    return len(app.accepted) == count


@pytest.mark.parametrize("path", ["/fhir/DiagnosticReport", "/fhir"])
@pytest.mark.parametrize("sample", ["diagnosticreport_contained.json", "bundle_transaction.json"])
def test_report_is_accepted_then_idempotent(gateway: RunningApp, path: str, sample: str) -> None:
    body = (FHIR / sample).read_bytes()

    first = gateway.post(path, body)
    again = gateway.post(path, body)

    assert (first.status_code, again.status_code) == (201, 200)
    assert first.headers["content-type"].startswith("application/fhir+json")
    assert first.json()["issue"][0]["severity"] == "information"
    assert again.json()["issue"][0]["code"] == "duplicate"
    assert [row.status for row in gateway.rows()] == [InboxStatus.RECEIVED, InboxStatus.DUPLICATE]
    assert [row.raw for row in gateway.rows()] == [body, body]
    # The resend came before any run claimed the original: the original's event again (same
    # event id, so Prefect starts one run), not one for the duplicate row.
    assert wait_for_events(gateway, 2)
    assert {r.run_inbox_id for r in gateway.accepted} == {gateway.rows()[0].id}
    assert gateway.accepted[0].accession in {"ACC2026200103", "ACC2026300103"}


def test_corrected_report_is_new_content(gateway: RunningApp) -> None:
    report = load(FHIR / "diagnosticreport_contained.json")
    corrected = {**report, "status": "corrected", "conclusion": report["conclusion"] + " Addendum."}

    responses = [gateway.post("/fhir", report), gateway.post("/fhir", corrected)]

    assert [r.status_code for r in responses] == [201, 201]
    assert wait_for_events(gateway, 2)


@pytest.mark.parametrize(
    "example",
    sorted(p.name for p in OFFICIAL.glob("DiagnosticReport-*.json")),
)
def test_official_examples_get_422_naming_the_element(gateway: RunningApp, example: str) -> None:
    """The official examples reference patients this server cannot see, and lack accessions."""
    response = gateway.post("/fhir/DiagnosticReport", (OFFICIAL / example).read_bytes())

    assert response.status_code == 422
    issue = response.json()["issue"][0]
    assert issue["severity"] == "error"
    assert issue["code"] == "required"
    assert issue["expression"][0] in {"DiagnosticReport.identifier", "DiagnosticReport.subject"}
    [row] = gateway.rows()
    assert (row.status, row.error_location) == (InboxStatus.ERROR, issue["expression"][0])
    assert gateway.accepted == []


@pytest.mark.parametrize(
    ("body", "status", "code", "expression"),
    [
        (b"{broken", 400, "structure", None),
        ({"resourceType": "Patient", "id": "p"}, 400, "not-supported", "resourceType"),
        (
            {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "MRI"}},
            422,
            "required",
            "DiagnosticReport.identifier",
        ),
        (
            {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": 5}},
            422,
            "value",
            "DiagnosticReport.code.text",
        ),
    ],
)
def test_bad_bodies_get_an_operation_outcome_and_an_inbox_row(
    gateway: RunningApp,
    body: bytes | dict[str, Any],
    status: int,
    code: str,
    expression: str | None,
) -> None:
    response = gateway.post("/fhir", body)

    assert response.status_code == status
    issue = response.json()["issue"][0]
    assert (issue["code"], issue.get("expression", [None])[0]) == (code, expression)
    [row] = gateway.rows()
    assert row.status in {InboxStatus.ERROR, InboxStatus.REJECTED}
    resend = gateway.post("/fhir", body)
    assert (resend.status_code, resend.json()["issue"][0]["code"]) == (status, code)


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"]
)
def test_token_is_required(gateway: RunningApp, authorization: str | None) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    body = (FHIR / "diagnosticreport_contained.json").read_bytes()

    response = httpx.post(f"{gateway.base_url}/fhir", content=body, headers=headers, timeout=10)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["issue"][0]["code"] == "login"
    assert gateway.rows() == []


def test_body_over_the_limit(gateway: RunningApp) -> None:
    response = gateway.post("/fhir", b"{" + b" " * 2_100_000 + b"}")

    assert response.status_code == 413
    assert gateway.rows() == []


def test_a_chunked_body_is_cut_off_at_the_limit(gateway: RunningApp) -> None:
    """No Content-Length to go by: the body is counted as it streams in."""
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(10):  # 10 MB in all, the limit is 2 MB
            sent.append(1)
            yield b" " * 1_000_000

    response = gateway.client.post(
        "/fhir", content=chunks(), headers={"Content-Type": "application/fhir+json"}
    )

    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert response.json()["issue"][0]["code"] == "too-costly"
    assert gateway.rows() == []


def test_an_acknowledgement_body_is_held_to_the_small_limit(gateway: RunningApp) -> None:
    response = gateway.client.post("/escalations/1/ack", json={"by": "x" * 20_000})

    assert response.status_code == 413
    assert response.json() == {"detail": "the body is over 16384 bytes"}


def test_json_nested_past_the_limit_is_refused_unstored(gateway: RunningApp) -> None:
    response = gateway.post(
        "/fhir", b'{"resourceType": "Bundle", "entry": ' + b"[" * 65 + b"]" * 65
    )

    assert response.status_code == 400
    assert response.json()["issue"][0] == {
        "severity": "error",
        "code": "structure",
        "diagnostics": "the JSON is nested deeper than 64 levels",
    }
    assert gateway.rows() == []


def test_without_a_configured_token_fhir_intake_is_refused(database_url: str) -> None:
    for base_url in serve(create_app(get_settings(database_url=database_url),
                                     on_accepted=lambda receipt: None)):  # fmt: skip
        body = (FHIR / "diagnosticreport_contained.json").read_bytes()
        response = httpx.post(f"{base_url}/fhir", content=body, timeout=10)

        assert response.status_code == 403
        assert response.json()["issue"][0]["code"] == "forbidden"
    with session_scope(database_url) as session:
        assert session.exec(select(InboxMessage)).all() == []


def test_healthz(gateway: RunningApp) -> None:
    response = httpx.get(f"{gateway.base_url}/healthz", timeout=10)  # no token needed

    assert (response.status_code, response.json()) == (200, {"status": "ok", "database": "ok"})


def test_database_down(tmp_path: Path) -> None:
    settings = get_settings(
        database_url=f"sqlite:///{tmp_path / 'never-migrated.db'}", FOLLOWUP_HTTP_TOKEN=TOKEN
    )
    for base_url in serve(create_app(settings, on_accepted=lambda receipt: None)):
        body = (FHIR / "diagnosticreport_contained.json").read_bytes()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        response = httpx.post(f"{base_url}/fhir", content=body, headers=auth, timeout=10)

        assert response.status_code == 503
        assert response.json()["issue"][0]["code"] == "transient"


def test_healthz_reports_an_unreachable_database() -> None:
    nothing_listens = "postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2"
    settings = get_settings(database_url=nothing_listens)
    for base_url in serve(create_app(settings, on_accepted=lambda receipt: None)):
        response = httpx.get(f"{base_url}/healthz", timeout=10)

        assert response.status_code == 503
