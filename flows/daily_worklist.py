"""daily-worklist: the schedulers' tables in the Prefect UI, refreshed at 07:00 and on change."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from prefect import flow, task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from followup.core.worklist import CRITICAL_KINDS, UNBOOKABLE_KINDS, WorklistTable, worklist_tables
from followup.settings import Settings, get_settings
from models import worklist
from models.db import session_scope
from models.types import utcnow


@task(name="gather-worklist", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def gather_worklist(settings: Settings) -> list[WorklistTable]:
    now = utcnow()
    local_today = now.astimezone(settings.site_zone).date()
    day_start = datetime.combine(local_today, time.min, tzinfo=settings.site_zone)
    with session_scope(settings.database_url) as session:
        escalations = worklist.open_escalations(session=session)
        return worklist_tables(
            bookings=worklist.bookings_between(
                session=session, start=day_start, end=day_start + timedelta(days=1)
            ),
            critical=[e for e in escalations if e["kind"] in CRITICAL_KINDS],
            other_escalations=[
                e for e in escalations if e["kind"] not in CRITICAL_KINDS + UNBOOKABLE_KINDS
            ],
            unbookable=[e for e in escalations if e["kind"] in UNBOOKABLE_KINDS],
            undeliverable=worklist.undeliverable_messages(session=session),
            overdue_referrals=worklist.overdue_referral_rows(
                session=session,
                now=now,
                answer_within=timedelta(days=settings.referral_answer_days),
            ),
            failed_messages=worklist.failed_inbox_rows(session=session, limit=200),
            zone=settings.site_zone,
        )


@task(name="publish-worklist", cache_policy=NO_CACHE)
async def publish_worklist(tables: list[WorklistTable]) -> None:
    for table in tables:
        await acreate_table_artifact(
            key=table.key,
            table=table.rows or [{"status": "nothing to do"}],
            description=table.description,
        )


def _run_name() -> str:
    return f"worklist-{utcnow():%Y%m%d-%H%M}"


@flow(name="daily-worklist", flow_run_name=_run_name)
async def daily_worklist() -> dict[str, int]:
    """Publish every worklist table; returns the row count of each (by artifact key)."""
    tables = await gather_worklist(get_settings())
    await publish_worklist(tables)
    return {table.key: len(table.rows) for table in tables}


class _Refresh:
    running = False
    stale = False


async def refresh_worklist() -> None:
    """Refresh the tables after a change, from a scan run. Runs of one warm worker share
    this: while one refresh runs, the others only mark it stale and return, and the running
    one refreshes once more when it ends, so every change is in a refresh that started after
    it, and a burst of escalations costs two refreshes, not one per scan (each is a flow run,
    two task runs and seven table artifacts)."""
    if _Refresh.running:
        _Refresh.stale = True
        return
    _Refresh.running = True
    try:
        while True:
            _Refresh.stale = False
            await daily_worklist()
            if not _Refresh.stale:
                return
    finally:
        _Refresh.running = False
