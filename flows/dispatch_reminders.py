"""dispatch-reminders: expire unanswered waitlist offers, then send the SMS that are due, every
minute.

Orchestration only. Expiry (followup.services.visits) closes offers past their deadline and
offers each slot to the next waitlisted patient, with its text in the outbox, before the
dispatcher (followup.services.dispatch) claims due rows: the next offer goes out in the same
run. The dispatcher runs the send-time checks, paces the API calls and records what Twilio
said. A failed expiry does not hold the sends back; the run still fails after them, so it
shows. The send task has no Prefect retries: each message carries its own retry schedule in
the outbox, and a run that stops half way leaves the rest for the next minute. The
deployment's concurrency limit of 1 keeps one dispatcher, so the messages-per-second limit
holds across runs.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from followup.messaging.sender import build_sender
from followup.services import visits
from followup.services.dispatch import Dispatcher, DispatchPolicy
from followup.settings import get_settings
from models.db import session_scope
from models.types import utcnow

ACTOR = "flow:dispatch-reminders"


@task(name="expire-waitlist-offers", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def expire_waitlist_offers() -> int:
    """Expire what is past its deadline (waitlist offers, reschedule holds nobody chose) and
    enqueue the texts of the offers that makes; how many texts.

    Synchronous: one short transaction, nothing else in the flow runs meanwhile.
    """
    settings = get_settings()
    now = utcnow()
    with session_scope(settings.database_url) as session:
        expired = visits.expire_waitlist_offers(
            session=session, settings=settings, now=now, actor=ACTOR
        )
        released = visits.release_lapsed_reschedule_holds(
            session=session, settings=settings, now=now, actor=ACTOR
        )
        return len(expired.texts.offers) + len(released.texts.offers)


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
    """Expire lapsed waitlist offers, then send what is due for up to `max_seconds` (less than
    the one-minute schedule)."""
    expiry = expire_waitlist_offers(return_state=True)
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
    return {"offer_texts": await expiry.aresult(), **outcomes}
