"""renotify-escalations: a critical finding nobody acknowledged is brought up again, every
FOLLOWUP_ESCALATION_RENOTIFY_MINUTES, until someone does (`followup escalations ack` or
`POST /escalations/{id}/ack`).

* Due: open critical escalations whose last notice, or creation, is that many minutes old.
* Each due one goes through the Prefect notification block named by FOLLOWUP_ESCALATION_BLOCK
  (any of Prefect's: Slack, Teams, e-mail, PagerDuty, a custom webhook); without one, the run
  log says it (accession and escalation id only). Either way the critical-findings table
  artifact is refreshed when a notice goes out or the open set changed, so a row shows until
  it is acknowledged and leaves within a minute of the acknowledgement.
* At least once: a notice is counted after it went out, and only while the escalation is still
  open and due; a run that stops between the two sends it again the next minute. A doubled
  notice of a critical finding costs less than a lost one. The deployment's concurrency limit of
  1 keeps runs from overlapping.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from prefect import flow, get_client, get_run_logger, task
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

from flows.daily_worklist import publish_worklist
from followup.core.redaction import install_redaction
from followup.core.worklist import (
    CRITICAL_KEY,
    CRITICAL_KINDS,
    DueNotice,
    WorklistTable,
    critical_table,
)
from followup.settings import Settings, get_settings
from models import worklist
from models.db import session_scope
from models.types import utcnow

LOG_CHANNEL = "log"


@task(name="find-due-notices", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def find_due_notices(
    settings: Settings, now: datetime, due_before: datetime
) -> tuple[list[DueNotice], WorklistTable]:
    """The notices due, and the critical table as it stands."""
    with session_scope(settings.database_url) as session:
        due = worklist.due_notices(
            session=session, kinds=CRITICAL_KINDS, due_before=due_before, now=now
        )
        rows = worklist.open_escalations(session=session, kinds=CRITICAL_KINDS)
    return due, critical_table(rows, settings.site_zone)


@task(name="published-critical-ids", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def published_critical_ids() -> set[str]:
    """Escalation ids in the latest critical table artifact (none before the first)."""
    async with get_client() as client:
        latest = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=[CRITICAL_KEY])
            ),
            limit=1,
        )
    # A table artifact's data is its rows as a JSON string.
    data = latest[0].data if latest else None
    rows = json.loads(data) if isinstance(data, str) else []
    return {row["id"] for row in rows if "id" in row}


@task(name="load-notifier", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def load_notifier(block_name: str) -> NotificationBlock:
    block = await Block.aload(block_name)
    if not isinstance(block, NotificationBlock):
        raise TypeError(f"FOLLOWUP_ESCALATION_BLOCK {block_name!r} is not a notification block")
    return block


@task(name="send-notice", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
async def send_notice(notice: DueNotice, notifier: NotificationBlock | None) -> None:
    if notifier is None:
        get_run_logger().warning(
            "critical finding not acknowledged: accession %s, escalation %d, notice %d",
            notice.accession,
            notice.escalation_id,
            notice.notice,
        )
        return
    subject, body = notice.message()
    # Apprise-based blocks swallow delivery errors unless asked; a lost notice must fail.
    with notifier.raise_on_failure():
        await notifier.notify(body, subject)


@task(name="record-notice", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def record_notice(
    notice: DueNotice, due_before: datetime, channel: str, settings: Settings
) -> bool:
    with session_scope(settings.database_url) as session:
        return worklist.record_notice(
            session=session,
            escalation_id=notice.escalation_id,
            due_before=due_before,
            now=utcnow(),
            channel=channel,
        )


def _run_name() -> str:
    return f"renotify-{utcnow():%Y%m%d-%H%M}"


@flow(name="renotify-escalations", flow_run_name=_run_name, log_prints=False)
async def renotify_escalations() -> dict[str, int]:
    """Notify every critical escalation due again; counts of due, notified and still open."""
    settings = get_settings()
    install_redaction("", "prefect")
    now = utcnow()
    due_before = now - timedelta(minutes=settings.escalation_renotify_minutes)
    due, table = await find_due_notices(settings, now, due_before)
    open_ids = {row["id"] for row in table.rows}
    if due or open_ids != await published_critical_ids():
        await publish_worklist([table])
    notifier = None
    if due and settings.escalation_block:
        notifier = await load_notifier(settings.escalation_block)
    channel = settings.escalation_block or LOG_CHANNEL
    notified = 0
    for notice in due:
        await send_notice(notice, notifier)
        notified += await record_notice(notice, due_before, channel, settings)
    return {"due": len(due), "notified": notified, "open": len(open_ids)}
