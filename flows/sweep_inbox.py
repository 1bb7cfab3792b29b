"""sweep-inbox: re-submit accepted messages that no flow run has claimed.

Prefect keeps accepted events in memory until its trigger service processes them (an event
is lost if the server stops first), so the inbox is the record and this flow, scheduled every
minute, re-emits `ris.scan.completed` for rows still `received` after `older_than_seconds`.
The event id is the row's, so a re-emitted event whose original was processed is dropped by
Prefect's deduplication instead of starting a second run.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.events import emit_for_inbox
from followup.settings import get_settings
from models import inbox_queries
from models.db import session_scope
from models.types import utcnow


@task(name="unclaimed-messages", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def unclaimed_messages(older_than_seconds: int, limit: int) -> list[tuple[int, str]]:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        rows = inbox_queries.unclaimed_messages(
            session=session,
            received_before=utcnow() - timedelta(seconds=older_than_seconds),
            limit=limit,
        )
        return [(row.id, row.accession or "") for row in rows if row.id is not None]


@flow(name="sweep-inbox", log_prints=False)
async def sweep_inbox(older_than_seconds: int = 120, limit: int = 500) -> int:
    """Re-emit the event of every accepted row older than `older_than_seconds`; the count."""
    logger = get_run_logger()
    rows = await unclaimed_messages(older_than_seconds, limit)
    emitted = sum(emit_for_inbox(inbox_id=inbox_id, accession=acc) for inbox_id, acc in rows)
    if rows:
        logger.info("re-emitted %d of %d unclaimed inbox rows", emitted, len(rows))
    return emitted
