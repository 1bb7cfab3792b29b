"""dispatch-reminders: send the SMS that are due, every minute.

Orchestration only: the dispatcher (followup.messaging.dispatch) claims due outbox rows, runs
the send-time checks, paces the API calls and records what Twilio said. The task has no Prefect
retries: each message carries its own retry schedule in the outbox, and a run that stops half
way leaves the rest for the next minute. The deployment's concurrency limit of 1 keeps one
dispatcher, so the messages-per-second limit holds across runs.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from followup.messaging.dispatch import Dispatcher, DispatchPolicy
from followup.messaging.sender import build_sender
from followup.settings import get_settings


@task(name="send-due-sms", cache_policy=NO_CACHE)
async def send_due_sms(max_seconds: float) -> dict[str, object]:
    settings = get_settings()
    dispatcher = Dispatcher(
        database_url=settings.database_url,
        sender=build_sender(settings),
        policy=DispatchPolicy.from_settings(settings),
    )
    report = await asyncio.to_thread(dispatcher.run, max_seconds=max_seconds)
    return report.as_dict()


@flow(name="dispatch-reminders", log_prints=False)
async def dispatch_reminders(max_seconds: float = 50.0) -> dict[str, object]:
    """Send what is due for up to `max_seconds` (less than the one-minute schedule)."""
    outcomes = await send_due_sms(max_seconds)
    handled = {name: count for name, count in outcomes.items() if count and name != "seconds"}
    if handled:
        get_run_logger().info("SMS dispatch: %s", handled)
        # Counts only: what schedulers see per run, with no patient data.
        await acreate_table_artifact(
            key="sms-dispatch",
            table=[{"outcome": name, "messages": count} for name, count in handled.items()],
            description="Outbox messages handled by the last dispatch run",
        )
    return outcomes
