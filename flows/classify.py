"""The classify task, shared by the scan-completed flow and `followup classifier-worker`.

It takes only the inbox row id: run by the classifier worker, a task's parameters and result
go through Prefect's result storage, which must hold neither the report (it is re-read from
the database here) nor secrets (the settings come from the process's own environment).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from followup import pipeline, routing
from followup.rules import load_rules
from followup.settings import get_settings
from models.db import session_scope


@task(name="classify", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
async def classify(inbox_id: int) -> routing.Decision:
    # Imported here: the flow-run process imports this module to queue the task for the
    # classifier worker, and must not load spaCy and medspaCy to do so.
    from followup import nlp

    settings = get_settings()
    with session_scope(settings.database_url) as session:
        scan = pipeline.read_scan(session=session, inbox_id=inbox_id, settings=settings)
    return nlp.classify_report(
        scan.report_text, load_rules(settings.rules_path), coded_items=scan.coded_items
    )
