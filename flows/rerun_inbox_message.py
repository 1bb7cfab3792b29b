"""retry-inbox-message: a person re-runs a failed message after fixing its cause.

The schedulers' action in the Prefect UI (the deployment's parameter form): the row named on the
needs-attention table goes back to `received` and its scan-completed run starts at once. The
same as `followup inbox retry ID --by NAME`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.events import emit_for_inbox
from followup.settings import get_settings
from models import inbox_queries
from models.db import session_scope
from models.inbox_queries import Submission


@task(name="rerun-message", cache_policy=NO_CACHE)
async def rerun_message(inbox_id: int, by: str) -> Submission:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        return inbox_queries.rerun_message(session=session, inbox_id=inbox_id, by=by)


@flow(name="retry-inbox-message", flow_run_name="retry-inbox-{inbox_id}", log_prints=False)
async def retry_inbox_message(inbox_id: int, by: str) -> bool:
    """Put failed inbox row `inbox_id` back for processing, audited as asked by `by`; True
    when its event was emitted (else sweep-inbox submits it within a minute)."""
    if not by.strip():
        raise ValueError("say who re-runs the message (by)")
    row = await rerun_message(inbox_id, by.strip())
    emitted = emit_for_inbox(
        inbox_id=row.inbox_id, accession=row.accession, previous_claim=row.previous_claim
    )
    get_run_logger().info("inbox %d (%s) re-run by %s", inbox_id, row.accession, by.strip())
    return emitted
