"""The `followup` command's contracts, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
