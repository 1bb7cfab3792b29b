"""The `followup` command."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterable
from dataclasses import asdict
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlmodel import select

# First of the project's imports: Prefect reads its environment once, when first imported.
# Prefect itself (flows/, the gateway's serve, the warm worker) and spaCy (followup.nlp) are
# imported inside the commands that use them: seconds of start-up the other commands skip.
from followup import bootstrap  # noqa: F401
from followup.core.calendars import CalendarImportError, read_calendar_files
from followup.core.demo import restamp_for_today
from followup.core.evaluation import evaluate, format_report, load_cases
from followup.core.messaging.plan import display_phone
from followup.core.messaging.policy import phi_terms_in
from followup.core.messaging.render import SMS_KINDS, format_visit_time, render_sms
from followup.core.messaging.reply_eval import (
    evaluate_replies,
    format_reply_report,
    load_reply_cases,
    understand,
)
from followup.core.referrals import IllegalReferralTransition
from followup.core.rules import load_rules
from followup.core.scheduling import site_holidays
from followup.core.worklist import as_text, local_cells
from followup.errors import FollowupError, TemplateProblem
from followup.messaging.sender import DryRunSender, build_sender
from followup.services import intake, moves, pipeline, visits
from followup.services.calendar_import import import_calendars
from followup.services.dispatch import Dispatcher, DispatchPolicy
from followup.settings import PROJECT_ROOT, Settings, get_settings
from models import (
    calendar_queries,
    inbox_queries,
    messaging_queries,
    queries,
    referral_queries,
    worklist,
)
from models.db import migrate, session_scope
from models.seed import seed_demo_clinic
from models.tables import Appointment, Escalation, InboxStatus, OutboundStatus, Provider
from models.types import utcnow

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


def _listener_settings() -> Settings:
    """The settings, or exit 2 naming each invalid one on a line of its own: a listener must
    not start on a setting that would leave it open (an empty FOLLOWUP_HTTP_TOKEN)."""
    try:
        return get_settings()
    except ValidationError as error:
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"])
            err.print(f"{where}: {problem['msg']}", markup=False, style="red", soft_wrap=True)
        raise typer.Exit(code=2) from error


def _read_input(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the application database to the latest schema."""
    settings = get_settings()
    migrate(settings.database_url)
    err.print(f"database at head: {_safe_url(settings)}")


def _safe_url(settings: Settings) -> str:

    return make_url(settings.database_url).render_as_string(hide_password=True)


@app.command()
def classify(
    path: Annotated[str, typer.Argument(help="report text file, or - for stdin")],
) -> None:
    """Classify one report text and print the decision as JSON (design contract)."""
    from followup.nlp import classify_report

    text = _read_input(path).decode("utf-8", errors="replace")
    decision = classify_report(text, load_rules(get_settings().rules_path))
    typer.echo(json.dumps(decision.to_contract(), indent=2))


@app.command("check-rules")
def check_rules(
    path: Annotated[
        Path | None, typer.Argument(help="rules file (default: FOLLOWUP_RULES_PATH)")
    ] = None,
) -> None:
    """Validate a rules file as this release reads it and build its NLP pipeline; run it
    before a rules file replaces the one running workers re-read for every scan (an
    unreadable file fails every scan until it is mended, docs/deploy.md)."""
    from followup import nlp

    rules = load_rules(path or get_settings().rules_path)
    nlp.prepare(rules)
    typer.echo(f"rules v{rules.version}: {len(rules.rules)} rules, readable by this release")


@app.command("eval")
def evaluate_corpus(
    corpus: Annotated[Path, typer.Argument(help="JSONL of labelled reports")] = PROJECT_ROOT
    / "tests"
    / "corpus"
    / "test.jsonl",
) -> None:
    """Scores on a labelled corpus: exact decisions, critical recall and false alarms, accuracy
    per phrasing family and body region, per-specialty precision/recall, a referral confusion
    table and the wrong cases."""
    report = evaluate(load_cases(corpus), load_rules(get_settings().rules_path))
    typer.echo(format_report(report))


