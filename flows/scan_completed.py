"""scan-completed: one completed MRI report → decision, referrals, follow-up, reminders.

The flow only sequences tasks; every task calls one step of `followup.pipeline` in its own
transaction. Flow and tasks are async: a sync flow pays about a second at exit for its
heartbeat thread, and sync tasks cost ~20 ms each against ~2 ms for async ones.
Database and API tasks retry twice (I/O); classify does too, since it re-reads the stored
report (flows/classify.py), in the classifier worker when there is one.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectDistributedFuture
from prefect.runtime import flow_run
from prefect.states import Cancelled
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.engine import emit_task_run_state_change_event

from flows.classify import classify
from flows.daily_worklist import daily_worklist
from flows.hooks import publish_needs_attention
from followup import pipeline, routing
from followup.redaction import install_redaction
from followup.ris.scan import ScanCompleted
from followup.rules import load_rules
from followup.settings import Settings, get_settings
from models.db import session_scope
from models.types import utcnow

RESULT_POLL_SECONDS = 1.0
STATELESS_REREAD_SECONDS = 0.05


@task(name="load-scan", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def load_scan(inbox_id: int, settings: Settings) -> ScanCompleted:
    with session_scope(settings.database_url) as session:
        return pipeline.load_scan(session=session, inbox_id=inbox_id, settings=settings)


@task(name="tag-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def tag_run(tags: list[str]) -> None:
    """Route and urgency tags, so schedulers can filter runs in the UI."""
    current_id = flow_run.get_id()
    if current_id is None:
        return
    run_id = UUID(current_id)
    async with get_client() as client:
        current = await client.read_flow_run(run_id)
        await client.update_flow_run(run_id, tags=sorted(set(current.tags) | set(tags)))


@task(name="record-decision", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def record_decision(
    inbox_id: int, scan: ScanCompleted, decision: routing.Decision, settings: Settings
) -> pipeline.RecordedStudy:
    with session_scope(settings.database_url) as session:
        return pipeline.record_decision(
            session=session,
            inbox_id=inbox_id,
            scan=scan,
            decision=decision,
            rules=load_rules(settings.rules_path),
        )


@task(name="book-follow-up", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def book_follow_up(
    recorded: pipeline.RecordedStudy, settings: Settings
) -> pipeline.BookingOutcome:
    with session_scope(settings.database_url) as session:
        return pipeline.book_follow_up(session=session, recorded=recorded, settings=settings)


@task(name="schedule-reminders", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def schedule_reminders(appointment_id: int, settings: Settings) -> list[int]:
    with session_scope(settings.database_url) as session:
        return pipeline.schedule_reminders(
            session=session, appointment_id=appointment_id, settings=settings, now=utcnow()
        )


@task(name="finish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def finish(inbox_id: int, held: bool, settings: Settings) -> dict[str, Any]:
    with session_scope(settings.database_url) as session:
        return pipeline.finish(session=session, inbox_id=inbox_id, held=held)


@task(name="mark-failed", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def mark_failed(inbox_id: int, error: Exception, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        outcome = pipeline.fail(session=session, inbox_id=inbox_id, error=error, settings=settings)
    if outcome is not None:
        get_run_logger().warning(
            "inbox %d %s: %s",
            inbox_id,
            "held for a person" if outcome.needs_person else f"retries at {outcome.retry_at}",
            outcome.error,
        )


@task(name="publish-summary", cache_policy=NO_CACHE)
async def publish_summary(summary: dict[str, Any]) -> None:
    await acreate_markdown_artifact(
        key=pipeline.artifact_key(summary["accession"]),
        markdown=pipeline.scheduler_markdown(summary, zone=get_settings().site_zone),
        description=f"Scan {summary['accession']}: decision, booking and messages",
    )


def queue_classification(inbox_id: int, settings: Settings) -> PrefectDistributedFuture[Any] | None:
    """The classify task queued for the classifier worker, when there is one (see Settings).

    Queued before load-scan so that the worker classifies while this run claims and parses
    the row: classify needs only the row id. Should load-scan then fail (another run holds
    the row), the worker's answer goes unread: one classification wasted, nothing written.
    """
    if not settings.classifier_worker:
        return None
    return _queue_under(FlowRunContext.get(), inbox_id)


def _queue_under(run: FlowRunContext | None, inbox_id: int) -> PrefectDistributedFuture[Any]:
    """`classify.delay(inbox_id)`, its task run filed under `run` so that the UI lists it with
    the run's other tasks.

    Created from an empty context all the same: Prefect stores the caller's context with a
    queued task's parameters, and a flow run's holds the flow (which the worker cannot
    unpickle when the runner loaded it from its file) and the flow's parameters (the
    accession). `delay` takes the flow run from that context; `create_run` is told it.
    """

    def create() -> TaskRun:
        queued = classify.create_run(
            parameters={"inbox_id": inbox_id}, flow_run_context=run, deferred=True
        )
        return cast(TaskRun, run_coro_as_sync(queued))

    task_run = contextvars.Context().run(create)
    assert task_run.state is not None  # created Scheduled
    # As `delay` does: the Scheduled event, for the run's timeline in the UI.
    emit_task_run_state_change_event(
        task_run=task_run, initial_state=None, validated_state=task_run.state
    )
    return PrefectDistributedFuture(task_run_id=task_run.id)


async def classified(
    queued: PrefectDistributedFuture[Any] | None, inbox_id: int, settings: Settings
) -> routing.Decision:
    """The decision: the worker's answer to the queued run, else classified in this run."""
    if queued is None:
        return await classify(inbox_id)
    logger = get_run_logger()
    try:
        decision = await _worker_result(queued, settings.classifier_wait_seconds)
        logger.info("classified by the classifier worker (task run %s)", queued.task_run_id)
        return decision
    except TimeoutError:
        reason = f"no answer within {settings.classifier_wait_seconds:.0f} s"
        # So that a worker coming back later does not classify it again.
        async with get_client() as client:
            await client.set_task_run_state(
                queued.task_run_id, Cancelled(message="classified in the flow run"), force=True
            )
    except ObjectNotFound:
        reason = "the worker dropped the queued run; see its log"
    logger.warning(
        "the classifier worker did not classify the report (%s); classifying here", reason
    )
    return await classify(inbox_id)


