"""Flow-run state hooks: failures land where schedulers look."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import acreate_table_artifact

from followup.settings import get_settings
from models.db import session_scope
from models.worklist import failed_inbox_rows


async def publish_needs_attention(flow: Any, flow_run: Any, state: Any) -> None:
    """Refresh the 'needs-attention' table: every inbox row whose processing failed.

    A table of all open failures rather than one artifact per run, so a scheduler sees the
    whole list in one place; accession and ids only.
    """
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        rows = failed_inbox_rows(session=session, limit=200)
    await acreate_table_artifact(
        key="needs-attention",
        table=[
            {
                "inbox id": row.id,
                "accession": row.accession or "-",
                "received": row.received_at.isoformat(timespec="seconds"),
                "status": row.status,
                "problem": (row.error or "")[:200],
            }
            for row in rows
        ],
        description=f"Scans whose processing failed (latest: run {flow_run.name}, {state.name})",
    )