@app.command("eval-replies")
def evaluate_reply_corpus(
    corpus: Annotated[Path, typer.Argument(help="JSONL of labelled patient texts")] = PROJECT_ROOT
    / "tests"
    / "corpus"
    / "replies_test.jsonl",
) -> None:
    """Recall and precision per reply intent and for red flags, and the wrong cases."""
    typer.echo(format_reply_report(evaluate_replies(load_reply_cases(corpus))))


replies_app = typer.Typer(help="Patients' texts back.", no_args_is_help=True)
app.add_typer(replies_app, name="replies")


@replies_app.command("classify")
def replies_classify(
    path: Annotated[str, typer.Argument(help="a text file, or - for stdin")],
) -> None:
    """Read one patient text and print {"intents": [...], "red_flag": bool} (contract)."""
    text = _read_input(path).decode("utf-8", errors="replace")
    typer.echo(json.dumps(understand(text).to_contract()))


@replies_app.command("show")
def replies_show(
    task_id: Annotated[int, typer.Argument(help="task (escalation) id, see `followup worklist`")],
) -> None:
    """A task and every patient text shown with it, oldest first (texts are PHI: for the
    clinicians and schedulers who act on the task)."""
    settings = get_settings()
    zone = settings.site_zone
    with session_scope(settings.database_url) as session:
        task = session.get(Escalation, task_id)
        if task is None:
            err.print(f"[red]no task {task_id}[/red]")
            raise typer.Exit(code=1)
        texts = messaging_queries.texts_on_task(session=session, escalation_id=task_id)
        table = Table(title=f"task {task.id} ({task.kind}, {task.status}): {task.reason}")
        for column in ("received", "sid", "intents", "text"):
            table.add_column(column, no_wrap=column != "text")
        for event in texts:
            table.add_row(
                event.received_at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
                event.message_sid,
                ", ".join(event.intents),
                str(event.params.get("Body", "")),
            )
    Console().print(table)


@app.command("seed-demo")
def seed_demo() -> None:
    """Create the demo clinic: 5 providers with business-hours slots for 4 weeks."""
    providers, slots = _seed_demo_clinic(get_settings())
    err.print(f"demo clinic: {providers} providers, {slots} new slots")


def _seed_demo_clinic(settings: Settings) -> tuple[int, int]:

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
    with session_scope(settings.database_url) as session:
        receipt = intake.receive_message(session=session, raw=raw, source=source, settings=settings)
    if receipt.should_process:
        from flows.scan_completed import scan_completed

        asyncio.run(
            scan_completed(
                inbox_id=receipt.run_inbox_id or receipt.inbox_id,
                accession=receipt.accession or "",
            )
        )
    with session_scope(settings.database_url) as session:
        summary = pipeline.summarize(session=session, inbox_id=receipt.inbox_id)
    summary["ack"] = receipt.ack_code
    return summary


@app.command()
def ingest(
    path: Annotated[str, typer.Argument(help="HL7 v2 message file, or - for stdin")],
) -> None:
    """Feed one message through the gateway's path and print the JSON summary."""
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
            .strftime("%a %Y-%m-%d %H:%M %Z ")
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


@app.command()
def serve() -> None:
    """Run the engine: local Prefect server, MLLP and HTTP gateways, served flows (Ctrl-C stops)."""
    from followup.gateway.serve import StartupRefused, serve_engine

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per runner poll otherwise
    try:
        serve_engine(_listener_settings())
    except StartupRefused as error:
        err.print(f"[red]{error}[/red]", soft_wrap=True)
        raise typer.Exit(code=2) from error


@app.command("warm-worker")
def warm_worker(
    pool: Annotated[str, typer.Option(help="The work pool to serve.")] = "followup-warm",
    limit: Annotated[
        int | None, typer.Option(help="At most this many flow runs at once (default: no cap).")
    ] = None,
    stop_with_parent: Annotated[
        bool,
        typer.Option(help="Also stop when stdin closes (how `followup serve` runs it)."),
    ] = False,
) -> None:
    """Run the work pool's flow runs (scan-completed) inside this one warm process, a Prefect
    worker; needs PREFECT_API_URL (Ctrl-C stops, letting in-flight runs finish)."""
    from followup.warm_worker import serve_warm_worker

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    serve_warm_worker(get_settings(), pool=pool, limit=limit, stop_with_parent=stop_with_parent)


