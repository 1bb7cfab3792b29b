"""Flow-run state hooks: failures land where schedulers look."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import acreate_table_artifact

from followup.core.worklist import failed_messages_table
from followup.settings import get_settings
from models.db import session_scope
from models.worklist import failed_inbox_rows


async def publish_needs_attention(flow: Any, flow_run: Any, state: Any) -> None:
    """Refresh the 'needs-attention' table: every accepted message whose processing failed,
    with what a person must do, and those that retry by themselves.

    A table of all open failures rather than one artifact per run, so a scheduler sees the
    whole list in one place; accession and ids only.
    """
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        table = failed_messages_table(
            failed_inbox_rows(session=session, limit=200), settings.site_zone
        )
    await acreate_table_artifact(
        key=table.key,
        table=table.rows or [{"status": "nothing to do"}],
        description=f"{table.description} (latest: run {flow_run.name}, {state.name})",
    )
