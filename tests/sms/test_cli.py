"""`followup templates check` and `followup sms dispatch`, run as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from models.tables import OutboundStatus
from models.types import utcnow
from tests.sms.conftest import TEMPLATES, World

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