@app.command()
def gateway() -> None:
    """Run the MLLP and HTTP gateways only, emitting events to PREFECT_API_URL for workers
    elsewhere (docs/deploy.md); no Prefect server, no flows (Ctrl-C stops)."""
    from followup.gateway.serve import StartupRefused, serve_gateway

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve_gateway(_listener_settings())
    except StartupRefused as error:
        err.print(f"[red]{error}[/red]", soft_wrap=True)
        raise typer.Exit(code=2) from error


# --- provider calendars and booking operations ---------------------------------------------

providers_app = typer.Typer(
    help="Provider calendars, availability and closures.", no_args_is_help=True
)
appointments_app = typer.Typer(help="Cancel and reschedule follow-ups.", no_args_is_help=True)
waitlist_app = typer.Typer(help="Waitlist offers of freed slots.", no_args_is_help=True)
referrals_app = typer.Typer(help="Closed-loop referral tracking.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")
app.add_typer(appointments_app, name="appointments")
app.add_typer(waitlist_app, name="waitlist")
app.add_typer(referrals_app, name="referrals")

HORIZON_DAYS = 56  # how far ahead slots are laid from the providers' weekly hours


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _closed_days(settings: Settings, session: Any) -> frozenset[Any]:

    year = datetime.now(settings.site_zone).year
    return calendar_queries.site_closed_days(
        session=session, settings=settings, years=range(year, year + 2)
    )


def _aware(value: str, settings: Settings) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=settings.site_zone)


@providers_app.command("import")
def providers_import(
    paths: Annotated[list[Path], typer.Argument(help="CSV files and FHIR Schedule/Slot JSON")],
    days: Annotated[
        int, typer.Option(help="days of slots to lay from weekly hours")
    ] = HORIZON_DAYS,
) -> None:
    """Import providers, weekly hours and availability; print what was stored and skipped."""
    settings = get_settings()
    try:
        data = read_calendar_files(paths)
    except CalendarImportError as error:
        err.print(f"[red]import refused[/red]: {error}")
        raise typer.Exit(code=1) from error
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        report = import_calendars(
            session=session,
            data=data,
            first_day=datetime.now(settings.site_zone).date(),
            days=days,
            closed_days=_closed_days(settings, session),
        )
        displaced = moves.move_visits_out(
            session=session,
            appointment_ids=report.conflicts,
            why="the imported calendar marks its time busy",
            settings=settings,
            now=utcnow(),
            actor="cli",
        )
        waiting = pipeline.book_waiting_scans(session=session, settings=settings)
        summary = {
            **asdict(report),
            **_moves_summary(displaced),
            "waiting_scans_booked": [o.appointment_id for o in waiting if o.appointment_id],
        }
    _print_json(summary)


@providers_app.command("slots")
def providers_slots(
    days: Annotated[int, typer.Option(help="days ahead to lay slots for")] = HORIZON_DAYS,
) -> None:
    """Lay (or bring in line) every active provider's slots from their calendars."""
    settings = get_settings()
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        closed = _closed_days(settings, session)
        providers = session.exec(select(Provider).where(Provider.active)).all()
        totals = {"providers": len(providers), "created": 0, "blocked": 0, "reopened": 0}
        for provider in providers:
            assert provider.id is not None
            sync = calendar_queries.materialize_slots(
                session=session,
                provider_id=provider.id,
                first_day=datetime.now(settings.site_zone).date(),
                days=days,
                closed_days=closed,
            )
            totals["created"] += sync.created
            totals["blocked"] += sync.blocked
            totals["reopened"] += sync.reopened
    _print_json(totals)


