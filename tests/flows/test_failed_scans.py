"""An accepted scan whose run fails is never silently terminal.

Through a real Prefect API: the fault is real too (the rules file the run reads is missing, as
when a configuration volume is not mounted yet); the row goes to `retry` with a backoff, the
needs-attention table says so, sweep-inbox submits it again once due, and the next run books
it exactly once. When the attempts are spent, or the fault is one retrying cannot fix, the
row waits for a person, who re-runs it with `followup inbox retry`.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from sqlmodel import select
from typer.testing import CliRunner

from followup.errors import RulesError
from followup.settings import PROJECT_ROOT, Settings
from models.db import session_scope
from models.tables import Appointment, AuditEvent, InboxMessage, InboxStatus
from tests.flows.conftest import receive_sample

pytestmark = pytest.mark.prefect


@pytest.fixture
def rules_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    rules = tmp_path / "routing.yaml"
    shutil.copy(PROJECT_ROOT / "rules" / "routing.yaml", rules)
    monkeypatch.setenv("FOLLOWUP_RULES_PATH", str(rules))
    return rules


def run_flow(inbox_id: int, accession: str) -> dict[str, Any]:
    from flows.scan_completed import scan_completed

    return asyncio.run(scan_completed(inbox_id=inbox_id, accession=accession))


def inbox_row(settings: Settings, inbox_id: int) -> InboxMessage:
    with session_scope(settings.database_url) as session:
        return session.get_one(InboxMessage, inbox_id)


def needs_attention_table() -> str:
    async def read() -> Any:
        async with get_client() as client:
            return await client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(
                    key=ArtifactCollectionFilterKey(any_=["needs-attention"])
                )
            )

    [latest] = asyncio.run(read())
    return str(latest.data)


def appointments(settings: Settings) -> int:
    with session_scope(settings.database_url) as session:
        return len(session.exec(select(Appointment)).all())


@pytest.mark.usefixtures("scan_deployment")
def test_a_transient_fault_is_retried_by_the_sweep_and_booked_once(
    settings: Settings, rules_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.sweep_inbox import sweep_inbox

    monkeypatch.setenv("FOLLOWUP_INBOX_RETRY_BASE_SECONDS", "0.01")
    accepted = receive_sample(settings, "spine_pain_degenerative.hl7")
    kept = rules_file.read_bytes()
    rules_file.unlink()

    with pytest.raises(RulesError):
        run_flow(*accepted)

    failed = inbox_row(settings, accepted.inbox_id)
    assert (failed.status, failed.attempts, failed.error) == (
        InboxStatus.RETRY,
        1,
        "RulesError",
    )
    assert failed.next_attempt_at is not None
    assert f"{accepted.accession}" in needs_attention_table()
    assert "retried automatically (attempt 2 of 5)" in needs_attention_table()

    rules_file.write_bytes(kept)
    submitted = asyncio.run(sweep_inbox(older_than_seconds=3600))
    assert submitted == 1
    assert inbox_row(settings, accepted.inbox_id).status == InboxStatus.RECEIVED

    summary = run_flow(*accepted)
    stray = run_flow(*accepted)  # the same event delivered twice: answered, not redone

    assert summary["status"] == InboxStatus.PROCESSED
    assert stray["appointment"] == summary["appointment"]
    assert appointments(settings) == 1
    with session_scope(settings.database_url) as session:
        trail = session.exec(
            select(AuditEvent.action).where(AuditEvent.entity_id == accepted.inbox_id)
        ).all()
    assert [a for a in trail if a.startswith("inbox.")] == [
        "inbox.retry_scheduled",
        "inbox.retried",
    ]


@pytest.mark.usefixtures("scan_deployment")
def test_spent_attempts_wait_for_a_person_who_re_runs_the_row(
    settings: Settings, rules_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.sweep_inbox import sweep_inbox
    from followup.cli import app

    monkeypatch.setenv("FOLLOWUP_INBOX_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("FOLLOWUP_INBOX_RETRY_BASE_SECONDS", "0.01")
    accepted = receive_sample(settings, "spine_neurology_root_compression.hl7")
    kept = rules_file.read_bytes()
    rules_file.unlink()

    for _ in range(2):
        with pytest.raises(RulesError):
            run_flow(*accepted)
        asyncio.run(sweep_inbox(older_than_seconds=3600))

    held = inbox_row(settings, accepted.inbox_id)
    assert (held.status, held.attempts) == (InboxStatus.NEEDS_ACTION, 2)
    assert held.error == "RulesError (failed 2 times)"
    table = needs_attention_table()
    assert f"followup inbox retry {accepted.inbox_id} --by" in table
    assert asyncio.run(sweep_inbox(older_than_seconds=3600)) == 0  # a person's turn now

    rules_file.write_bytes(kept)
    runner = CliRunner()
    refused = runner.invoke(app, ["inbox", "retry", str(accepted.inbox_id), "--by", " "])
    rerun = runner.invoke(app, ["inbox", "retry", str(accepted.inbox_id), "--by", "sam.lee"])
    again = runner.invoke(app, ["inbox", "retry", str(accepted.inbox_id), "--by", "sam.lee"])

    assert refused.exit_code == 2
    assert rerun.exit_code == 0, rerun.output
    assert again.exit_code == 1  # already back in the queue: not a failed message now
    back = inbox_row(settings, accepted.inbox_id)
    assert (back.status, back.attempts) == (InboxStatus.RECEIVED, 0)
    assert run_flow(*accepted)["status"] == InboxStatus.PROCESSED
    assert appointments(settings) == 1
    with session_scope(settings.database_url) as session:
        rerun_by = session.exec(
            select(AuditEvent.actor).where(
                AuditEvent.entity_id == accepted.inbox_id, AuditEvent.action == "inbox.rerun"
            )
        ).all()
    assert rerun_by == ["sam.lee"]


def test_the_rerun_deployment_refuses_a_processed_row(settings: Settings) -> None:
    from flows.rerun_inbox_message import retry_inbox_message

    accepted = receive_sample(settings, "spine_normal.hl7")
    assert run_flow(*accepted)["status"] == InboxStatus.PROCESSED

    with pytest.raises(ValueError, match="processed: only failed messages"):
        asyncio.run(retry_inbox_message(inbox_id=accepted.inbox_id, by="sam.lee"))

    assert inbox_row(settings, accepted.inbox_id).status == InboxStatus.PROCESSED
