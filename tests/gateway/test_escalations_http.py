"""`POST /escalations/{id}/ack` on the gateway under uvicorn, driven by httpx."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from sqlmodel import select

from followup.gateway.http import create_app
from followup.settings import get_settings
from models.db import session_scope
from models.tables import AuditEvent, Escalation, EscalationStatus
from tests.gateway.test_http import TOKEN, serve


@pytest.fixture
def base_url(database_url: str) -> Iterator[str]:
    settings = get_settings(database_url=database_url, FOLLOWUP_HTTP_TOKEN=TOKEN)
    yield from serve(create_app(settings, on_accepted=lambda _receipt: None))


@pytest.fixture
def escalation_id(database_url: str) -> int:
    with session_scope(database_url) as session:
        escalation = Escalation(kind="critical_finding", reason="cord compression", target="npi:1")
        session.add(escalation)
        session.flush()
        assert escalation.id is not None
        return escalation.id


def _escalation(database_url: str, escalation_id: int) -> Escalation:
    with session_scope(database_url) as session:
        escalation = session.get(Escalation, escalation_id)
        assert escalation is not None
        return escalation


def _audit(database_url: str) -> list[tuple[str, str, int | None, dict[str, str]]]:
    with session_scope(database_url) as session:
        return [
            (e.actor, e.action, e.entity_id, e.detail) for e in session.exec(select(AuditEvent))
        ]


def _ack(
    base_url: str,
    path: str,
    *,
    json: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{base_url}{path}",
        json=json,
        params=params,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )


def test_ack_closes_the_escalation_and_audits_who(
    base_url: str, escalation_id: int, database_url: str
) -> None:
    answer = _ack(base_url, f"/escalations/{escalation_id}/ack", json={"by": "dr.brennan"})

    assert answer.status_code == 200
    body = answer.json()
    assert (body["id"], body["kind"], body["status"], body["acknowledged_by"]) == (
        escalation_id,
        "critical_finding",
        "acknowledged",
        "dr.brennan",
    )
    assert "reason" not in body  # clinical text stays in the database
    stored = _escalation(database_url, escalation_id)
    assert stored.status == EscalationStatus.ACKNOWLEDGED
    assert datetime.fromisoformat(body["acknowledged_at"]) == stored.acknowledged_at
    assert _audit(database_url) == [
        (
            "dr.brennan",
            "escalation.acknowledged",
            escalation_id,
            {"kind": "critical_finding", "via": "http"},
        )
    ]


def test_a_second_ack_answers_with_the_first(
    base_url: str, escalation_id: int, database_url: str
) -> None:
    first = _ack(base_url, f"/escalations/{escalation_id}/ack", params={"by": "dr.brennan"})
    second = _ack(base_url, f"/escalations/{escalation_id}/ack", json={"by": "someone-else"})

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert first.json()["acknowledged_by"] == "dr.brennan"
    assert len(_audit(database_url)) == 1


def test_unknown_escalation_is_404(base_url: str, database_url: str) -> None:
    answer = _ack(base_url, "/escalations/999/ack", json={"by": "dr.brennan"})

    assert answer.status_code == 404
    assert _audit(database_url) == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["no-token", "wrong-token", "wrong-scheme"],
)
def test_ack_needs_the_bearer_token(
    base_url: str, escalation_id: int, database_url: str, headers: dict[str, str]
) -> None:
    answer = httpx.post(
        f"{base_url}/escalations/{escalation_id}/ack",
        json={"by": "intruder"},
        headers=headers,
        timeout=10,
    )

    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert _escalation(database_url, escalation_id).status == EscalationStatus.OPEN
    assert _audit(database_url) == []


@pytest.mark.parametrize(
    "request_kwargs",
    [{}, {"json": {"by": "   "}}, {"params": {"by": "x" * 65}}],
    ids=["nobody", "blank", "too-long"],
)
def test_ack_needs_who(
    base_url: str, escalation_id: int, database_url: str, request_kwargs: dict[str, dict[str, str]]
) -> None:
    answer = _ack(base_url, f"/escalations/{escalation_id}/ack", **request_kwargs)

    assert answer.status_code == 422
    assert _escalation(database_url, escalation_id).status == EscalationStatus.OPEN


def test_without_a_configured_token_ack_is_refused(database_url: str, escalation_id: int) -> None:
    open_gateway = create_app(
        get_settings(database_url=database_url), on_accepted=lambda _receipt: None
    )
    for url in serve(open_gateway):
        answer = _ack(url, f"/escalations/{escalation_id}/ack", json={"by": "dr.brennan"})

        assert answer.status_code == 403
    assert _escalation(database_url, escalation_id).status == EscalationStatus.OPEN