@providers_app.command("block")
def providers_block(
    npi: str,
    start: Annotated[str, typer.Argument(help="ISO time; site time zone when no offset")],
    end: Annotated[str, typer.Argument(help="ISO time; site time zone when no offset")],
    reason: Annotated[str, typer.Option(help="why (vacation, conference, ...)")] = "",
) -> None:
    """Block a provider's time and move the visits booked in it (the same provider's next
    slot, else the fallback chain), texting each patient; a visit nothing fits goes on the
    schedulers' worklist."""
    settings = get_settings()
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        provider = session.exec(select(Provider).where(Provider.npi == npi)).first()
        if provider is None or provider.id is None:
            err.print(f"[red]no provider with NPI {npi}[/red]")
            raise typer.Exit(code=1)
        block = moves.block_provider_time(
            session=session,
            provider_id=provider.id,
            start=_aware(start, settings),
            end=_aware(end, settings),
            reason=reason,
            settings=settings,
            now=utcnow(),
            actor="cli",
        )
        summary = {"slots_blocked": block.slots_blocked, **_moves_summary(block.moves)}
    _print_json(summary)


def _moves_summary(done: Iterable[moves.Move]) -> dict[str, Any]:
    """The visits a change of the calendar displaced: each moved, or put on the worklist."""
    done = list(done)
    return {
        "conflicts": [move.previous.id for move in done],
        "moved": [_moved(move) for move in done if move.appointment is not None],
        "worklist": [
            {"appointment": move.previous.id, "task": move.task_id, "reason": move.reason}
            for move in done
            if move.appointment is None
        ],
    }


def _moved(move: Any) -> dict[str, Any]:
    """A move's summary: the old visit, the new one and its start, the texts it stored."""
    return {
        "previous": move.previous.id,
        "appointment": move.appointment.id if move.appointment else None,
        "start": move.appointment.start if move.appointment else None,
        "task": move.task_id,
        "reason": move.reason,
        "notice_message": move.texts.notice,
        "reminder_messages": list(move.texts.reminders),
        "offer_messages": list(move.texts.offers),
    }


@providers_app.command("close")
def providers_close(
    day: Annotated[str, typer.Argument(help="YYYY-MM-DD, a day the whole site is closed")],
    reason: Annotated[str, typer.Option(help="why (snow day, training, ...)")] = "",
) -> None:
    """Close the site for a day on top of the public holidays, and move the visits booked that
    day (texting each patient the new time); a visit nothing fits goes on the worklist."""
    settings = get_settings()
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        closure = moves.close_site_day(
            session=session,
            day=date.fromisoformat(day),
            reason=reason,
            settings=settings,
            now=utcnow(),
            actor="cli",
        )
        summary = (
            {"already_closed": True}
            if closure is None
            else {"slots_blocked": closure.slots_blocked, **_moves_summary(closure.moves)}
        )
    _print_json(summary)


@appointments_app.command("cancel")
def appointments_cancel(
    appointment_id: int, reason: Annotated[str, typer.Option(help="why")] = "cancelled"
) -> None:
    """Cancel an appointment: cancels its unsent SMS, texts the patient, and offers the freed
    slot to the waitlist by SMS."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        cancelled = visits.cancel_visit(
            session=session,
            appointment_id=appointment_id,
            reason=reason,
            settings=settings,
            now=utcnow(),
            actor="cli",
        )
        result = cancelled.result
        summary = {
            "appointment": appointment_id,
            "status": result.appointment.status,
            "messages_cancelled": result.messages_cancelled,
            "notice_message": cancelled.texts.notice,
            "offer": result.offer.id if result.offer else None,
            "offer_messages": list(cancelled.texts.offers),
        }
    _print_json(summary)


@appointments_app.command("reschedule")
def appointments_reschedule(
    appointment_id: int, reason: Annotated[str, typer.Option(help="why")] = "patient asked"
) -> None:
    """Move a follow-up to the next fitting slot in its window. The old visit's unsent SMS are
    cancelled; the patient gets a reschedule notice and new reminders, and the freed slot is
    offered to the waitlist by SMS. When nothing fits the patient keeps the visit and the
    schedulers get a task to move it by hand."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        previous_start = _start_of(session, appointment_id)
        now = utcnow()
        move = moves.move_appointment(
            session=session,
            appointment_id=appointment_id,
            reason=reason,
            policy=moves.NothingFits.KEEP,
            settings=settings,
            now=now,
            actor="cli",
            after=max(previous_start, now),
        )
        summary = _moved(move)
    _print_json(summary)