async def _worker_result(
    queued: PrefectDistributedFuture[Any], wait_seconds: float
) -> routing.Decision:
    """The queued run's result, re-reading its state every second: Prefect's waiter learns of
    the completion from an events subscription that may not be connected yet when the worker
    finishes (measured: about one run in twenty then waited for the whole timeout)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        slice_seconds = min(RESULT_POLL_SECONDS, max(deadline - time.monotonic(), 0.0))
        try:
            # Typed as the coroutine the async task returns; the worker awaited it already.
            return cast(routing.Decision, await queued.result_async(timeout=slice_seconds))
        except TimeoutError:
            pass
        except RuntimeError:
            # Prefect's server records the state changes a task worker reports as events, and
            # a read between two of them can find the run with no state, which Prefect's wait
            # raises as "has no state which means it hasn't started yet" (one run in 160,
            # bench_e2e at 08:31 UTC, the worker running it). Not an answer: read again. A
            # RuntimeError the classification itself raised comes with a final state.
            if await _has_final_state(queued.task_run_id):
                raise
            await asyncio.sleep(min(STATELESS_REREAD_SECONDS, slice_seconds))
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no result within {wait_seconds:g} s")


async def _has_final_state(task_run_id: UUID) -> bool:
    async with get_client() as client:
        state = (await client.read_task_run(task_run_id)).state
    return state is not None and state.is_final()


@flow(
    name="scan-completed",
    flow_run_name="scan-{accession}",
    log_prints=False,
    on_failure=[publish_needs_attention],
    on_crashed=[publish_needs_attention],
)
async def scan_completed(inbox_id: int, accession: str = "") -> dict[str, Any]:
    """Process one stored scan-completed message (the inbox row is the durable record).

    `accession` only names the run; the accession processed is the one in the stored message.
    """
    settings = get_settings()
    install_redaction("", "prefect")
    try:
        queued = queue_classification(inbox_id, settings)
        scan = await load_scan(inbox_id, settings)
        decision = await classified(queued, inbox_id, settings)
        await tag_run(
            pipeline.run_tags(decision, site=settings.site_code, result_status=scan.result_status)
        )
        recorded = await record_decision(inbox_id, scan, decision, settings)
        if not recorded.held:
            booking = await book_follow_up(recorded, settings)
            if booking.appointment_id is not None:
                await schedule_reminders(booking.appointment_id, settings)
        summary = await finish(inbox_id, recorded.held, settings)
    except pipeline.InboxRowFinished as finished:
        # A stray or repeated event for a row already done: its answer, no work redone.
        get_run_logger().info("%s", finished)
        return finished.summary
    except Exception as error:
        await mark_failed(inbox_id, error, settings)
        raise
    await publish_summary(summary)
    if summary.get("escalations"):
        # Escalations must not wait for the 07:00 refresh of the schedulers' tables.
        await daily_worklist()
    return summary
