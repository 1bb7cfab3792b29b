"""acknowledge-escalation: a doctor or scheduler acknowledges a critical finding or another
escalation from the deployment's form in the Prefect UI (escalation id from the worklist
tables, and who they are). The same as `followup escalations ack ID --by NAME`; audited with
`via: prefect-ui`, and the worklist tables are refreshed at once so the row leaves them.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.daily_worklist import daily_worklist
from followup.settings import get_settings
from models import worklist
from models.db import session_scope
from models.types import utcnow


@task(name="acknowledge", cache_policy=NO_CACHE)
async def acknowledge(escalation_id: int, by: str) -> str:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        escalation = worklist.acknowledge_escalation(
            session=session, escalation_id=escalation_id, by=by, now=utcnow(), via="prefect-ui"
        )
        return f"escalation {escalation.id} ({escalation.kind}) acknowledged by " + (
            escalation.acknowledged_by or by
        )


@flow(name="acknowledge-escalation", flow_run_name="ack-escalation-{escalation_id}")
async def acknowledge_escalation(escalation_id: int, by: str) -> str:
    """Acknowledge escalation `escalation_id` as `by` (your name or user id)."""
    if not by.strip():
        raise ValueError("say who acknowledges the escalation (by)")
    said = await acknowledge(escalation_id, by.strip())
    get_run_logger().info("%s", said)
    await daily_worklist()
    return said