def _start_of(session: Any, appointment_id: int) -> datetime:

    appointment = session.get(Appointment, appointment_id)
    if appointment is None:
        err.print(f"[red]no appointment {appointment_id}[/red]")
        raise typer.Exit(code=1)
    start: datetime = appointment.start
    return start


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    """Rows as a table that folds rather than cuts at 80 columns; times in the site's zone."""
    settings = get_settings()
    if not rows:
        typer.echo(f"{title}: none")
        return
    cells = local_cells(rows, settings.site_zone)
    view = Table(title=title)
    for column in cells[0]:
        view.add_column(column, overflow="fold")
    for row in cells:
        view.add_row(*row.values())
    Console().print(view)


def _one_selector(**given: object) -> None:
    if sum(value is not None for value in given.values()) != 1:
        err.print(f"give exactly one of {', '.join('--' + name for name in given)}")
        raise typer.Exit(code=2)


@appointments_app.command("list")
def appointments_list(
    accession: Annotated[str | None, typer.Option(help="a study's appointments")] = None,
    mrn: Annotated[str | None, typer.Option(help="a patient's appointments")] = None,
    day: Annotated[
        str | None, typer.Option(help="YYYY-MM-DD: every appointment that day (site time)")
    ] = None,
) -> None:
    """Appointments by accession, patient (MRN) or day, with the ids the other commands take."""
    _one_selector(accession=accession, mrn=mrn, day=day)
    settings = get_settings()
    start = end = None
    if day is not None:
        try:
            first = datetime.combine(date.fromisoformat(day), time.min, settings.site_zone)
        except ValueError as error:
            err.print(f"--day must be YYYY-MM-DD, not {day!r}")
            raise typer.Exit(code=2) from error
        start, end = first, first + timedelta(days=1)
    with session_scope(settings.database_url) as session:
        rows = worklist.appointments_for(
            session=session, accession=accession, mrn=mrn, start=start, end=end
        )
    _print_rows("Appointments", rows)


@referrals_app.command("list")
def referrals_list(
    accession: Annotated[str | None, typer.Option(help="a study's referrals")] = None,
    mrn: Annotated[str | None, typer.Option(help="a patient's referrals")] = None,
) -> None:
    """Referrals by accession or patient (MRN), in every state, with their ids."""
    _one_selector(accession=accession, mrn=mrn)
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        rows = worklist.referrals_for(session=session, accession=accession, mrn=mrn)
    _print_rows("Referrals", rows)


@waitlist_app.command("expire")
def waitlist_expire() -> None:
    """Expire unanswered offers, offer their slots onwards by SMS, lapse closed windows (the
    dispatch-reminders deployment does this every minute)."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        expired = visits.expire_waitlist_offers(
            session=session, settings=settings, now=utcnow(), actor="cli"
        )
        summary = {
            "new_offers": [
                {"offer": o.id, "slot": o.slot_id, "expires_at": o.expires_at}
                for o in expired.result
            ],
            "offer_messages": list(expired.texts.offers),
        }
    _print_json(summary)


@referrals_app.command("overdue")
def referrals_overdue() -> None:
    """Open referrals still without an appointment past their tier's allowance."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        rows = [
            {
                "referral": r.id,
                "study": r.study_id,
                "specialty": r.specialty,
                "status": r.status,
                "opened": r.created_at,
            }
            for r in referral_queries.overdue_referrals(session=session, now=utcnow())
        ]
    _print_json(rows)


@referrals_app.command("move")
def referrals_move(
    referral_id: int,
    status: Annotated[str, typer.Argument(help="sent, accepted, declined, scheduled, ...")],
    reason: Annotated[str, typer.Option(help="why")] = "",
    scheduled_for: Annotated[str | None, typer.Option(help="appointment time (scheduled)")] = None,
    actor: Annotated[str, typer.Option(help="who made the change")] = "cli",
) -> None:
    """Move a referral to its next state; illegal moves are refused."""
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            referral = queries.transition_referral(
                session=session,
                referral_id=referral_id,
                to=status,
                actor=actor,
                reason=reason,
                scheduled_for=_aware(scheduled_for, settings) if scheduled_for else None,
            )
            summary = {"referral": referral.id, "status": referral.status}
    except IllegalReferralTransition as error:
        err.print(f"[red]refused[/red]: {error}")
        raise typer.Exit(code=1) from error
    _print_json(summary)


