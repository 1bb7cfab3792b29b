"""The `followup` command's contracts, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]


def _followup(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "followup.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_classify_prints_the_contract_json(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_text(
        "INDICATION: low back pain.\n"
        "IMPRESSION:\n1. Grade 1 anterolisthesis of L4 on L5.\n"
        "2. No evidence of nerve root compression.\n"
    )
    result = _followup("classify", str(report), env={})

    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert set(decision) >= {
        "urgency",
        "critical",
        "referrals",
        "additional_testing",
        "needs_review",
        "findings",
        "rules_version",
    }
    assert decision["referrals"] == ["orthopedics"]
    assert decision["urgency"] == "routine"
    assert decision["critical"] is False
    assert {"label", "text", "negated", "uncertain", "section"} <= set(decision["findings"][0])
    negated = [f for f in decision["findings"] if f["negated"]]
    assert [f["label"] for f in negated] == ["nerve_root_compression"]


def test_classify_reads_stdin() -> None:
    result = _followup(
        "classify", "-", env={}, stdin="IMPRESSION: Severe canal stenosis with cord compression."
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["critical"] is True


def test_ingest_of_a_non_message_fails_clearly_and_keeps_the_input(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'cli.db'}"
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"Dear colleague, please see the attached scan.\n")

    result = _followup("ingest", str(junk), env={"DATABASE_URL": database_url})

    assert result.returncode == 1
    problem_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(problem_lines) == 1
    assert "not an HL7 v2 message" in problem_lines[0]
    with create_engine(database_url).connect() as connection:
        stored = connection.execute(text("SELECT status, raw, error FROM inbox_message")).one()
    assert stored.status == "error"
    assert stored.raw == junk.read_bytes()
    assert "not an HL7 v2 message" in stored.error


def test_appointments_and_referrals_are_listed_by_accession_patient_and_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    from datetime import datetime

    from followup.core.demo import restamp_for_today
    from followup.services.intake import receive_message
    from followup.settings import get_settings
    from models.db import migrate, session_scope
    from tests.conftest import SAMPLES, run_scan, seed_clinic

    database_url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DATABASE_URL", database_url)  # the flow's own settings
    migrate(database_url)
    seed_clinic(database_url)
    settings = get_settings(database_url=database_url)
    raw = restamp_for_today(
        (SAMPLES / "hl7" / "spine_neurology_root_compression.hl7").read_bytes(),
        now=datetime.now(settings.site_zone),
    )
    with session_scope(database_url) as session:
        receipt = receive_message(session=session, raw=raw, source="test", settings=settings)
    assert receipt.run_inbox_id is not None
    summary = run_scan(receipt.run_inbox_id)
    visit_day = summary["appointment"]["start"]
    local_day = datetime.fromisoformat(visit_day).astimezone(settings.site_zone).date()
    env = {"DATABASE_URL": database_url, "COLUMNS": "80"}

    by_accession = _followup("appointments", "list", "--accession", "ACC2026000101", env=env)
    by_patient = _followup("appointments", "list", "--mrn", "DM100101", env=env)
    by_day = _followup("appointments", "list", "--day", local_day.isoformat(), env=env)
    referrals = _followup("referrals", "list", "--accession", "ACC2026000101", env=env)
    nothing = _followup("appointments", "list", "--accession", "ACC-NONE", env=env)
    two_selectors = _followup("appointments", "list", "--mrn", "X", "--day", "2026-12-01", env=env)
    bad_day = _followup("appointments", "list", "--day", "next tuesday", env=env)

    for listed in (by_accession, by_patient, by_day):
        assert listed.returncode == 0, listed.stderr
        assert str(summary["appointment"]["id"]) in listed.stdout
        assert "1000000001" in listed.stdout
        assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    assert "Harper" not in by_accession.stdout  # initials only
    assert referrals.returncode == 0 and "neurology" in referrals.stdout
    assert "initiated" in referrals.stdout
    assert (nothing.returncode, nothing.stdout.strip()) == (0, "Appointments: none")
    assert two_selectors.returncode == 2 and "exactly one of" in two_selectors.stderr
    assert bad_day.returncode == 2 and "YYYY-MM-DD" in bad_day.stderr
    assert "Traceback" not in two_selectors.stderr + bad_day.stderr


def test_check_rules_names_the_version_or_the_line_at_fault(tmp_path: Path) -> None:
    shipped = _followup("check-rules", env={})
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout.startswith("rules v2026.")

    broken = tmp_path / "routing.yaml"
    text = (ROOT / "rules" / "routing.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("    tier: emergent\n", "    tier: soon\n", 1), encoding="utf-8")
    result = _followup("check-rules", str(broken), env={})
    assert result.returncode == 1
    assert str(broken) in result.stderr
    assert "tier" in result.stderr
