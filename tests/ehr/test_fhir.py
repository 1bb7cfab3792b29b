"""The FHIR R4 alternative: outbound conditional PUTs to a test FHIR server over real HTTP with
the flow's httpx client, and the specialist's Task updates through the HTTP gateway."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from followup.core.referrals import ReferralStatus
from followup.gateway.http import create_app
from followup.services.ehr_dispatch import EhrDispatcher, default_transports
from followup.settings import Settings
from models.tables import EhrOutboxStatus
from tests.ehr.conftest import POLICY, Clock, ingest, outbox, settings_for, the_referral, visit_id
from tests.ehr.fake_fhir import fake_fhir
from tests.gateway.test_http import TOKEN, serve

SYSTEM = "urn:followup:demo:referral"


def dispatch_fhir(settings: Settings, clock: Clock) -> dict[str, int]:
    with httpx.Client(timeout=5) as client:
        dispatcher = EhrDispatcher(
            settings=settings,
            transports=default_transports(POLICY, client),
            policy=POLICY,
            now=clock,
        )
        return dict(dispatcher.run(max_seconds=30).outcomes)


def test_a_scan_puts_an_appointment_and_a_service_request_with_its_task(
    clinic: str, clock: Clock
) -> None:
    with fake_fhir(503) as server:
        settings = settings_for(
            clinic, ehr_fhir_url=server.base_url, referrals_fhir_url=server.base_url
        )
        ingest(settings)
        first = dispatch_fhir(settings, clock)
        clock.advance(POLICY.retry_base_seconds)
        second = dispatch_fhir(settings, clock)

    assert first == {"retry": 1, "done": 1}
    assert second == {"done": 1}
    referral = the_referral(clinic)
    assert sorted(server.resources) == [
        ("Appointment", f"urn:followup:demo:visit|VISIT{visit_id(clinic)}"),
        ("ServiceRequest", f"{SYSTEM}|REF{referral.id}"),
        ("Task", f"{SYSTEM}|REF{referral.id}"),
    ]
    task = server.resources[("Task", f"{SYSTEM}|REF{referral.id}")]
    assert (task["status"], task["focus"]["identifier"]["value"]) == (
        "requested",
        f"REF{referral.id}",
    )
    assert referral.status == ReferralStatus.SENT


def test_a_422_is_held_with_the_servers_diagnostics(clinic: str, clock: Clock) -> None:
    with fake_fhir(422) as server:
        settings = settings_for(clinic, ehr_fhir_url=server.base_url)
        ingest(settings)
        outcomes = dispatch_fhir(settings, clock)

    assert outcomes == {"held": 1, "dry_run": 1}
    [held] = [row for row in outbox(clinic) if row.status == EhrOutboxStatus.HELD]
    assert (
        held.error
        == "HTTP 422 on Appointment?identifier=urn:followup:demo:visit%7CVISIT1: test 422"
    )


@pytest.fixture
def http_gateway(clinic: str) -> Iterator[httpx.Client]:
    settings = settings_for(clinic, FOLLOWUP_HTTP_TOKEN=TOKEN)
    for base_url in serve(create_app(settings, on_accepted=lambda receipt: None)):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base_url, headers=auth, timeout=10) as client:
            yield client


def task(referral_id: int, status: str, **extra: object) -> dict[str, object]:
    return {
        "resourceType": "Task",
        "identifier": [{"system": SYSTEM, "value": f"REF{referral_id}"}],
        "status": status,
        "intent": "order",
        **extra,
    }


def test_task_updates_move_the_referral_and_an_unknown_one_is_refused(
    clinic: str, clock: Clock, http_gateway: httpx.Client
) -> None:
    with fake_fhir() as server:
        settings = settings_for(clinic, referrals_fhir_url=server.base_url)
        ingest(settings)
        dispatch_fhir(settings, clock)
    referral_id = the_referral(clinic).id
    assert referral_id is not None

    accepted = http_gateway.post("/fhir/Task", json=task(referral_id, "accepted"))
    booked = http_gateway.put(
        "/fhir/Task",
        json=task(
            referral_id, "in-progress", executionPeriod={"start": "2026-12-16T10:00:00-05:00"}
        ),
    )
    unknown = http_gateway.post("/fhir/Task", json=task(referral_id + 50, "accepted"))

    assert (accepted.status_code, booked.status_code) == (200, 200)
    referral = the_referral(clinic)
    assert referral.status == ReferralStatus.SCHEDULED
    assert referral.scheduled_for is not None
    assert referral.scheduled_for.isoformat() == "2026-12-16T15:00:00+00:00"
    assert unknown.status_code == 422
    assert f"REF{referral_id + 50}" in unknown.json()["issue"][0]["diagnostics"]