# --- SMS: templates check and dispatch ---------------------------------------------------------

templates_app = typer.Typer(help="Patient SMS templates.", no_args_is_help=True)
sms_app = typer.Typer(help="Patient SMS outbox.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
app.add_typer(sms_app, name="sms")

# Sample values for `templates check`: a fixed visit (Tue Dec 8, 9:30 in New York) and an offer
# deadline the day before, so the printed texts and segment counts do not change between runs.
SAMPLE_VISIT = datetime.fromisoformat("2026-12-08T14:30:00+00:00")
SAMPLE_OFFER_DEADLINE = datetime.fromisoformat("2026-12-07T22:00:00+00:00")
SAMPLE_PROVIDER = "Dr. Okafor"
SID_SUFFIX = 6  # characters of a Twilio message SID that `sms list` shows


@templates_app.command("check")
def templates_check() -> None:
    """Render every template with sample values: encoding, segments, and no clinical words.

    Exits 1 when a template does not render or its text holds a word of the PHI deny-list.
    """
    settings = get_settings()
    table = Table(title=f"SMS templates in {settings.templates_dir / 'sms'}")
    for column in ("language", "template", "encoding", "segments", "chars", "check", "text"):
        table.add_column(column, no_wrap=column != "text")
    problems = 0
    for folder in sorted(p for p in (settings.templates_dir / "sms").iterdir() if p.is_dir()):
        language = folder.name
        for kind in sorted(SMS_KINDS):
            for days in settings.reminder_days_before if kind == "reminder" else [None]:
                context: dict[str, object] = {
                    "clinic_name": settings.site_name,
                    "clinic_phone": display_phone(settings.clinic_phone),
                    "provider_name": SAMPLE_PROVIDER,
                    "visit_time": format_visit_time(SAMPLE_VISIT, settings.site_zone, language),
                    "offer_expires": format_visit_time(
                        SAMPLE_OFFER_DEADLINE, settings.site_zone, language
                    ),
                    "days_before": days,
                    "choices": [
                        format_visit_time(
                            SAMPLE_VISIT + timedelta(days=offset), settings.site_zone, language
                        )
                        for offset in (1, 2, 3)
                    ],
                }
                name = kind if days is None else f"{kind} ({days} d)"
                source = folder / f"{kind}.j2"
                try:
                    rendered = render_sms(
                        kind, language, context, templates_dir=settings.templates_dir
                    )
                    if not source.exists():
                        raise TemplateProblem(f"missing: falls back to {rendered.language}")
                    if terms := phi_terms_in(source.read_text(encoding="utf-8")):
                        raise TemplateProblem(f"clinical terms in the template source: {terms}")
                except TemplateProblem as problem:
                    problems += 1
                    table.add_row(language, name, "-", "-", "-", "[red]FAIL[/red]", str(problem))
                    continue
                table.add_row(
                    language,
                    name,
                    rendered.encoding,
                    str(rendered.segments),
                    str(len(rendered.body)),
                    "ok",
                    rendered.body,
                )
    console = Console()
    console.width = max(console.width, 160)
    console.print(table)
    if problems:
        err.print(f"[red]{problems} template problem(s)[/red]")
        raise typer.Exit(code=1)


@sms_app.command("dispatch")
def sms_dispatch(
    max_seconds: Annotated[
        float, typer.Option(help="stop claiming new messages after this long")
    ] = 50.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="mark due messages dry_run, send nothing")
    ] = False,
) -> None:
    """Send the SMS that are due now (what the dispatch-reminders deployment runs each minute)."""
    settings = get_settings()
    migrate(settings.database_url)
    dispatcher = Dispatcher(
        database_url=settings.database_url,
        sender=DryRunSender() if dry_run else build_sender(settings),
        policy=DispatchPolicy.from_settings(settings),
    )
    report = dispatcher.run(max_seconds=max_seconds)
    with session_scope(settings.database_url) as session:
        statuses = messaging_queries.message_counts_by_status(session=session)
    _print_json({"run": report.as_dict(), "outbox": statuses})


