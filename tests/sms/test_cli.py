"""`followup templates check` and `followup sms dispatch`, run as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from models.db import session_scope
from models.tables import OutboundMessage, OutboundStatus
from models.types import utcnow
from tests.sms.conftest import NOW, PHONE, TEMPLATES, World

ROOT = Path(__file__).resolve().parents[2]


def followup(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "followup.cli", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_templates_check_lists_every_template_with_encoding_and_segments() -> None:
    result = followup("templates", "check", env={"FOLLOWUP_TEMPLATES_DIR": str(TEMPLATES)})

    assert result.returncode == 0, result.stderr
    for kind in ("confirmation", "reminder (3 d)", "reminder (1 d)", "urgent_advice"):
        assert kind in result.stdout
    assert "GSM-7" in result.stdout and "FAIL" not in result.stdout


def test_templates_check_fails_on_a_clinical_word(tmp_path: Path) -> None:
    shutil.copytree(TEMPLATES, tmp_path / "templates")
    leaky = tmp_path / "templates" / "sms" / "en" / "reschedule.j2"
    leaky.write_text("{{ clinic_name }}: your spine visit moved. {{ clinic_phone }}\n")

    result = followup(
        "templates", "check", env={"FOLLOWUP_TEMPLATES_DIR": str(tmp_path / "templates")}
    )

    assert result.returncode == 1
    assert "FAIL" in result.stdout and "spine" in result.stdout


def test_sms_dispatch_dry_run_marks_due_messages(world: World) -> None:
    message_id = world.message(world.patient(), key="reply:SMcli:help", scheduled_for=utcnow())

    result = followup("sms", "dispatch", "--dry-run", env={"DATABASE_URL": world.database_url})

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["run"]["dry_run"] == 1
    assert summary["outbox"] == {"dry_run": 1}
    assert world.get(message_id).status == OutboundStatus.DRY_RUN


def test_sms_list_shows_every_messages_state_without_numbers_or_names(world: World) -> None:
    patient = world.patient()
    visit = world.visit(patient, NOW + timedelta(days=3))
    sent = world.message(patient, appointment_id=visit, scheduled_for=NOW)
    waiting = world.message(patient, appointment_id=visit, scheduled_for=NOW + timedelta(days=2))
    answer = world.message(patient, kind="help", scheduled_for=NOW + timedelta(hours=1))
    with session_scope(world.database_url) as session:
        row = session.get_one(OutboundMessage, sent)
        row.status, row.attempts, row.error_code = "undelivered", 1, "30003"
        row.twilio_sid = "SM" + "0" * 26 + "a1b2c3"
        session.add(row)
    env = {"DATABASE_URL": world.database_url}

    every = followup("sms", "list", env=env)
    of_visit = followup("sms", "list", "--appointment", str(visit), env=env)
    undelivered = followup("sms", "list", "--state", "undelivered", env=env)
    failed = followup("sms", "list", "--state", "failed", env=env)

    assert every.returncode == 0, every.stderr
    rows = _table_rows(every.stdout)
    assert [row[0] for row in rows] == [str(sent), str(answer), str(waiting)]  # in due order
    # The due time in the site's zone (New York), the SID's tail only.
    assert rows[0] == [
        str(sent), str(visit), "reminder", "2026-12-08 14:00 EST", "undelivered", "1", "30003",
        "…a1b2c3",
    ]  # fmt: skip
    assert rows[1][:3] == [str(answer), "-", "help"]
    assert [row[0] for row in _table_rows(of_visit.stdout)] == [str(sent), str(waiting)]
    assert [row[0] for row in _table_rows(undelivered.stdout)] == [str(sent)]
    # Undelivered never reached the patient either: listed with the failed.
    assert [row[0] for row in _table_rows(failed.stdout)] == [str(sent)]
    for output in (every.stdout, of_visit.stdout, undelivered.stdout):
        assert PHONE not in output and "Doe" not in output and "test message" not in output


def test_sms_list_refuses_an_unknown_state(world: World) -> None:
    result = followup("sms", "list", "--state", "lost", env={"DATABASE_URL": world.database_url})

    assert result.returncode == 2
    assert "unknown state 'lost'" in result.stderr


def _table_rows(output: str) -> list[list[str]]:
    """The body rows of a rich table, cell by cell: those whose first cell is a number."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines()]
    return [row for row in rows if row and row[0].isdigit()]


def test_replies_show_prints_every_text_on_a_task(world: World) -> None:
    from models import messaging_queries as mq
    from models.tables import Escalation, TwilioEvent, TwilioEventKind

    with session_scope(world.database_url) as session:
        task = Escalation(kind="patient_worsening", reason="patient 1 reports worsening.")
        session.add(task)
        session.flush()
        for sid, body in (("SMa", "worse today"), ("SMb", "cant pee now")):
            event = TwilioEvent(
                kind=TwilioEventKind.INBOUND,
                message_sid=sid,
                message_status="received",
                params={"Body": body},
                intents=["worsening"],
            )
            session.add(event)
            session.flush()
            mq.note_text_on_task(session=session, task=task, event_id=event.id, notice_due=None)
        task_id = task.id

    result = followup("replies", "show", str(task_id), env={"DATABASE_URL": world.database_url})

    assert result.returncode == 0, result.stderr
    assert result.stdout.index("worse today") < result.stdout.index("cant pee now")
