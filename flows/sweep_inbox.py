"""sweep-inbox: re-submit accepted messages that no live flow run holds.

Prefect keeps accepted events in memory until its trigger service processes them (an event
is lost if the server stops first), so the inbox is the record and this flow, scheduled every
minute, re-emits `ris.scan.completed` for rows still `received` after `older_than_seconds`.
A row stored but never judged (its gateway stopped between the commit of the raw bytes and
the judgement) is judged first, as the gateway would have judged it: when its sender's
resend was judged meanwhile, it is that resend's duplicate and starts nothing.
The event id is the row's, so a re-emitted event whose original was processed is dropped by
Prefect's deduplication instead of starting a second run.

A row whose run failed waits in `retry` until its `next_attempt_at`
(followup/core/inbox_lifecycle.py)
and is then submitted again the same way, under an id derived from the failed attempt's claim.

A run that dies (its runner killed) leaves its row `processing`. Once the claim is older than
the lease (`FOLLOWUP_PROCESSING_LEASE_SECONDS`) the row is given back, by a compare-and-set
that only one of two sweeps wins, and submitted under an id derived from the dead claim.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.events import emit_for_inbox
from followup.services import intake
from followup.settings import get_settings
from models import inbox_queries
from models.db import session_scope
from models.inbox_queries import Submission
from models.types import utcnow


@task(name="unclaimed-messages", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def unclaimed_messages(older_than_seconds: int, limit: int) -> list[Submission]:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        rows = inbox_queries.unclaimed_messages(
            session=session,
            received_before=utcnow() - timedelta(seconds=older_than_seconds),
            limit=limit,
        )
        return [
            Submission(row.id, row.accession or "", row.claimed_at)
            for row in rows
            if row.id is not None
        ]


@task(name="judge-stranded-messages", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def judge_stranded_messages(older_than_seconds: int, limit: int) -> int:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        receipts = intake.judge_stranded_messages(
            session=session,
            settings=settings,
            received_before=utcnow() - timedelta(seconds=older_than_seconds),
            limit=limit,
        )
        return len(receipts)


@task(name="release-stale-claims", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def release_stale_claims(limit: int) -> list[Submission]:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        return inbox_queries.release_stale_claims(
            session=session,
            claimed_before=utcnow() - timedelta(seconds=settings.processing_lease_seconds),
            limit=limit,
        )


@task(name="release-due-retries", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def release_due_retries(limit: int) -> list[Submission]:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        return inbox_queries.release_due_retries(session=session, now=utcnow(), limit=limit)


@flow(name="sweep-inbox", log_prints=False)
async def sweep_inbox(older_than_seconds: int = 120, limit: int = 500) -> int:
    """Re-emit the event of every accepted row older than `older_than_seconds`, of every row
    whose run died and of every failed row due again; the count emitted."""
    logger = get_run_logger()
    # Stranded rows first: those accepted are then among the unclaimed ones.
    stranded = await judge_stranded_messages(older_than_seconds, limit)
    # Unclaimed rows before released ones: a row released below is then submitted once.
    waiting = await unclaimed_messages(older_than_seconds, limit)
    released = await release_stale_claims(limit)
    retried = await release_due_retries(limit)
    rows = waiting + released + retried
    emitted = sum(
        emit_for_inbox(
            inbox_id=row.inbox_id, accession=row.accession, previous_claim=row.previous_claim
        )
        for row in rows
    )
    if rows or stranded:
        logger.info(
            "judged %d stranded inbox rows; re-emitted %d of %d inbox rows (%d unclaimed, "
            "%d released from dead runs, %d failed and due again)",
            stranded,
            emitted,
            len(rows),
            len(waiting),
            len(released),
            len(retried),
        )
    return emitted
