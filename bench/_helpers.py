"""Shared by bench_e2e.py and bench_throughput.py: databases, the clinic, generated scans, the
core pipeline as the scan-completed flow runs it (without Prefect), and the machine report.

Imported as `bench._helpers` (ROOT on sys.path); nothing heavy at import time, because the
flow-run subprocesses Prefect spawns re-import their parent's main module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlmodel import Session

    from followup.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CORPUS = sorted((ROOT / "tests" / "corpus").glob("*.jsonl"))
SAMPLES = ROOT / "tests" / "samples" / "hl7"
PRACTICE_SIZE = 5

# The share of each kind of report in a replay. DOMAIN.md gives the tiers, not their
# frequencies; these are an assumption for outpatient spine/brain MRI ordered for pain or
# numbness: most reports route routinely, a quarter are normal, few are urgent or critical.
MIX = {"routine": 0.55, "normal": 0.25, "inconclusive": 0.05, "urgent": 0.10, "critical": 0.05}
BOOKABLE = ("routine", "normal", "inconclusive", "urgent")  # what gets a follow-up and a text

_FAMILY = ("Harper", "Nguyen", "Okonkwo", "Silva", "Kowalski", "Haddad", "Moreau", "Tanaka")
_GIVEN = ("Jonah", "Maria", "Chidi", "Lucia", "Piotr", "Amira", "Claire", "Kenji")
_AREA_CODES = ("413", "617", "212", "312", "415", "206", "303", "512", "404", "305")


# --- the machine ---------------------------------------------------------------------------


def machine(postgres_url: str | None = None) -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    from importlib.metadata import version

    postgres = ""
    if postgres_url:
        from sqlalchemy import create_engine, text

        engine = create_engine(postgres_url)
        with engine.connect() as connection:
            postgres = "; " + str(connection.execute(text("SHOW server_version")).scalar_one())
            postgres = postgres.replace("; ", "; PostgreSQL ", 1).split(" (")[0]
        engine.dispose()
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs{memory}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; Prefect "
        f"{version('prefect')}; SQLite {sqlite3.sqlite_version}{postgres}"
    )


def load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the servers started here stop and the PostgreSQL
    database is dropped."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def add_bytecode_arguments(parser: argparse.ArgumentParser) -> None:
    default = Path(tempfile.gettempdir()) / "followup-bench-pycache"
    parser.add_argument(
        "--bytecode-cache",
        type=Path,
        default=default,
        help=f"where every process caches compiled bytecode (default {default})",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        dest="bytecode_cache",
        action="store_const",
        const=None,
        help="leave bytecode as the environment has it",
    )


def use_bytecode_cache(folder: Path | None) -> str:
    """Let this process and every process it starts (the Prefect server, the engine, each flow
    run) cache compiled bytecode under `folder`, outside the checkout and the virtualenv.

    Deployed virtualenvs hold their bytecode (pip compiles at install); a checkout run with
    PYTHONDONTWRITEBYTECODE=1 and a venv without __pycache__ recompiles every imported module
    in every new process, which is most of a flow run's start. None leaves the environment as
    it is. Returns what the report says about it."""
    if folder is None:
        mode = "off" if sys.dont_write_bytecode else "default"
        return f"bytecode as the environment has it ({mode})"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
    sys.dont_write_bytecode = False
    sys.pycache_prefix = str(folder)
    return (
        f"cached under {folder} (PYTHONPYCACHEPREFIX; the first process to import a module "
        "compiles it)"
    )


# --- databases -----------------------------------------------------------------------------


@contextmanager
def sqlite_database(prefix: str) -> Iterator[str]:
    from models.db import get_engine, migrate

    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        url = f"sqlite:///{folder}/followup.db"
        migrate(url)
        try:
            yield url
        finally:
            get_engine(url).dispose()


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A fresh, migrated application database on the server of `base_url`, dropped after."""
    from models.db import get_engine, migrate

    with empty_postgres_database(base_url) as url:
        try:
            migrate(url)
            yield url
        finally:
            get_engine(url).dispose()


