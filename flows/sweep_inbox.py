"""sweep-inbox: submit again accepted messages that no live flow run holds.

Prefect keeps accepted events in memory until its trigger service processes them (an event
is lost if the server stops first), and a run its trigger failed to create (an action that
fails on a busy Prefect database) is not tried again, while the event id stays "seen" for 30
minutes. So the inbox is the record, and this flow, scheduled every minute, creates a
scan-completed run itself (named `scan-{accession}`, from the deployment) for every row still
`received` after `older_than_seconds`, every row whose run died and every failed row due
again — unless a live run of that deployment holds the row (waiting for a worker or a
concurrency slot, pending, running), so a backlog is not submitted twice. The run exists when
the call returns, so the next sweep sees it; a sweep retried after a partial pass reuses its
idempotency keys instead of creating a second run for a row. Before it creates the run of a
row never claimed, it takes the row's event id (a `followup.inbox.swept` event), so a late copy
of the gateway's event (resent by Prefect's client once the server is back) is dropped instead
of starting a second run.

A row stored but never judged (its gateway stopped between the commit of the raw bytes and
the judgement) is judged first, as the gateway would have judged it: when its sender's
resend was judged meanwhile, it is that resend's duplicate and starts nothing.

A row whose run failed waits in `retry` until its `next_attempt_at`
(followup/core/inbox_lifecycle.py) and is then given back to `received` and submitted the same way.

A run that dies (its worker killed) leaves its row `processing`. Once the claim is older than
the lease (`FOLLOWUP_PROCESSING_LEASE_SECONDS`) the row is given back, by a compare-and-set
that only one of two sweeps wins, and submitted.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect import flow, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.runtime import flow_run

from flows.events import SCAN_FLOW, mark_swept
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


# Not finished: the run will still claim its row (or is claiming it now).
LIVE_STATES = [
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
]
PAGE = 200  # the Prefect API's largest page


SCAN_DEPLOYMENT = f"{SCAN_FLOW}/scan-completed"  # prefect.yaml


@task(name="submit-runs", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def submit_runs(rows: list[Submission], sweep_run: str) -> int:
    """A scan-completed run for each row no live run holds; the count created."""
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(SCAN_DEPLOYMENT)
        held = await rows_of_live_runs(client, deployment.id)
        # Read after the live runs: a row a run finished meanwhile (its claim released by
        # this sweep while the run was still going, say) is no longer waiting.
        settings = get_settings()
        with session_scope(settings.database_url) as session:
            waiting = inbox_queries.still_received(
                session=session, inbox_ids=[row.inbox_id for row in rows]
            )
        created = 0
        for row in rows:
            if (row.inbox_id, row.accession) in held or row.inbox_id not in waiting:
                continue
            if row.previous_claim is None:
                # The gateway's own event for this row may still arrive late (Prefect's client
                # resends unconfirmed events when it reconnects); taking its id first makes
                # Prefect drop that copy instead of starting a second run beside this one.
                mark_swept(inbox_id=row.inbox_id, accession=row.accession)
            await client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"inbox_id": row.inbox_id, "accession": row.accession},
                name=f"scan-{row.accession}",
                idempotency_key=f"sweep-inbox {sweep_run}: inbox {row.inbox_id}",
            )
            created += 1
        return created


async def rows_of_live_runs(client: PrefectClient, deployment_id: UUID) -> set[tuple[int, str]]:
    """(inbox id, accession) of every run of the deployment not finished yet. The accession
    tells apart rows of two application databases that share the Prefect server."""
    held: set[tuple[int, str]] = set()
    offset = 0
    while True:
        page = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=LIVE_STATES))
            ),
            sort=FlowRunSort.ID_DESC,
            limit=PAGE,
            offset=offset,
        )
        held.update(
            (int(run.parameters["inbox_id"]), str(run.parameters.get("accession", "")))
            for run in page
            if "inbox_id" in run.parameters
        )
        if len(page) < PAGE:
            return held
        offset += PAGE


@flow(name="sweep-inbox", log_prints=False)
async def sweep_inbox(older_than_seconds: int = 120, limit: int = 500) -> int:
    """Submit every accepted row older than `older_than_seconds`, every row whose run died
    and every failed row due again, unless a live run holds it; the count submitted."""
    logger = get_run_logger()
    # Stranded rows first: those accepted are then among the unclaimed ones.
    stranded = await judge_stranded_messages(older_than_seconds, limit)
    # Unclaimed rows before released ones: a row released below is then submitted once.
    waiting = await unclaimed_messages(older_than_seconds, limit)
    released = await release_stale_claims(limit)
    retried = await release_due_retries(limit)
    rows = waiting + released + retried
    sweep_run = flow_run.get_id()
    assert sweep_run is not None  # inside its own flow run
    submitted = await submit_runs(rows, sweep_run) if rows else 0
    if rows or stranded:
        logger.info(
            "judged %d stranded inbox rows; submitted %d of %d inbox rows (%d unclaimed, "
            "%d released from dead runs, %d failed and due again; the others held by live "
            "runs)",
            stranded,
            submitted,
            len(rows),
            len(waiting),
            len(released),
            len(retried),
        )
    return submitted
