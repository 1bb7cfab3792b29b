"""The scan-completed flow's steps without Prefect, for faults that need no orchestration.

The same `followup.pipeline` functions in the order flows/scan_completed.py runs its tasks,
each in its own transaction; what Prefect adds (retries, tags, artifacts) is not under test
where this is used.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from followup import nlp, pipeline
from followup.rules import load_rules
from followup.settings import Settings, get_settings
from models import queries
from models.db import session_scope
from models.types import utcnow


def run_flow_steps(database_url: str, inbox_id: int) -> dict[str, Any]:
    """Process one accepted inbox row as a scan-completed run does; the run's summary."""
    settings = get_settings(database_url=database_url)
    rules = load_rules(settings.rules_path)
    try:
        with session_scope(database_url) as session:
            scan = pipeline.load_scan(session=session, inbox_id=inbox_id, settings=settings)
    except pipeline.InboxRowFinished as finished:
        return finished.summary  # as the flow answers a stray run of a finished row
    decision = nlp.classify_report(scan.report_text, rules, coded_items=scan.coded_items)
    with session_scope(database_url) as session:
        recorded = pipeline.record_decision(
            session=session,
            inbox_id=inbox_id,
            scan=scan,
            decision=decision,
            rules=rules,
            on_call_npi=settings.on_call_provider_npi,
        )
    if not recorded.held:
        with session_scope(database_url) as session:
            booking = pipeline.book_follow_up(session=session, recorded=recorded, settings=settings)
        if booking.appointment_id is not None:
            with session_scope(database_url) as session:
                pipeline.schedule_reminders(
                    session=session,
                    appointment_id=booking.appointment_id,
                    settings=settings,
                    now=utcnow(),
                )
    with session_scope(database_url) as session:
        return pipeline.finish(session=session, inbox_id=inbox_id, held=recorded.held)


def days_after_result(settings: Settings, summary: dict[str, Any]) -> int:
    """Site-calendar days from the study's result time to its follow-up, as the booking window
    counts them. Not from today: tests stamp results half an hour before now
    (`followup.demo.restamp_for_today`), which is the day before in a day's first half hour."""
    with session_scope(settings.database_url) as session:
        study = queries.study_by_accession(session=session, accession=summary["accession"])
        assert study is not None and study.final_at is not None
        result_day = study.final_at.astimezone(settings.site_zone).date()
    start = datetime.fromisoformat(summary["appointment"]["start"])
    return (start.astimezone(settings.site_zone).date() - result_day).days