@contextmanager
def empty_postgres_database(base_url: str, prefix: str = "bench") -> Iterator[str]:
    """A new database `<prefix>_<timestamp>_<random>` on the server of `base_url`, dropped
    after (with whatever is still connected to it)."""
    from sqlalchemy import create_engine, make_url, text

    name = f"{prefix}_{datetime.now(UTC):%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database(kind: str, postgres_url: str | None, prefix: str) -> Iterator[str]:
    if kind == "sqlite":
        with sqlite_database(prefix) as url:
            yield url
    else:
        assert postgres_url is not None
        with postgres_database(postgres_url) as url:
            yield url


# --- the clinic ----------------------------------------------------------------------------


def seed_clinic(url: str, settings: Settings, *, providers: int, days: int = 35) -> list[str]:
    """Providers in practices of five (each covering the next), business hours, slots from
    today for `days` days. Returns their NPIs."""

    from followup.core.scheduling import DEFAULT_SESSIONS, site_holidays
    from models import calendar_queries
    from models.db import session_scope
    from models.tables import Provider

    today = datetime.now(settings.site_zone).date()
    closed = site_holidays(settings.site_country, settings.site_subdivision, _years(today, days))
    npis = [f"8{number:09d}" for number in range(providers)]
    with session_scope(url) as session:
        rows = [
            Provider(
                npi=npi,
                family_name=f"Bench{number}",
                given_name="Pat",
                practice=f"Practice {number // PRACTICE_SIZE}",
                timezone=settings.site_timezone,
            )
            for number, npi in enumerate(npis)
        ]
        session.add_all(rows)
        session.flush()
        for index, provider in enumerate(rows):
            start = index - index % PRACTICE_SIZE
            colleague = start + (index + 1 - start) % PRACTICE_SIZE
            if colleague < len(rows) and colleague != index:
                provider.covering_provider_id = rows[colleague].id
            assert provider.id is not None
            calendar_queries.set_working_hours(
                session=session, provider_id=provider.id, sessions=DEFAULT_SESSIONS
            )
            calendar_queries.materialize_slots(
                session=session,
                provider_id=provider.id,
                first_day=today,
                days=days,
                closed_days=closed,
            )
    analyze(url, "provider", "working_hours", "slot")
    return npis


def analyze(url: str, *tables: str) -> None:
    """Planner statistics, as autovacuum keeps them (all tables when none are named).

    Only the tables just filled at seeding: statistics saying that a table is empty outlive
    its growth where nothing re-analyzes it (see `needs_analyze`), and so do the plans made
    from them."""
    from sqlalchemy import text

    from models.db import session_scope

    with session_scope(url) as session:
        for table in tables or ("",):  # SQLite analyzes one table per statement
            session.execute(text(f"ANALYZE {table}"))


def needs_analyze(url: str) -> bool:
    """PostgreSQL with autovacuum off (as the server here runs): nothing re-analyzes tables
    that grow from empty during a replay, and psycopg's prepared statements keep the plans
    made when they were tiny (sequential scans) until statistics change."""
    from sqlalchemy import make_url, text

    from models.db import get_engine

    if make_url(url).get_backend_name() != "postgresql":
        return False
    with get_engine(url).connect() as connection:
        return connection.execute(text("SHOW autovacuum")).scalar_one() == "off"


def _years(today: date, days: int) -> tuple[int, ...]:
    return tuple(range(today.year, (today + timedelta(days=days)).year + 1))


# --- generated scans -----------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    accession: str
    control_id: str
    category: str
    raw: bytes


