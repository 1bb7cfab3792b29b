"""Throughput: a replay of generated scans through the core pipeline alone and through Prefect.

    .venv/bin/python bench/bench_throughput.py [--scans 10000] [--postgres-url URL]
        [--prefect-scans 300] [--prefect-sqlite-scans 100] [--rate 5] [--profile-scans 1000]
        [--what-if-scans 2000] [--floor-events 150] [--core-processes 0]
        [--skip core what-if profile prefect floor]

Scans are generated ORU^R01 results (bench/_helpers.py) whose report texts come from the
labelled corpus (tests/corpus/*.jsonl) and the HL7 samples, drawn in a fixed mix of what the
engine decides for them: routine with a referral 55 %, normal 25 %, inconclusive 5 %, urgent
10 %, critical 5 % (an assumption: DOMAIN.md gives the tiers, not their frequencies). Each
goes to one of `scans / 50` providers (practices of five, business hours, 35 days of slots).

1. Core pipeline, no Prefect (target ≥ 200 scans/s): for each scan, in this process, intake
   (store raw, validate, duplicate check) and then every step of flows/scan_completed.py in
   its own transaction, as its tasks run them: load, classify, record the decision, book,
   queue the confirmation and reminders, finish. On a SQLite file and, with --postgres-url, on a
   fresh PostgreSQL database (`bench_<ts>`, dropped after). Time per step is summed as it runs.
   What-if (bench only, --what-if-scans): the same steps sharing one transaction after
   intake, to show what the per-step commits cost. With --core-processes N, the replay runs
   again on PostgreSQL in N processes sharing the database, as concurrent flow runs share it
   (the scans dealt out in turn; not on SQLite, which takes one writer at a time).
2. Profile: the same loop under cProfile on a fresh SQLite file (--profile-scans): own time
   per package, the engine's functions by cumulative time, all functions by own time.
3. Through Prefect (target sustained ≥ 3 scans/s on 2 cores, ≤ 0.5 CPU-s per scan over all
   processes): a local Prefect server (its own SQLite under a throwaway PREFECT_HOME, or
   PostgreSQL with --prefect-server-database postgresql) and the engine as `followup serve`
   runs it (MLLP gateway, scan-completed's trigger and concurrency limit from prefect.yaml, its
   runs executed inside the warm worker process); the scans are sent over MLLP at --rate per
   second, and the finished inbox rows counted every second until all are done or
   --prefect-timeout passes; then lost (not finished) and doubled (a second appointment or
   confirmation for one study) are counted. On PostgreSQL (--prefect-scans) and SQLite
   (--prefect-sqlite-scans) for the application database, each with a Prefect server of its
   own.
4. Prefect's floor (--floor-events): the same server and runner set-up serving bench_e2e's
   empty flow, fired by that many `bench.floor.fired` events at --rate per second; what an
   empty flow run per event sustains on this machine through a process per run (what
   scan-completed ran as before the warm worker).

Every process caches bytecode under --bytecode-cache unless --no-bytecode-cache (see
bench/_helpers.py: use_bytecode_cache). A rich progress bar and a count line every
--report-every scans go to stderr; the report to stdout and the results file.

Results: bench/results/throughput.md and throughput.png (scans/s over time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench import _helpers as helpers  # noqa: E402

console = Console(stderr=True)
WHAT_IF = "what-if: core, steps in one transaction"
FLOOR = "Prefect floor: an empty flow run per event"
PLOTTED = ("core pipeline", "through Prefect")  # and "core pipeline, N processes"
ANALYZE_EVERY = 500
AUTOVACUUM_NOTE = (
    "this PostgreSQL server runs with autovacuum off, so the replay runs ANALYZE every "
    "{every} (as autovacuum's analyze would; without it, tables that grow from empty keep "
    "sequential-scan plans)"
)
FINISHED = ("processed", "held", "error")


@dataclass
class Replay:
    """One replay: when each scan finished (seconds from the start) and what came of it."""

    label: str
    database: str
    scans: int
    seconds: float = 0.0
    finished_at: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    steps: helpers.StepTimes | None = None
    load_before: str = ""
    load_after: str = ""
    notes: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # CPU the replay cost (see cpu_column)

    @property
    def done(self) -> int:
        return len(self.finished_at)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def steady_rate(self) -> float:
        """Scans/s between the 10th and the 90th percentile of finishing: no ramp, no tail."""
        if self.done < 20:
            return self.rate
        ordered = sorted(self.finished_at)
        first, last = ordered[self.done // 10], ordered[self.done * 9 // 10]
        return (self.done * 9 // 10 - self.done // 10) / (last - first) if last > first else 0.0


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:.1f} scans/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def prepared(url: str, count: int, pool: dict[str, list[str]], seed: str) -> list[helpers.Scan]:
    from followup.settings import get_settings

    settings = get_settings(database_url=url)
    started = time.perf_counter()
    npis = helpers.seed_clinic(url, settings, providers=max(10, count // 50))
    console.log(f"clinic: {len(npis)} providers, seeded in {time.perf_counter() - started:.1f} s")
    return helpers.generate_scans(count, pool=pool, npis=npis, settings=settings, seed=seed)


# --- 1. the core pipeline -------------------------------------------------------------------


def core_replay(
    kind: str,
    arguments: argparse.Namespace,
    pool: dict[str, list[str]],
    *,
    count: int,
    profiler: cProfile.Profile | None = None,
    one_transaction: bool = False,
) -> Replay:
    from followup.settings import get_settings

    label = "core, profiled" if profiler else "core pipeline"
    if one_transaction:
        label = WHAT_IF
    replay = Replay(label, kind, count, load_before=helpers.load(), steps=helpers.StepTimes())
    with helpers.database(kind, arguments.postgres_url, "bench-throughput-") as url:
        scans = prepared(url, count, pool, seed=f"core-{kind}-{count}")
        settings = get_settings(database_url=url)
        assert replay.steps is not None
        replay.steps.count_statements(url)
        every = max(1, min(arguments.report_every, count // 5 or 1))
        analyze_every = ANALYZE_EVERY if helpers.needs_analyze(url) else 0
        if analyze_every:
            replay.notes.append(AUTOVACUUM_NOTE.format(every=f"{analyze_every} scans"))
        with progress() as bar:
            task = bar.add_task(f"{label} on {kind}", total=count, rate=0.0)
            started, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            for number, scan in enumerate(scans, start=1):
                outcome = helpers.process_scan(
                    scan.raw, settings, replay.steps, one_transaction=one_transaction
                )
                replay.outcomes[outcome] += 1
                replay.finished_at.append(time.perf_counter() - started)
                if analyze_every and number % analyze_every == 0:
                    helpers.analyze(url)  # timed with the replay: autovacuum's work
                if number % 20 == 0 or number == count:
                    bar.update(task, completed=number, rate=number / replay.finished_at[-1])
                if number % every == 0:
                    window = replay.finished_at[-1] - replay.finished_at[-every]
                    bar.console.log(
                        f"{label} on {kind}: {number}/{count}, "
                        f"{(every - 1) / window if window else 0:.1f} scans/s over the last "
                        f"{every}; {dict(replay.outcomes)}"
                    )
            if profiler:
                profiler.disable()
            replay.seconds = time.perf_counter() - started
            replay.cpu_seconds = time.process_time() - cpu
        replay.notes.append(check_core(url, replay))
        if arguments.commit_probe and not (profiler or one_transaction):
            replay.notes.append(commit_ceiling(url, replay, arguments.commit_probe))
    replay.load_after = helpers.load()
    return replay


def commit_ceiling(url: str, replay: Replay, count: int) -> str:
    """What the disk allows one process: one-row transactions per second on one connection,
    with the engine's own durability (SQLite WAL with synchronous=FULL, PostgreSQL with
    synchronous_commit on), against the transactions the core pipeline commits per scan."""
    from sqlalchemy import text

    from models.db import get_engine

    assert replay.steps is not None
    per_scan = replay.steps.committed / replay.done
    engine = get_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE bench_commit_probe (n integer)"))
    try:
        insert = text("INSERT INTO bench_commit_probe VALUES (:n)")
        with engine.connect() as connection:
            started = time.perf_counter()
            for number in range(count):
                connection.execute(insert, {"n": number})
                connection.commit()
            rate = count / (time.perf_counter() - started)
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE bench_commit_probe"))
    return (
        f"commit ceiling: {rate:.0f} one-row commits/s on one connection ({count} in a row, "
        f"after the replay); the core pipeline commits {per_scan:.1f} times per scan, so one "
        f"process cannot pass {rate / per_scan:.0f} scans/s on this disk whatever the rest costs"
    )


def core_parallel_replay(
    kind: str, arguments: argparse.Namespace, pool: dict[str, list[str]], *, count: int
) -> Replay:
    """The core pipeline in --core-processes processes sharing one database, as concurrent
    flow runs share it: the scans dealt out in turn, every process warmed up before the clock
    starts. Nothing may come out doubled: booking races for the same slots are real here."""
    import multiprocessing

    processes = arguments.core_processes
    label = f"core pipeline, {processes} processes"
    replay = Replay(label, kind, count, load_before=helpers.load())
    with helpers.database(kind, arguments.postgres_url, "bench-throughput-") as url:
        scans = prepared(url, count, pool, seed=f"core-{kind}-{count}-x{processes}")
        context = multiprocessing.get_context("spawn")  # no engine or pool inherited
        start, finished = context.Event(), context.Queue()
        workers = [
            context.Process(
                target=helpers.core_worker,
                args=(url, [scan.raw for scan in scans[n::processes]], start, finished),
            )
            for n in range(processes)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            _expect_ready(finished.get(timeout=300))
        analyze_every = ANALYZE_EVERY if helpers.needs_analyze(url) else 0
        if analyze_every:
            replay.notes.append(AUTOVACUUM_NOTE.format(every=f"{analyze_every} scans"))
        every = max(1, min(arguments.report_every, count // 5 or 1))
        with progress() as bar:
            task = bar.add_task(f"{label} on {kind}", total=count, rate=0.0)
            started = time.perf_counter()
            start.set()
            running = processes
            while running:
                item = finished.get(timeout=600)
                if item[0] == "error":
                    raise SystemExit(f"{label} on {kind}: a worker failed: {item[1]}")
                if item[0] == "cpu":
                    replay.cpu_seconds += item[1]
                    running -= 1
                    continue
                replay.finished_at.append(item[0] - started)
                replay.outcomes[item[1]] += 1
                number = replay.done
                if analyze_every and number % analyze_every == 0:
                    helpers.analyze(url)
                if number % 20 == 0 or number == count:
                    bar.update(task, completed=number, rate=number / replay.finished_at[-1])
                if number % every == 0:
                    bar.console.log(
                        f"{label} on {kind}: {number}/{count}, "
                        f"{number / replay.finished_at[-1]:.1f} scans/s; {dict(replay.outcomes)}"
                    )
            replay.seconds = time.perf_counter() - started
        for worker in workers:
            worker.join(timeout=60)
        replay.notes.append(
            f"{processes} processes, scans dealt out in turn, each process warmed up (imports, "
            "medspaCy pipeline, a connection) before the clock starts; CPU s/scan is theirs"
        )
        replay.notes.append(check_core(url, replay))
    replay.load_after = helpers.load()
    return replay


def _expect_ready(item: object) -> None:
    if item != "ready":
        raise SystemExit(f"a core worker did not start: {item}")


def check_core(url: str, replay: Replay) -> str:
    """Nothing lost, nothing doubled: one appointment per booked scan, one confirmation each."""
    from sqlalchemy import func
    from sqlmodel import select

    from models.db import session_scope
    from models.tables import Appointment, InboxMessage, OutboundMessage

    with session_scope(url) as session:
        inbox = session.exec(select(func.count()).select_from(InboxMessage)).one()
        appointments = session.exec(select(func.count()).select_from(Appointment)).one()
        studies_booked = session.exec(select(func.count(func.distinct(Appointment.study_id)))).one()
        confirmations = session.exec(
            select(func.count())
            .select_from(OutboundMessage)
            .where(OutboundMessage.kind == "confirmation")
        ).one()
    booked = replay.outcomes["booked"]
    if not (inbox == replay.scans and appointments == studies_booked == confirmations == booked):
        raise SystemExit(
            f"{replay.database}: {inbox} inbox rows for {replay.scans} scans, {appointments} "
            f"appointments for {studies_booked} studies, {confirmations} confirmations, "
            f"{booked} booked"
        )
    return (
        f"checked: {inbox} inbox rows, {appointments} appointments, one per booked study, "
        f"{confirmations} confirmations"
    )


def lost_and_doubled(url: str, sent: int) -> str:
    """Scans sent whose inbox row did not finish, and studies with more than one active
    appointment or confirmation: both must be 0."""
    from sqlalchemy import func
    from sqlmodel import col, select

    from models.db import session_scope
    from models.tables import Appointment, InboxMessage, OutboundMessage

    with session_scope(url) as session:
        finished = session.exec(
            select(func.count())
            .select_from(InboxMessage)
            .where(col(InboxMessage.status).in_(FINISHED))
        ).one()
        appointments = session.exec(select(func.count()).select_from(Appointment)).one()
        studies = session.exec(select(func.count(func.distinct(Appointment.study_id)))).one()
        confirmations = session.exec(
            select(func.count())
            .select_from(OutboundMessage)
            .where(OutboundMessage.kind == "confirmation")
        ).one()
    doubled = (appointments - studies) + max(confirmations - studies, 0)
    return (
        f"lost {sent - finished} (of {sent} sent), doubled {doubled} ({appointments} "
        f"appointments for {studies} booked studies, {confirmations} confirmations)"
    )


# --- 2. the profile --------------------------------------------------------------------------


def profile_rows(
    profiler: cProfile.Profile, sort: str, limit: int, *, engine_only: bool = False
) -> list[str]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    stats.sort_stats(sort)
    total = max(value[3] for value in stats.stats.values())  # type: ignore[attr-defined]
    rows = []
    for function in stats.fcn_list:  # type: ignore[attr-defined]
        filename, line, name = function
        if engine_only and not _in_project(filename):
            continue
        calls, _, own, cumulative, _ = stats.stats[function]  # type: ignore[attr-defined]
        rows.append(
            f"| `{_short(filename)}:{line}` {name} | {calls} | {own:.2f} | {cumulative:.2f} "
            f"| {100 * cumulative / total:.0f} % |"
        )
        if len(rows) == limit:
            break
    return rows


def own_time_by_package(profiler: cProfile.Profile) -> list[str]:
    """Own (not cumulative) time summed per library: what the CPU actually ran."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    buckets: Counter[str] = Counter()
    for (filename, _, name), value in stats.stats.items():  # type: ignore[attr-defined]
        buckets[_package(filename, name)] += value[2]
    total = sum(buckets.values())
    return [
        f"| {package} | {seconds:.2f} | {100 * seconds / total:.0f} % |"
        for package, seconds in buckets.most_common(12)
    ]