@sms_app.command("list")
def sms_list(
    state: Annotated[
        str | None,
        typer.Option(
            help="only messages in this state (scheduled, sent, failed, ...); failed includes "
            "undelivered (neither reached the patient)"
        ),
    ] = None,
    appointment: Annotated[
        int | None, typer.Option(help="only messages about this appointment")
    ] = None,
) -> None:
    """Every outbox message's state, in due order: no text, phone number or name."""
    if state is not None and state not in set(OutboundStatus):
        err.print(f"[red]unknown state {state!r}[/red]: one of {', '.join(OutboundStatus)}")
        raise typer.Exit(code=2)
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        rows = messaging_queries.message_states(
            session=session, statuses=_listed_states(state), appointment_id=appointment
        )
    zone = settings.site_zone
    table = Table(title=f"SMS outbox ({len(rows)} messages; due times in {zone.key})")
    for column in ("id", "appointment", "kind", "due", "state", "attempts", "error", "sid"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            str(row.id),
            str(row.appointment_id or "-"),
            row.kind,
            row.scheduled_for.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
            row.status,
            str(row.attempts),
            row.error_code or "-",
            # The tail tells messages apart in Twilio's console without the whole identifier.
            f"…{row.twilio_sid[-SID_SUFFIX:]}" if row.twilio_sid else "-",
        )
    console = Console()
    console.width = max(console.width, 120)
    console.print(table)


def _listed_states(state: str | None) -> set[str] | None:
    """The outbox states `--state` lists: "failed" is every text that never reached the
    patient (Twilio's failed and undelivered alike); any other state is itself."""
    from models.tables import OutboundStatus

    if state is None:
        return None
    if state == OutboundStatus.FAILED:
        return {OutboundStatus.FAILED, OutboundStatus.UNDELIVERED}
    return {state}


# --- the schedulers' worklist and escalations -------------------------------------------------

escalations_app = typer.Typer(help="Escalations that wait for a person.", no_args_is_help=True)
app.add_typer(escalations_app, name="escalations")


@escalations_app.command("ack")
def escalations_ack(
    escalation_id: Annotated[int, typer.Argument(help="escalation id (see `followup worklist`)")],
    by: Annotated[str, typer.Option(help="who acknowledges (name or user id)")],
) -> None:
    """Acknowledge an escalation: it stops re-notifying and leaves the open list."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        try:
            escalation = worklist.acknowledge_escalation(
                session=session, escalation_id=escalation_id, by=by, now=utcnow()
            )
        except LookupError as error:
            err.print(f"[red]{error}[/red]")
            raise typer.Exit(code=1) from error
        typer.echo(
            f"escalation {escalation.id} ({escalation.kind}) acknowledged by "
            f"{escalation.acknowledged_by} at {escalation.acknowledged_at:%Y-%m-%d %H:%M} UTC"
        )


inbox_app = typer.Typer(
    help="Inbound messages: their life cycle, and re-running failed ones.", no_args_is_help=True
)
app.add_typer(inbox_app, name="inbox")


@inbox_app.command("list")
def inbox_list(
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="only these states (repeatable): received, processing, processed, held, retry, "
            "needs_action, duplicate, error, rejected",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 50,
) -> None:
    """Every inbound message's state, attempts and what to do (no message content)."""
    settings = get_settings()
    zone = settings.site_zone
    table = Table(title="Inbound messages")
    for column in ("id", "received", "accession", "status", "attempts", "next", "problem / do"):
        table.add_column(column, overflow="fold")
    with session_scope(settings.database_url) as session:
        rows = inbox_queries.messages_by_status(session=session, statuses=status or [], limit=limit)
        for row in rows:
            failed = row.status in (InboxStatus.RETRY, InboxStatus.NEEDS_ACTION)
            action = (row.summary or {}).get("action") if failed else None
            table.add_row(
                str(row.id),
                row.received_at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
                row.accession or "-",
                row.status,
                str(row.attempts),
                row.next_attempt_at.astimezone(zone).strftime("%H:%M %Z")
                if row.next_attempt_at
                else "-",
                "\n".join(filter(None, (row.error, action))) or "-",
            )
    Console().print(table)