def report_pool(settings: Settings) -> dict[str, list[str]]:
    """Corpus and sample report texts, grouped by what the engine decides for them."""
    from followup import nlp
    from followup.core.rules import load_rules
    from followup.ris import hl7v2

    texts = [json.loads(line)["text"] for path in CORPUS for line in path.read_text().splitlines()]
    for path in sorted(SAMPLES.glob("*.hl7")):
        if path.name.startswith("bad_") or path.stem in ("spine_preliminary", "spine_corrected"):
            continue
        raw = hl7v2.decode_message(path.read_bytes())
        texts.append(hl7v2.parse_oru(raw, site_zone=settings.site_zone).report_text)
    rules = load_rules(settings.rules_path)
    pool: dict[str, list[str]] = {category: [] for category in MIX}
    # The corpus keeps empty and blank reports as edge cases; the gateway refuses a result
    # with no report text (AE), so a replay of accepted scans leaves them out.
    for text in filter(str.strip, texts):
        pool[category_of(nlp.classify_report(text, rules))].append(text)
    return pool


def category_of(decision: object) -> str:
    from followup.core.routing import Decision

    assert isinstance(decision, Decision)
    if decision.critical or decision.urgency == "emergent":
        return "critical"
    if decision.urgency == "urgent":
        return "urgent"
    if decision.additional_testing:
        return "inconclusive"
    if not decision.referrals and not decision.needs_review:
        return "normal"
    return "routine"


