"""The `followup` command."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from followup.settings import PROJECT_ROOT, Settings, get_settings

app = typer.Typer(help="MRI follow-up and referral engine.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DEMO_MESSAGES_DIR = PROJECT_ROOT / "tests" / "samples" / "hl7"
DEMO_MESSAGES = (
    "spine_neurology_root_compression.hl7",
    "spine_orthopedics_spondylolisthesis.hl7",
    "spine_pain_degenerative.hl7",
    "si_joint_rheumatology_sacroiliitis.hl7",
    "brain_neurology_demyelination.hl7",
    "spine_critical_cord_compression.hl7",
    "spine_inconclusive.hl7",
    "spine_normal.hl7",
)

err = Console(stderr=True)

# Defaults for running Prefect from this command without a configured server: a temporary
# local server whose first start (migrating its own SQLite) can take a while on a cold machine,
# state kept under var/, and no telemetry attempts from an offline clinic network.
PREFECT_DEFAULTS = {
    "PREFECT_HOME": str(PROJECT_ROOT / "var" / "prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


@app.callback()
def _prefect_environment() -> None:
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _read_input(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the application database to the latest schema."""
    from models.db import migrate

    settings = get_settings()
    migrate(settings.database_url)
    err.print(f"database at head: {_safe_url(settings)}")


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


@app.command()
def classify(
    path: Annotated[str, typer.Argument(help="report text file, or - for stdin")],
) -> None:
    """Classify one report text and print the decision as JSON (design contract)."""
    from followup.routing import classify_report
    from followup.rules import load_rules

    text = _read_input(path).decode("utf-8", errors="replace")
    decision = classify_report(text, load_rules(get_settings().rules_path))
    typer.echo(json.dumps(decision.to_contract(), indent=2))


@app.command("seed-demo")
def seed_demo() -> None:
    """Create the demo clinic: 5 providers with business-hours slots for 4 weeks."""
    providers, slots = _seed_demo_clinic(get_settings())
    err.print(f"demo clinic: {providers} providers, {slots} new slots")


def _seed_demo_clinic(settings: Settings) -> tuple[int, int]:
    from followup.scheduling import site_holidays
    from models.db import migrate, session_scope
    from models.seed import seed_demo_clinic

    migrate(settings.database_url)
    today = datetime.now(settings.site_zone).date()
    with session_scope(settings.database_url) as session:
        return seed_demo_clinic(
            session=session,
            zone=settings.site_zone,
            first_day=today,
            closed_days=site_holidays(
                settings.site_country, settings.site_subdivision, (today.year, today.year + 1)
            ),
        )


def _ingest(raw: bytes, settings: Settings, *, source: str) -> dict[str, Any]:
    """The gateway's path: store raw, validate, then run the flow for an accepted message."""
    from followup import intake, pipeline
    from models.db import session_scope

    with session_scope(settings.database_url) as session:
        receipt = intake.receive_message(session=session, raw=raw, source=source, settings=settings)
    if receipt.should_process:
        from flows.scan_completed import scan_completed

        asyncio.run(scan_completed(inbox_id=receipt.inbox_id, accession=receipt.accession or ""))
    with session_scope(settings.database_url) as session:
        summary = pipeline.summarize(session=session, inbox_id=receipt.inbox_id)
    summary["ack"] = receipt.ack_code
    return summary


@app.command()
def ingest(
    path: Annotated[str, typer.Argument(help="HL7 v2 message file, or - for stdin")],
) -> None:
    """Feed one message through the gateway's path and print the JSON summary."""
    from models.db import migrate

    settings = get_settings()
    migrate(settings.database_url)
    summary = _ingest(_read_input(path), settings, source="cli")
    typer.echo(json.dumps(summary, indent=2, default=str))
    if summary["status"] in ("error", "rejected"):
        location = f" ({summary['error_location']})" if summary.get("error_location") else ""
        err.print(f"[red]rejected[/red]{location}: {summary['error']}")
        raise typer.Exit(code=1)


@app.command()
def demo() -> None:
    """Seed the demo clinic, feed the bundled sample reports through the flow, show a table."""
    from followup.demo import restamp_for_today

    settings = get_settings()
    providers, slots = _seed_demo_clinic(settings)
    err.print(f"demo clinic ready: {providers} providers, {slots} new slots")
    now = datetime.now(settings.site_zone)
    rows = []
    for name in DEMO_MESSAGES:
        raw = restamp_for_today((DEMO_MESSAGES_DIR / name).read_bytes(), now=now)
        err.print(f"ingesting {name}")
        rows.append(_ingest(raw, settings, source="demo"))
    # Wide enough for the table even when stdout is not a terminal (CI logs, pipes).
    console = Console()
    console.width = max(console.width, 150)
    console.print(demo_table(rows, settings))


def demo_table(rows: list[dict[str, Any]], settings: Settings) -> Table:
    table = Table(title="Demo: scan-completed messages through the engine")
    for column in (
        "accession",
        "urgency",
        "referrals",
        "testing",
        "follow-up",
        "SMS",
        "escalations",
    ):
        table.add_column(column, no_wrap=column in ("accession", "follow-up"))
    for row in rows:
        decision = row.get("decision") or {}
        appointment = row.get("appointment")
        when = (
            datetime.fromisoformat(appointment["start"])
            .astimezone(settings.site_zone)
            .strftime("%a %Y-%m-%d %H:%M ")
            + appointment["provider"]
            if appointment
            else "-"
        )
        table.add_row(
            str(row.get("accession")),
            ("CRITICAL " if decision.get("critical") else "") + str(decision.get("urgency", "-")),
            ", ".join(decision.get("referrals", [])) or "-",
            ", ".join(decision.get("additional_testing", [])) or "-",
            when,
            str(len(row.get("scheduled_messages", []))),
            ", ".join(e["kind"] for e in row.get("escalations", [])) or "-",
        )
    return table


if __name__ == "__main__":
    app()
