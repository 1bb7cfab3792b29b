"""`followup serve` serves prefect.yaml's deployments as written there."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx

from followup.gateway.serve import PREFECT_YAML, gateway_app, served_deployments
from followup.settings import get_settings


def test_served_deployments_carry_prefect_yaml_triggers_and_schedules() -> None:
    deployments = {d.name: d for d in asyncio.run(served_deployments(PREFECT_YAML))}

    scan = deployments["scan-completed"]
    [trigger] = scan.triggers
    assert trigger.expect == {"ris.scan.completed"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "ris.study.*"}
    assert trigger.parameters == {
        "inbox_id": "{{ event.payload.inbox_id }}",
        "accession": "{{ event.payload.accession }}",
    }
    assert scan.concurrency_limit == 8
    assert scan.entrypoint == "flows/scan_completed.py:scan_completed"

    sweep = deployments["sweep-inbox"]
    [schedule] = sweep.schedules
    assert schedule.schedule.interval == timedelta(seconds=60)
    assert sweep.parameters == {"older_than_seconds": 120}
    assert sweep.triggers == []


def test_gateway_app_mounts_the_twilio_webhooks() -> None:
    app = gateway_app(get_settings(), on_accepted=lambda receipt: None)

    async def post(path: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return (await client.post(path)).status_code

    # Unsigned: refused by the Twilio route itself, which is therefore mounted.
    assert asyncio.run(post("/twilio/status")) == 403
    assert asyncio.run(post("/twilio/inbound")) == 403
    assert asyncio.run(post("/twilio/elsewhere")) == 404
