"""scan-completed: one completed MRI report → decision, referrals, follow-up, reminders.

The flow only sequences tasks; every task calls steps of `followup.services.pipeline`, each in its
own
transaction. A task run is a retry boundary (the Prefect server spends 25–55 ms of CPU on each,
and records three state events for it, so there are three): claiming the row (not repeatable:
a second claim by the same run is refused), deciding (classify + record), and booking with its
reminders and marking the row done (each idempotent, so one retry re-runs them safely).
The run's tags and its summary artifact are written from the flow itself, once each.

Runs execute in a warm worker (followup/warm_worker.py), several on one event loop: the
blocking database and NLP work runs in a worker thread, so the loop stays free for the other
runs and a hung statement cannot outlive the run's timeout (its thread is abandoned, the run
fails, the inbox row goes back through the lease).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import anyio.to_thread
from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.daily_worklist import refresh_worklist
from flows.events import SCAN_FLOW, emit_review_needed
from flows.hooks import publish_needs_attention
from followup.core import routing
from followup.core.redaction import install_redaction
from followup.core.rules import load_rules
from followup.ris.scan import ScanCompleted
from followup.services import pipeline, review
from followup.settings import Settings, get_settings
from models.db import session_scope
from models.types import utcnow

# Under the inbox lease (FOLLOWUP_PROCESSING_LEASE_SECONDS, 600 s by default), so a hung run
# ends before sweep-inbox hands its row to another run. A scan takes well under a second.
SCAN_TIMEOUT_SECONDS = 300

T = TypeVar("T")
# One report at a time through the NLP pipeline, which is shared by the runs of a warm worker
# and not documented as safe across threads; the GIL serialises that CPU work anyway.
_NLP = threading.Lock()


async def _off_the_loop(step: Callable[[], T]) -> T:
    # Abandoned on cancellation: a timed-out run gives the loop back at once.
    return await anyio.to_thread.run_sync(step, abandon_on_cancel=True)


class Decided(NamedTuple):
    decision: routing.Decision
    recorded: pipeline.RecordedStudy


@task(name="load-scan", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def load_scan(inbox_id: int, settings: Settings) -> ScanCompleted:
    def claim() -> ScanCompleted:
        with session_scope(settings.database_url) as session:
            return pipeline.load_scan(session=session, inbox_id=inbox_id, settings=settings)

    return await _off_the_loop(claim)


@task(name="decide", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def decide(inbox_id: int, scan: ScanCompleted, settings: Settings) -> Decided:
    """Classify the findings and record the decision, referrals and escalations."""

    def classify_and_record() -> Decided:
        from followup import nlp  # loaded once per worker process (warm_worker.prepare)

        rules = load_rules(settings.rules_path)
        with _NLP:
            decision = nlp.classify_report(scan.report_text, rules, coded_items=scan.coded_items)
        with session_scope(settings.database_url) as session:
            recorded = pipeline.record_decision(
                session=session,
                inbox_id=inbox_id,
                scan=scan,
                decision=decision,
                rules=rules,
                on_call_npi=settings.on_call_provider_npi,
            )
        return Decided(decision, recorded)

    return await _off_the_loop(classify_and_record)


@task(name="book-and-finish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def book_and_finish(
    inbox_id: int, recorded: pipeline.RecordedStudy, settings: Settings
) -> dict[str, Any]:
    """Book (or keep, move, cancel) the follow-up and store its confirmation and reminders,
    then mark the row done; the row's summary. One retry boundary: each step is idempotent
    (per study, per appointment and kind, per row), so a retry redoes none of their work."""

    def book_and_mark_done() -> dict[str, Any]:
        if not recorded.held:
            with session_scope(settings.database_url) as session:
                booking = pipeline.book_follow_up(
                    session=session, recorded=recorded, settings=settings
                )
            if booking.appointment_id is not None:
                with session_scope(settings.database_url) as session:
                    pipeline.schedule_reminders(
                        session=session,
                        appointment_id=booking.appointment_id,
                        settings=settings,
                        now=utcnow(),
                    )
        with session_scope(settings.database_url) as session:
            return pipeline.finish(session=session, inbox_id=inbox_id, held=recorded.held)

    return await _off_the_loop(book_and_mark_done)


@task(name="mark-failed", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def mark_failed(inbox_id: int, error: Exception, settings: Settings) -> None:
    def record_failure() -> Any:
        with session_scope(settings.database_url) as session:
            return pipeline.fail(session=session, inbox_id=inbox_id, error=error, settings=settings)

    outcome = await _off_the_loop(record_failure)
    if outcome is not None:
        get_run_logger().warning(
            "inbox %d %s: %s",
            inbox_id,
            "held for a person" if outcome.needs_person else f"retries at {outcome.retry_at}",
            outcome.error,
        )


async def tag_this_run(tags: list[str]) -> None:
    """Route and urgency tags, so schedulers can filter runs in the UI: one update, added to
    the tags the run was created with (the deployment's)."""
    current_id = flow_run.get_id()
    if current_id is None:
        return
    async with get_client() as client:
        await client.update_flow_run(
            UUID(current_id), tags=sorted(set(flow_run.get_tags()) | set(tags))
        )


async def publish_summary(summary: dict[str, Any]) -> None:
    await acreate_markdown_artifact(
        key=pipeline.artifact_key(summary["accession"]),
        markdown=pipeline.scheduler_markdown(summary, zone=get_settings().site_zone),
        description=f"Scan {summary['accession']}: decision, booking and messages",
    )


@flow(
    name=SCAN_FLOW,
    flow_run_name="scan-{accession}",
    log_prints=False,
    timeout_seconds=SCAN_TIMEOUT_SECONDS,
    on_failure=[publish_needs_attention],
    on_crashed=[publish_needs_attention],
)
async def scan_completed(inbox_id: int, accession: str = "") -> dict[str, Any]:
    """Process one stored scan-completed message (the inbox row is the durable record).

    `accession` only names the run; the accession processed is the one in the stored message.
    A second run for a row another live run holds (a repeated event, the sweep) ends Completed,
    tagged `inbox:duplicate-run`: the holder answers for the row, and if it dies the lease hands
    the row to sweep-inbox, so no person has anything to do and no needs-attention alert fires.
    """
    settings = get_settings()
    install_redaction("", "prefect")
    try:
        scan = await load_scan(inbox_id, settings)
        decided = await decide(inbox_id, scan, settings)
        await tag_this_run(
            pipeline.run_tags(
                decided.decision, site=settings.site_code, result_status=scan.result_status
            )
        )
        summary = await book_and_finish(inbox_id, decided.recorded, settings)
    except pipeline.InboxRowFinished as finished:
        # A stray or repeated event for a row already done: its answer, no work redone.
        get_run_logger().info("%s", finished)
        return finished.summary
    except pipeline.InboxRowClaimed as claimed:
        get_run_logger().info("%s", claimed)
        await tag_this_run([pipeline.tag("inbox", "duplicate-run")])
        return {"inbox_id": inbox_id, "duplicate_run": True}
    except Exception as error:
        await mark_failed(inbox_id, error, settings)
        raise
    await publish_summary(summary)
    waiting = review.tasks_for_a_person(summary)
    if waiting:
        emit_review_needed(accession=summary["accession"], task_ids=waiting)
    if summary.get("escalations"):
        # Escalations must not wait for the 07:00 refresh of the schedulers' tables.
        await refresh_worklist()
    return summary