def _in_project(filename: str) -> bool:
    return filename.startswith(str(ROOT) + "/") and "/.venv/" not in filename


def _package(filename: str, name: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if _in_project(filename):
        return filename.removeprefix(str(ROOT) + "/").split("/", 1)[0] + "/ (this project)"
    if filename == "~":
        if "sqlite3" in name:
            return "sqlite3 (C: execute, commit = fsync)"
        if "psycopg" in name or "pgconn" in name.lower():
            return "psycopg (C)"
        return "built-ins"
    return "standard library"


def _short(filename: str) -> str:
    for prefix in ("site-packages/", str(ROOT) + "/"):
        if prefix in filename:
            return filename.split(prefix, 1)[1]
    return filename


# --- 3. through Prefect ----------------------------------------------------------------------


def prefect_replay(
    kind: str,
    arguments: argparse.Namespace,
    pool: dict[str, list[str]],
    *,
    count: int,
    work: Path,
) -> Replay:
    """With a Prefect server of its own: each replay starts from an empty Prefect database, not
    from the flow runs of the one before."""
    from sqlalchemy import func
    from sqlmodel import col, select

    from models.db import session_scope
    from models.tables import InboxMessage

    replay = Replay("through Prefect", kind, count, load_before=helpers.load())
    children_cpu = _children_cpu()
    with (
        helpers.database(kind, arguments.postgres_url, "bench-throughput-") as url,
        helpers.prefect_server(work / kind, helpers.prefect_database(arguments)) as api_url,
    ):
        replay.notes.append(helpers.prefect_database_note(arguments))
        scans = prepared(url, count, pool, seed=f"prefect-{kind}-{count}")
        prefect_yaml = helpers.bench_prefect_yaml(
            work / kind, floor=False, concurrency=arguments.concurrency
        )
        limit = helpers._yaml_deployments(prefect_yaml)[0]["concurrency_limit"]
        replay.notes.append(
            f"scan-completed concurrency limit {limit}; its runs execute inside the one warm "
            "worker process `followup serve` starts (followup/warm_worker.py)"
        )
        with helpers.served_engine(
            prefect_yaml, database_url=url, api_url=api_url, log=work / kind / "serve.log"
        ) as engine:
            sent: list[float] = []
            started = time.perf_counter()
            sender = threading.Thread(
                target=send_paced,
                args=(engine.mllp_port, scans, arguments.rate, started, sent),
                daemon=True,
            )
            sender.start()
            deadline = started + arguments.prefect_timeout
            seen = 0
            analyzed = 0.0
            analyze = helpers.needs_analyze(url)
            if analyze:
                replay.notes.append(AUTOVACUUM_NOTE.format(every="60 s"))
            every = max(1, min(arguments.report_every // 10, count // 5 or 1))
            with progress() as bar:
                task = bar.add_task(f"through Prefect on {kind}", total=count, rate=0.0)
                while seen < count and time.perf_counter() < deadline:
                    time.sleep(1.0)
                    with session_scope(url) as session:
                        finished = session.exec(
                            select(func.count())
                            .select_from(InboxMessage)
                            .where(col(InboxMessage.status).in_(FINISHED))
                        ).one()
                    now = time.perf_counter() - started
                    if analyze and now - analyzed > 60:
                        helpers.analyze(url)
                        analyzed = now
                    replay.finished_at += [now] * (finished - seen)
                    if finished // every > seen // every:
                        bar.console.log(
                            f"through Prefect on {kind}: {finished}/{count} finished, "
                            f"{len(sent)} sent, {finished / now:.2f} scans/s so far"
                        )
                    seen = finished
                    bar.update(task, completed=finished, rate=finished / now)
            replay.seconds = (replay.finished_at[-1] if replay.finished_at else 0.0) or (
                time.perf_counter() - started
            )
            sender.join(timeout=5)
            # Runs still finishing (artifact, worklist subflow) end before the engine stops.
            states = settled_flow_runs(api_url, timeout=300)
            replay.notes.append(
                "flow runs: " + ", ".join(f"{n} {name}" for name, n in sorted(states.items()))
            )
            replay.notes.append(scan_runs_note(api_url))
            replay.notes += unsuccessful_flow_runs(api_url)
            replay.notes.append(
                f"sent {len(sent)} at {arguments.rate:g}/s in "
                f"{(sent[-1] if sent else 0):.0f} s; {seen} finished "
                + (
                    "(all)"
                    if seen == count
                    else f"before the {arguments.prefect_timeout:g} s limit"
                )
            )
        with session_scope(url) as session:
            for status, number in session.exec(
                select(InboxMessage.status, func.count()).group_by(InboxMessage.status)
            ).all():
                replay.outcomes[str(status)] = number
            # An error row is a scan that came to nothing: say why, here and not in a log.
            for inbox_id, location, error in session.exec(
                select(InboxMessage.id, InboxMessage.error_location, InboxMessage.error).where(
                    InboxMessage.status == "error"
                )
            ).all():
                reason = (error or "").strip().splitlines()[:1] or ["no reason stored"]
                replay.notes.append(f"inbox {inbox_id} error at {location}: {reason[0]}")
        replay.notes.append(lost_and_doubled(url, count))
        replay.notes.append(f"logs kept in {work / kind}")
    # The Prefect server and the engine have exited and been waited for: their CPU, and that
    # of every flow-run process the engine reaped, is in this process's children's usage.
    replay.cpu_seconds = _children_cpu() - children_cpu
    replay.load_after = helpers.load()
    return replay


def floor_replay(arguments: argparse.Namespace, *, count: int, work: Path) -> Replay:
    """Prefect's own ceiling on this machine: the empty bench-floor flow (bench_e2e's floor),
    fired by `count` events at the scans' rate through the same kind of trigger and runner, so
    the through-Prefect rows can be read against what an empty flow run per event sustains."""
    import httpx

    replay = Replay(FLOOR, "sqlite", count, load_before=helpers.load())
    children_cpu = _children_cpu()
    completed = {
        "flows": {"name": {"any_": ["bench-floor"]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    with (
        helpers.database("sqlite", None, "bench-throughput-floor-") as url,
        helpers.prefect_server(work / "floor", helpers.prefect_database(arguments)) as api_url,
    ):
        replay.notes.append(helpers.prefect_database_note(arguments))
        prefect_yaml = helpers.bench_prefect_yaml(
            work / "floor", floor=True, concurrency=arguments.concurrency
        )
        with (
            helpers.served_engine(
                prefect_yaml, database_url=url, api_url=api_url, log=work / "floor" / "serve.log"
            ),
            httpx.Client(base_url=api_url, timeout=30) as api,
        ):
            events = helpers.FloorEvents(api_url)
            started = time.perf_counter()
            deadline = started + arguments.prefect_timeout
            sent = 0
            seen = 0
            with progress() as bar:
                task = bar.add_task("Prefect floor", total=count, rate=0.0)
                while seen < count and time.perf_counter() < deadline:
                    due = min(count, int((time.perf_counter() - started) * arguments.rate) + 1)
                    for number in range(sent, due):
                        events.emit(f"{number:05d}-{uuid.uuid4().hex[:8]}")
                    sent = due
                    time.sleep(0.2)
                    response = api.post("/flow_runs/count", json=completed)
                    response.raise_for_status()
                    finished = int(response.json())
                    now = time.perf_counter() - started
                    replay.finished_at += [now] * (finished - seen)
                    seen = finished
                    bar.update(task, completed=finished, rate=finished / now)
            events.close()
            replay.seconds = replay.finished_at[-1] if replay.finished_at else 0.0
            states = settled_flow_runs(api_url, timeout=300)
        replay.outcomes.update({f"run {name.lower()}": n for name, n in states.items()})
        replay.notes.append(
            f"sent {sent} events at {arguments.rate:g}/s; {seen} empty flow runs completed"
        )
    replay.cpu_seconds = _children_cpu() - children_cpu
    replay.load_after = helpers.load()
    return replay


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def settled_flow_runs(api_url: str, *, timeout: float) -> Counter[str]:
    """Flow runs by state name, once none is scheduled, pending or running (or at `timeout`)."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api_url, timeout=30) as client:
        while True:
            runs: list[dict[str, object]] = []
            while len(runs) % 200 == 0:
                page = client.post("/flow_runs/filter", json={"limit": 200, "offset": len(runs)})
                page.raise_for_status()
                runs += page.json()
                if not page.json():
                    break
            states = Counter(str(run["state_name"]) for run in runs)
            active = sum(
                1 for run in runs if run["state_type"] in ("SCHEDULED", "PENDING", "RUNNING")
            )
            if not active or time.monotonic() > deadline:
                return states
            time.sleep(2)


def scan_runs_note(api_url: str) -> str:
    """The scan-completed runs apart from the other deployments' (sweeps, dispatch, worklist
    refreshes): a scheduler filtering by accession must see one run per scan."""
    import httpx

    names: list[str] = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        while True:
            page = client.post(
                "/flow_runs/filter",
                json={
                    "flow_runs": {"name": {"like_": "scan-"}},
                    "limit": 200,
                    "offset": len(names),
                },
            )
            page.raise_for_status()
            names += [str(run["name"]) for run in page.json()]
            if len(page.json()) < 200:
                break
    per_scan = Counter(name for name in names if name.startswith("scan-"))  # like_ is a substring
    doubled = sum(n > 1 for n in per_scan.values())
    runs = sum(per_scan.values())
    return f"scan runs: {runs} for {len(per_scan)} scans, {doubled} scans with more than one"


def unsuccessful_flow_runs(api_url: str) -> list[str]:
    """Every flow run that did not complete, with its name and its final state's message."""
    import httpx

    unsuccessful = {"flow_runs": {"state": {"type": {"not_any_": ["COMPLETED"]}}}}
    with httpx.Client(base_url=api_url, timeout=30) as client:
        response = client.post("/flow_runs/filter", json=unsuccessful | {"limit": 200})
        response.raise_for_status()
        return [
            f"flow run {run['name']}: {run['state_name']}: "
            + str((run.get("state") or {}).get("message") or "no message")[:300]
            for run in response.json()
        ]


def send_paced(
    port: int, scans: list[helpers.Scan], rate: float, started: float, sent: list[float]
) -> None:
    sender = helpers.MLLPSender(port)
    try:
        for number, scan in enumerate(scans):
            time.sleep(max(0.0, started + number / rate - time.perf_counter()))
            sender.send(scan.raw)
            sent.append(time.perf_counter() - started)
    finally:
        sender.close()


# --- the report ------------------------------------------------------------------------------


def replay_table(replays: list[Replay]) -> list[str]:
    lines = [
        "| run | app database | scans | finished | wall s | scans/s | steady scans/s "
        "| target | CPU s/scan | outcomes | load before → after |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for r in replays:
        target = {
            "through Prefect": "≥ 5/s",
            FLOOR: "(Prefect's ceiling)",
            "core, profiled": "(cProfile on)",
            WHAT_IF: "(bench-only variant)",
        }.get(r.label, "≥ 200/s")
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))
        lines.append(
            f"| {r.label} | {r.database} | {r.scans} | {r.done} | {r.seconds:.1f} "
            f"| **{r.rate:.2f}** | {r.steady_rate():.2f} | {target} "
            f"| {r.cpu_seconds / max(1, r.done):.3f} | {outcomes} "
            f"| {r.load_before} → {r.load_after} |"
        )
    return lines


def steps_table(replays: list[Replay]) -> list[str]:
    cores = [r for r in replays if r.steps is not None and r.label == "core pipeline"]
    if not cores:
        return []
    header = "| step | " + " | ".join(
        f"{r.database} ms/scan | share | statements/scan" for r in cores
    )
    lines = [header + " |", "|---|" + "---:|---:|---:|" * len(cores)]
    for step in (*helpers.STEPS, "all"):
        cells = []
        for r in cores:
            assert r.steps is not None
            total = sum(r.steps.seconds.values())
            seconds = total if step == "all" else r.steps.seconds[step]
            statements = (
                sum(r.steps.statements.values()) if step == "all" else r.steps.statements[step]
            )
            cells.append(
                f"{1000 * seconds / r.scans:.2f} | {100 * seconds / total:.0f} % "
                f"| {statements / r.scans:.1f}"
            )
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def plot(replays: list[Replay], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in replays if r.label.startswith(PLOTTED) and r.done]
    panels = [
        (label, width, target)
        for label, width, target in (("core pipeline", 5.0, 200), ("through Prefect", 30.0, 5))
        if any(r.label.startswith(label) for r in shown)
    ]
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for axis, (label, width, target) in zip(axes[0], panels, strict=True):
        for r in (r for r in shown if r.label.startswith(label)):
            bins = int(r.seconds // width) + 1
            counts = [0] * bins
            for moment in r.finished_at:
                counts[min(bins - 1, int(moment // width))] += 1
            axis.step(
                [width * (i + 1) for i in range(bins)],
                [c / width for c in counts],
                where="pre",
                label=f"{r.database}{r.label.removeprefix(label)}",
            )
        axis.axhline(target, color="grey", linewidth=0.8, linestyle=":", label="target")
        axis.set_title(f"{label} ({width:g} s bins)")
        axis.set_xlabel("seconds since the start of the replay")
        axis.set_ylabel("scans finished per second")
        axis.set_yscale("log" if label == "core pipeline" else "linear")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_report(
    arguments: argparse.Namespace,
    replays: list[Replay],
    profile: cProfile.Profile | None,
    machine: str,
    load_start: str,
    bytecode: str,
) -> str:
    command = ".venv/bin/python bench/bench_throughput.py " + " ".join(sys.argv[1:])
    lines = [
        "# Throughput: core pipeline and through Prefect",
        "",
        f"- command (every row below): `{command.strip()}`",
        f"- machine: {machine}",
        f"- load average (1, 5, 15 min) at the start: {load_start}; at the end: {helpers.load()}"
        " (the machine is shared: other sessions' tests and benchmarks show here)",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Python bytecode: {bytecode}",
        "- mix: "
        + ", ".join(f"{k} {v:.0%}" for k, v in helpers.MIX.items())
        + " (report texts from tests/corpus/*.jsonl and tests/samples/hl7, grouped by the "
        "engine's own decision); one provider per 50 scans, 35 days of slots",
        "",
        "Core pipeline = intake plus every step of scan-completed in its own transaction, in "
        "one process, no Prefect. Through Prefect = MLLP gateway → event → trigger → a flow run "
        "per scan, served as `followup serve` serves it; a scan counts when its inbox row is "
        "finished (processed, held or error). Steady = between the 10th and 90th percentile "
        "of finishing times.",
        "",
        *replay_table(replays),
        "",
    ]
    for r in replays:
        for note in r.notes:
            lines.append(f"- {r.label} on {r.database}: {note}")
    steps = steps_table(replays)
    if steps:
        lines += ["", "## Core pipeline: time per step (summed as it ran, no profiler)", "", *steps]
    if profile is not None:
        header = [
            "| function | calls | own s | cumulative s | of the run |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            "",
            f"## Profile: {arguments.profile_scans} scans on SQLite under cProfile",
            "",
            "### Own time by package (where the CPU went)",
            "",
            "| package | own s | share |",
            "|---|---:|---:|",
            *own_time_by_package(profile),
            "",
            "### The engine's functions by cumulative time",
            "",
            *header,
            *profile_rows(profile, "cumulative", arguments.profile_top, engine_only=True),
            "",
            "### All functions by own time",
            "",
            *header,
            *profile_rows(profile, "tottime", arguments.profile_top // 2),
        ]
    plot = arguments.output.with_suffix(".png").name
    lines += ["", f"![scans per second over time]({plot})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=10_000, help="core pipeline replay")
    parser.add_argument("--prefect-scans", type=int, default=300, help="through Prefect, PG")
    parser.add_argument("--prefect-sqlite-scans", type=int, default=100)
    parser.add_argument(
        "--floor-events", type=int, default=150, help="empty flow runs, Prefect's ceiling"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="scans/s sent to the gateway")
    parser.add_argument("--concurrency", type=int, help="override scan-completed's limit")
    parser.add_argument("--prefect-timeout", type=float, default=1800.0, help="per replay, s")
    parser.add_argument("--profile-scans", type=int, default=1000)
    parser.add_argument(
        "--what-if-scans",
        type=int,
        default=2000,
        help="core replay with the steps after intake in one transaction (0: none)",
    )
    parser.add_argument(
        "--core-processes",
        type=int,
        default=0,
        help="also replay the core pipeline in this many processes on PostgreSQL (0: not)",
    )
    parser.add_argument(
        "--commit-probe",
        type=int,
        default=1000,
        help="after each core replay, time this many one-row commits (0: not)",
    )
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--report-every", type=int, default=1000, help="print counts every N")
    parser.add_argument("--postgres-url", help="PostgreSQL server for the app database")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["core", "what-if", "profile", "prefect", "floor"],
    )
    parser.add_argument("--output", type=Path, default=helpers.RESULTS / "throughput.md")
    parser.add_argument(
        "--log-dir", type=Path, help="the servers' logs (default: a new folder in /tmp, kept)"
    )
    helpers.add_bytecode_arguments(parser)
    helpers.add_prefect_server_database_argument(parser)
    arguments = parser.parse_args()
    helpers.check_prefect_server_database(parser, arguments)
    helpers.stop_cleanly_on_sigterm()
    bytecode = helpers.use_bytecode_cache(arguments.bytecode_cache)
    load_start = helpers.load()
    machine = helpers.machine(arguments.postgres_url)
    kinds = ["sqlite"] + (["postgresql"] if arguments.postgres_url else [])
    from followup.settings import get_settings

    pool = helpers.report_pool(get_settings())
    replays: list[Replay] = []
    profile = cProfile.Profile() if "profile" not in arguments.skip else None
    png = arguments.output.with_suffix(".png")

    def publish(final: bool) -> None:
        """The report so far, rewritten after each replay: a run stopped early keeps its rows."""
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        plot(replays, png)
        profiled = profile if any(r.label == "core, profiled" for r in replays) else None
        report = write_report(arguments, replays, profiled, machine, load_start, bytecode)
        arguments.output.write_text(report)
        if final:
            print(report)
            console.log(f"written to {arguments.output} and {png}")

    planned: list[Callable[[], Replay]] = []
    if "core" not in arguments.skip:
        planned += [partial(core_replay, k, arguments, pool, count=arguments.scans) for k in kinds]
    if "core" not in arguments.skip and arguments.core_processes and arguments.postgres_url:
        planned.append(
            partial(core_parallel_replay, "postgresql", arguments, pool, count=arguments.scans)
        )
    if "what-if" not in arguments.skip and arguments.what_if_scans:
        count = arguments.what_if_scans
        planned += [
            partial(core_replay, k, arguments, pool, count=count, one_transaction=True)
            for k in kinds
        ]
    if profile is not None and arguments.profile_scans:
        count = arguments.profile_scans
        planned.append(
            partial(core_replay, "sqlite", arguments, pool, count=count, profiler=profile)
        )
    counts = {"postgresql": arguments.prefect_scans, "sqlite": arguments.prefect_sqlite_scans}
    through_prefect = [
        kind
        for kind in reversed(kinds)  # PostgreSQL first: the headline
        if "prefect" not in arguments.skip and counts[kind]
    ]
    floor_events = 0 if "floor" in arguments.skip else arguments.floor_events
    if through_prefect or floor_events:
        # The servers' logs outlive the run: an error row is explained only by its run's log.
        folder = arguments.log_dir or Path(tempfile.mkdtemp(prefix="bench-throughput-logs-"))
        planned += [
            partial(prefect_replay, kind, arguments, pool, count=counts[kind], work=folder)
            for kind in through_prefect
        ]
        if floor_events:
            planned.append(partial(floor_replay, arguments, count=floor_events, work=folder))
    for replay in planned:
        replays.append(replay())
        publish(final=False)
    publish(final=True)


if __name__ == "__main__":
    main()