@inbox_app.command("retry")
def inbox_retry(
    inbox_id: Annotated[int, typer.Argument(help="inbox id (see `followup inbox list`)")],
    by: Annotated[str, typer.Option(help="who re-runs it (name or user id)")],
) -> None:
    """Re-run a failed message once its cause is fixed (audited with --by)."""
    from flows.events import emit_for_inbox

    if not by.strip():
        err.print("[red]--by must name who re-runs the message[/red]")
        raise typer.Exit(code=2)
    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            row = inbox_queries.rerun_message(session=session, inbox_id=inbox_id, by=by.strip())
    except (LookupError, ValueError) as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(code=1) from error
    emitted = emit_for_inbox(
        inbox_id=row.inbox_id, accession=row.accession, previous_claim=row.previous_claim
    )
    typer.echo(
        f"inbox {inbox_id} ({row.accession}) is back in the queue; "
        + ("its run starts now" if emitted else "sweep-inbox submits it within a minute")
    )


@app.command("worklist")
def show_worklist() -> None:
    """Print the schedulers' worklist tables (the same ones published as Prefect artifacts)."""
    from flows.daily_worklist import gather_worklist

    settings = get_settings()
    typer.echo(as_text(asyncio.run(gather_worklist.fn(settings)), width=Console().width))


# What a person can get wrong at the command line (an unknown id, a date that does not
# parse, an action the engine refuses): one line and exit code 1, not a traceback. Anything
# else is a defect and keeps its traceback.
ORDINARY_MISTAKES = (FollowupError, LookupError, ValueError)


def main() -> None:
    """The `followup` command."""
    try:
        app()
    except ORDINARY_MISTAKES as mistake:
        typer.echo(f"followup: {mistake}", err=True)
        raise SystemExit(1) from None


# --- the EHR outbox ------------------------------------------------------------------------------

ehr_app = typer.Typer(help="SIU and REF messages to the EHR and the specialists.")
app.add_typer(ehr_app, name="ehr", no_args_is_help=True)


@ehr_app.command("list")
def ehr_list(
    status: Annotated[str | None, typer.Option(help="only rows in this status (e.g. held)")] = None,
) -> None:
    """The outbox rows (no message content): trigger, destination, status, attempts, error."""
    from sqlmodel import col, select

    from models.db import session_scope
    from models.tables import EhrOutboxMessage

    settings = get_settings()
    with session_scope(settings.database_url) as session:
        query = select(EhrOutboxMessage).order_by(col(EhrOutboxMessage.id))
        if status:
            query = query.where(EhrOutboxMessage.status == status)
        rows = [
            {
                "id": row.id,
                "subject": f"{row.subject} {row.subject_id}",
                "trigger": row.trigger,
                "destination": row.destination,
                "status": row.status,
                "attempts": row.attempts,
                "control id": row.control_id,
                "error": row.error,
            }
            for row in session.exec(query)
        ]
    _print_json(rows)


@ehr_app.command("release")
def ehr_release(
    row_id: int, by: Annotated[str, typer.Option(help="who releases it")] = "cli"
) -> None:
    """Send a held message again, unchanged (the receiver's problem is fixed)."""
    from models import ehr_outbox
    from models.db import session_scope

    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            ehr_outbox.release_held(session=session, row_id=row_id, by=by)
    except LookupError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(code=1) from error
    typer.echo(f"EHR outbox {row_id} is queued again; dispatch-ehr-outbox sends it")


@ehr_app.command("skip")
def ehr_skip(
    row_id: int,
    reason: Annotated[str, typer.Option(help="why (e.g. entered by hand in the EHR)")],
    by: Annotated[str, typer.Option(help="who skips it")] = "cli",
) -> None:
    """Give up on a held message; the later messages of its visit or referral may go."""
    from models import ehr_outbox
    from models.db import session_scope

    settings = get_settings()
    try:
        with session_scope(settings.database_url) as session:
            ehr_outbox.skip_held(session=session, row_id=row_id, by=by, reason=reason)
    except LookupError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(code=1) from error
    typer.echo(f"EHR outbox {row_id} skipped")


if __name__ == "__main__":
    main()
