"""dispatch-ehr-outbox: send the engine's bookings (SIU) and referrals (REF) to the EHR and the
specialists, every minute.

Orchestration only: the dispatcher (followup.services.ehr_dispatch) claims due rows, builds each
message once, delivers it over MLLP or FHIR and records the answer. The send task has no
Prefect retries: each row carries its own retry schedule in the outbox, and a run that stops
half way leaves the rest for the next minute. The deployment's concurrency limit of 1 keeps one
dispatcher, so one connection per destination is open at a time.
"""

from __future__ import annotations

import asyncio

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from followup.services.ehr_dispatch import EhrDispatcher, EhrPolicy, default_transports
from followup.settings import get_settings

# FHIR requests: the connection must open fast; a server may take its time to answer.
_HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@task(name="send-ehr-outbox", cache_policy=NO_CACHE)
async def send_ehr_outbox(max_seconds: float) -> dict[str, object]:
    settings = get_settings()
    policy = EhrPolicy.from_settings(settings)
    with httpx.Client(timeout=_HTTP_TIMEOUT) as http_client:
        dispatcher = EhrDispatcher(
            settings=settings, transports=default_transports(policy, http_client), policy=policy
        )
        report = await asyncio.to_thread(dispatcher.run, max_seconds=max_seconds)
    return report.as_dict()


@flow(name="dispatch-ehr-outbox", log_prints=False)
async def dispatch_ehr_outbox(max_seconds: float = 50.0) -> dict[str, object]:
    """Send what is due for up to `max_seconds` (less than the one-minute schedule)."""
    outcomes = await send_ehr_outbox(max_seconds)
    handled = {name: count for name, count in outcomes.items() if count and name != "seconds"}
    if handled:
        get_run_logger().info("EHR outbox: %s", handled)
        # Counts only: no patient data in artifacts.
        await acreate_table_artifact(
            key="ehr-outbox-dispatch",
            table=[{"outcome": name, "messages": count} for name, count in handled.items()],
            description="EHR and referral messages handled by the last dispatch run",
        )
    return outcomes