def generate_scans(
    count: int,
    *,
    pool: dict[str, list[str]],
    npis: Sequence[str],
    settings: Settings,
    seed: str,
    mix: dict[str, float] = MIX,
) -> list[Scan]:
    """`count` distinct ORU^R01 results finalised in the last few hours, for random providers."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6].upper()
    now = datetime.now(settings.site_zone)
    categories = [c for c in mix if pool[c]]
    weights = [mix[c] for c in categories]
    scans = []
    for number in range(count):
        category = rng.choices(categories, weights)[0]
        final = now - timedelta(minutes=rng.randrange(5, 240))
        accession = f"B{run}{number:07d}"
        control_id = f"BENCH-{run}-{number:07d}"
        message = oru(
            control_id=control_id,
            accession=accession,
            mrn=f"BM{run}{number:07d}",
            family=rng.choice(_FAMILY),
            given=rng.choice(_GIVEN),
            birth=date(1940, 1, 1) + timedelta(days=rng.randrange(0, 60 * 365)),
            phone=(rng.choice(_AREA_CODES), f"55501{rng.randrange(0, 100):02d}"),
            npi=rng.choice(npis),
            sent=now,
            exam=final - timedelta(minutes=rng.randrange(30, 180)),
            final=final,
            text=rng.choice(pool[category]),
        )
        scans.append(Scan(accession, control_id, category, message.encode()))
    return scans


def hl7_escape(value: str) -> str:
    return (
        value.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def oru(
    *,
    control_id: str,
    accession: str,
    mrn: str,
    family: str,
    given: str,
    birth: date,
    phone: tuple[str, str],
    npi: str,
    sent: datetime,
    exam: datetime,
    final: datetime,
    text: str,
) -> str:
    """An ORU^R01 laid out like tests/samples/hl7 (one OBX per report line, IMPRESSION coded
    19005-8), times in site local time without offset, as RISes send them."""
    stamp = "%Y%m%d%H%M%S"
    doctor = f"{npi}^Bench^Pat^^^Dr^MD^^NPI"
    segments = [
        f"MSH|^~\\&|BENCH_RIS|BENCH|FOLLOWUP|BENCH|{sent.strftime(stamp)}||ORU^R01^ORU_R01|"
        f"{control_id}|P|2.5.1|||AL|NE|USA|UNICODE UTF-8",
        f"PID|1||{mrn}^^^BENCH^MR||{family}^{given}||{birth:%Y%m%d}|U|||"
        f"1 Bench St^^Springfield^MA^01103^USA^H||^PRN^CP^^1^{phone[0]}^{phone[1]}",
        f"PV1|1|O|MRI1^^^BENCH|||||{doctor}",
        f"ORC|RE|ORD{accession}^BENCH_EHR|{accession}^BENCH_RIS||CM|||||||{doctor}",
        f"OBR|1|ORD{accession}^BENCH_EHR|{accession}^BENCH_RIS|72148^MRI SPINE^C4|||"
        f"{exam.strftime(stamp)}|||||||||{doctor}||{accession}||||{final.strftime(stamp)}"
        "||MR|F",
    ]
    impression = False
    for number, line in enumerate(text.splitlines() or [""], start=1):
        impression = impression or line.upper().startswith(("IMPRESSION", "CONCLUSION"))
        code = "19005-8^Impression^LN" if impression else "18782-3^Findings^LN"
        segments.append(f"OBX|{number}|TX|{code}|1|{hl7_escape(line)}||||||F")
    return "\r".join(segments) + "\r"


# --- the core pipeline, step by step as the scan-completed flow runs it ---------------------

STEPS = ("intake", "load", "classify", "record", "book", "reminders", "finish")


@dataclass
class StepTimes:
    """Seconds and SQL statements per step, summed over a replay."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEPS, 0))
    statements: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEPS, 0))
    executed: int = 0  # statements so far, counted by `count_statements`
    committed: int = 0  # transactions committed so far, counted there too
    _seen: int = 0

    def add(self, step: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[step] += now - started
        self.counts[step] += 1
        self.statements[step] += self.executed - self._seen
        self._seen = self.executed
        return now

    def count_statements(self, url: str) -> None:
        """Count every statement the engine for `url` sends, and apart from them its commits."""
        from sqlalchemy import event

        from models.db import get_engine

        def count(*_: object) -> None:
            self.executed += 1

        def count_commit(*_: object) -> None:
            self.committed += 1

        event.listen(get_engine(url), "before_cursor_execute", count)
        event.listen(get_engine(url), "commit", count_commit)


def process_scan(
    raw: bytes, settings: Settings, times: StepTimes, *, one_transaction: bool = False
) -> str:
    """Intake, then each step of flows/scan_completed.py in its own transaction, as its tasks
    do (Prefect-only steps left out: run tags, the artifact, the worklist refresh).
    `one_transaction`: the steps after intake share one transaction instead (a what-if: what
    the per-step commits cost). Returns the outcome: booked, unbookable, emergent, held, or the
    inbox status."""
    from followup import nlp
    from followup.core.rules import load_rules
    from followup.services import intake, pipeline
    from models.db import session_scope
    from models.types import utcnow

    url = settings.database_url
    started = time.perf_counter()
    with session_scope(url) as session:
        receipt = intake.receive_message(
            session=session, raw=raw, source="bench", settings=settings
        )
    started = times.add("intake", started)
    if not receipt.should_process:
        return str(receipt.status)
    inbox_id = receipt.inbox_id
    with ExitStack() as shared:
        one = shared.enter_context(session_scope(url)) if one_transaction else None

        def transaction() -> AbstractContextManager[Session]:
            return nullcontext(one) if one is not None else session_scope(url)

        with transaction() as session:
            scan = pipeline.load_scan(session=session, inbox_id=inbox_id, settings=settings)
        started = times.add("load", started)
        decision = nlp.classify_report(
            scan.report_text, load_rules(settings.rules_path), coded_items=scan.coded_items
        )
        started = times.add("classify", started)
        with transaction() as session:
            recorded = pipeline.record_decision(
                session=session,
                inbox_id=inbox_id,
                scan=scan,
                decision=decision,
                rules=load_rules(settings.rules_path),
            )
        started = times.add("record", started)
        outcome = "held"
        if not recorded.held:
            with transaction() as session:
                booked = pipeline.book_follow_up(
                    session=session, recorded=recorded, settings=settings
                )
            started = times.add("book", started)
            if booked.appointment_id is not None:
                outcome = "booked"
                with transaction() as session:
                    pipeline.schedule_reminders(
                        session=session,
                        appointment_id=booked.appointment_id,
                        settings=settings,
                        now=utcnow(),
                    )
                started = times.add("reminders", started)
            else:
                outcome = "emergent" if recorded.urgency == "emergent" else "unbookable"
        with transaction() as session:
            pipeline.finish(session=session, inbox_id=inbox_id, held=recorded.held)
    times.add("finish", started)  # with one transaction, its commit counts here
    return outcome


def core_worker(url: str, raws: list[bytes], start: Any, finished: Any) -> None:
    """One process of a parallel core replay (bench_throughput --core-processes). Warms up
    (imports, the medspaCy pipeline, a database connection), puts "ready" on `finished`, waits
    for `start`, then processes `raws` as `process_scan` does, putting (time.perf_counter() at
    the finish, outcome) for each scan and, at the end, ("cpu", CPU seconds spent on them). An
    exception goes on the queue as ("error", text) before it is raised."""
    from followup import nlp
    from followup.core.rules import load_rules
    from followup.settings import get_settings
    from models.db import get_engine

    try:
        settings = get_settings(database_url=url)
        nlp.classify_report("MRI lumbar spine: normal.", load_rules(settings.rules_path))
        with get_engine(url).connect():
            pass
        finished.put("ready")
        start.wait()
        cpu = time.process_time()
        times = StepTimes()
        for raw in raws:
            outcome = process_scan(raw, settings, times)
            finished.put((time.perf_counter(), outcome))
        finished.put(("cpu", time.process_time() - cpu))
    except BaseException as exc:
        finished.put(("error", f"{type(exc).__name__}: {exc}"))
        raise


# --- a local Prefect server and the served engine --------------------------------------------

VT, FS_CR = b"\x0b", b"\x1c\r"
SCAN_DEPLOYMENT = "scan-completed"
FLOOR_EVENT = "bench.floor.fired"
T = TypeVar("T")


class FloorEvents:
    """Sends the floor's events over one open websocket from a background event loop, as the
    gateway's EventsWorker does (Prefect's own `emit_event` here would also start a client for
    the server named by this process's settings, which change from series to series)."""

    def __init__(self, api_url: str) -> None:
        from prefect.events.clients import PrefectEventsClient

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = PrefectEventsClient(api_url=api_url)
        self._wait(self.client.__aenter__())

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def emit(self, marker: str) -> float:
        """Send one `bench.floor.fired`; its `occurred` (epoch seconds)."""
        from prefect.events import Event

        event = Event(
            event=FLOOR_EVENT,
            resource={"prefect.resource.id": f"bench.floor.{marker}"},
            payload={"marker": marker},
        )
        self._wait(self.client.emit(event))
        return event.occurred.timestamp()

    def close(self) -> None:
        self._wait(self.client.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def add_prefect_server_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefect-server-database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="the Prefect server's own database (postgresql: on --postgres-url's server)",
    )


def check_prefect_server_database(
    parser: argparse.ArgumentParser, arguments: argparse.Namespace
) -> None:
    if arguments.prefect_server_database == "postgresql" and not arguments.postgres_url:
        parser.error("--prefect-server-database postgresql needs --postgres-url")


def prefect_database(arguments: argparse.Namespace) -> str | None:
    """The PostgreSQL server for the Prefect server's database, or None for its SQLite file."""
    return arguments.postgres_url if arguments.prefect_server_database == "postgresql" else None


def prefect_database_note(arguments: argparse.Namespace) -> str:
    if arguments.prefect_server_database == "postgresql":
        return "Prefect server on PostgreSQL (a database of its own), as production runs it"
    return "Prefect server on its SQLite file, as `followup serve` starts it"


@contextmanager
def prefect_server(folder: Path, postgres_url: str | None = None) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1; yields the API URL. Its database is a SQLite file
    under `folder` (as `followup serve` starts it), or with `postgres_url` a new database on
    that PostgreSQL server (as production runs it, see DESIGN.md), dropped after.

    PREFECT_HOME, the runner's poll interval and the server settings `followup serve` gives its
    server (PREFECT_SERVER_TUNING) are set in this process's environment, which the server and
    the served engine inherit."""
    from followup.gateway.serve import PREFECT_SERVER_TUNING

    folder.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "PREFECT_HOME": str(folder / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            **PREFECT_SERVER_TUNING,
        }
    )
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    with ExitStack() as stack:
        if postgres_url is not None:
            from sqlalchemy import make_url

            database = stack.enter_context(empty_postgres_database(postgres_url, "bench_prefect"))
            os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = (
                make_url(database)
                .set(drivername="postgresql+asyncpg")
                .render_as_string(hide_password=False)
            )
        try:
            yield from _started_prefect_server(folder)
        finally:
            os.environ.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)


def _started_prefect_server(folder: Path) -> Iterator[str]:
    import httpx

    from followup.gateway.serve import SERVER_STARTUP_SECONDS, PrefectServer

    port = free_port()
    with (folder / "prefect-server.log").open("wb") as log:
        # As followup.gateway.serve.start_prefect_server starts it, its output to a file.
        process = subprocess.Popen(
            [
                *(str(Path(sys.executable).with_name("prefect")), "server", "start"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrefectServer(process, port)
    deadline = time.monotonic() + SERVER_STARTUP_SECONDS
    while True:
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the Prefect server did not start; see {folder}")
        time.sleep(0.5)
    try:
        yield server.api_url
    finally:
        server.stop()


def bench_prefect_yaml(folder: Path, *, floor: bool, concurrency: int | None = None) -> Path:
    """prefect.yaml's scan-completed deployment, as written there (its trigger, its concurrency
    limit unless `concurrency`), and with `floor` the empty flow fired by the same kind of
    trigger with the same limit. The scheduled deployments are left out: their runs would
    land in the middle of the measurement."""
    import yaml

    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [scan] = [spec for spec in project["deployments"] if spec["name"] == SCAN_DEPLOYMENT]
    scan["entrypoint"] = str(ROOT / scan["entrypoint"])
    if concurrency is not None:
        scan["concurrency_limit"] = concurrency
    deployments = [scan]
    if floor:
        deployments.append(
            {
                "name": "bench-floor",
                "entrypoint": str(ROOT / "bench" / "_e2e_floor.py") + ":floor",
                "concurrency_limit": scan["concurrency_limit"],
                "triggers": [
                    {
                        "type": "event",
                        "enabled": True,
                        "match": {"prefect.resource.id": "bench.floor.*"},
                        "expect": [FLOOR_EVENT],
                        "parameters": {"marker": "{{ event.payload.marker }}"},
                    }
                ],
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prefect.yaml"
    path.write_text(yaml.safe_dump({"name": "followup-bench", "deployments": deployments}))
    return path


@dataclass(frozen=True)
class Engine:
    mllp_port: int
    api_url: str


@contextmanager
def served_engine(
    prefect_yaml: Path, *, database_url: str, api_url: str, log: Path, startup: float = 300
) -> Iterator[Engine]:
    """`followup serve`'s engine (gateways + runner) on `prefect_yaml`, in a subprocess."""
    import httpx

    mllp_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PREFECT_API_URL": api_url,
        "FOLLOWUP_MLLP_PORT": str(mllp_port),
        "FOLLOWUP_HTTP_PORT": str(http_port),
    }
    names = {spec["name"] for spec in _yaml_deployments(prefect_yaml)}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "_serve.py"), str(prefect_yaml)],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + startup
            while not (listening(mllp_port) and listening(http_port)):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the engine did not start; see {log}")
                time.sleep(0.5)
            while True:  # the runner registers the deployments before the HTTP port comes up
                response = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=10)
                if names <= {d["name"] for d in response.json()}:
                    break
                time.sleep(0.5)
            yield Engine(mllp_port, api_url)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _yaml_deployments(path: Path) -> list[dict[str, object]]:
    import yaml

    return list(yaml.safe_load(path.read_text())["deployments"])


class MLLPSender:
    """One MLLP connection; `send` waits for the ACK, as RIS senders do."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)

    def send(self, message: bytes) -> bytes:
        self.sock.sendall(VT + message + FS_CR)
        answer = b""
        while not answer.endswith(FS_CR):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the gateway closed the connection")
            answer += chunk
        if b"MSA|AA|" not in answer:
            raise RuntimeError(f"not accepted: {answer[:300]!r}")
        return answer

    def close(self) -> None:
        self.sock.close()
