"""End-to-end latency: a scan result on the MLLP gateway → follow-up booked and confirmation
queued, beside Prefect's own floor measured in the same run.

    .venv/bin/python bench/bench_e2e.py [--scans 40] [--spacing 2] [--postgres-url URL]

Per application database (a SQLite file; with --postgres-url also a fresh PostgreSQL database
`bench_<ts>`, dropped after): a local Prefect server (`prefect server start` on 127.0.0.1, a
free port, a throwaway PREFECT_HOME with its own SQLite) and the engine as `followup serve` runs
it (bench/_serve.py: the MLLP and HTTP gateways, its warm worker and a runner polling every
second) on a prefect.yaml holding two deployments:

* scan-completed exactly as prefect.yaml declares it (its event trigger on
  `ris.scan.completed`, its concurrency limit, the warm pool: each run executes inside the
  `followup warm-worker` process);
* bench-floor: an empty async flow (bench/_e2e_floor.py) fired by the same kind of event
  trigger, on `bench.floor.fired`, with the same limit, served by the runner: a flow run per
  process, Prefect's floor for that execution model.

Scans and floor events alternate, one at a time, each waiting for its flow run to finish, then
a pause of 0.5–1.5 × --spacing seconds. A scan is a generated ORU^R01 (a corpus or sample report
that books: routine, normal, inconclusive or urgent) sent over MLLP; its latency runs from the
ACK (the gateway emits the event right after writing it) to the `created_at` of the
confirmation row in outbound_message. The floor's runs from the emitted event's `occurred` to
the empty flow run's end. Targets: scan p50 ≤ 1.0 s, p95 ≤ 2.0 s, and ≤ 0.5 × the
floor. The flow runs' states and task runs, read back from the Prefect API, split the latency
into its parts; a last section times what a process-per-run flow run imports before its first
task (what the warm worker pays once). Results: bench/results/e2e.md.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from bench import _helpers as helpers  # noqa: E402

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Completed runs of each kind before measuring, not counted: the server loads a new deployment's
# trigger a little after the runner registers it, and the first runs warm connections and caches.
WARM_UP = 2
WARM_UP_ATTEMPTS = 6
WARM_UP_TIMEOUT = 90.0


@dataclass
class Run:
    """One measured flow run: t0 (event), and the moments read back afterwards (epoch s)."""

    kind: str  # scan | floor
    name: str
    t0: float
    run: dict[str, object] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.run.get("state_type") == "COMPLETED" and "done" in self.marks

    def span(self, start: str, end: str) -> float:
        return self.marks[end] - self.marks[start]


def _epoch(value: object) -> float:
    assert isinstance(value, str)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Api:
    def __init__(self, url: str) -> None:
        import httpx

        self.client = httpx.Client(base_url=url, timeout=30)

    def run_named(self, name: str) -> dict[str, object] | None:
        response = self.client.post(
            "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}}
        )
        response.raise_for_status()
        runs = response.json()
        return runs[0] if runs else None

    def wait(self, name: str, timeout: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run_named(name)
            if run is not None and run["state_type"] in TERMINAL:
                return run
            time.sleep(0.25)
        return self.run_named(name) or {"state_type": "NOT STARTED"}

    def states(self, run_id: object) -> list[dict[str, object]]:
        response = self.client.get("/flow_run_states/", params={"flow_run_id": str(run_id)})
        response.raise_for_status()
        return sorted(response.json(), key=lambda state: _epoch(state["timestamp"]))

    def task_runs(self, run_id: object) -> list[dict[str, object]]:
        response = self.client.post(
            "/task_runs/filter", json={"flow_runs": {"id": {"any_": [str(run_id)]}}}
        )
        response.raise_for_status()
        return response.json()


def flow_marks(api: Api, record: Run) -> None:
    """created, pending (the runner took it), running, completed; for scans, each task."""
    run = record.run
    record.marks["t0"] = record.t0
    record.marks["created"] = _epoch(run["created"])
    for state in api.states(run["id"]):
        record.marks.setdefault(str(state["type"]).lower(), _epoch(state["timestamp"]))
    if record.kind == "floor" and "completed" in record.marks:
        record.marks["done"] = record.marks["completed"]
    if record.kind == "scan":
        for task in api.task_runs(run["id"]):
            if task.get("start_time") and task.get("end_time"):
                name = str(task["name"]).rsplit("-", 1)[0]
                record.marks[f"{name}:start"] = _epoch(task["start_time"])
                record.marks[f"{name}:end"] = _epoch(task["end_time"])


def confirmation_marks(url: str, scans: list[Run]) -> None:
    """`created_at` of each scan's confirmation row, and its inbox row's `received_at`."""
    from sqlmodel import col, select

    from models.db import session_scope
    from models.tables import Appointment, ImagingStudy, InboxMessage, OutboundMessage

    by_accession = {record.name.removeprefix("scan-"): record for record in scans}
    with session_scope(url) as session:
        rows = session.exec(
            select(InboxMessage.accession, InboxMessage.received_at, OutboundMessage.created_at)
            .join(ImagingStudy, col(ImagingStudy.accession) == InboxMessage.accession)
            .join(Appointment, col(Appointment.study_id) == ImagingStudy.id)
            .join(OutboundMessage, col(OutboundMessage.appointment_id) == Appointment.id)
            .where(OutboundMessage.kind == "confirmation")
        ).all()
    for accession, received_at, created_at in rows:
        record = by_accession.get(str(accession))
        if record is not None:
            record.marks["received"] = received_at.timestamp()
            record.marks["done"] = created_at.timestamp()


@dataclass
class Series:
    database: str
    scans: list[Run]
    floors: list[Run]
    load_before: str
    load_after: str

    def ok(self, kind: str) -> list[Run]:
        return [r for r in (self.scans if kind == "scan" else self.floors) if r.ok]


def run_series(
    kind: str, arguments: argparse.Namespace, pool: dict[str, list[str]], work: Path
) -> Series:
    """One application database with a Prefect server of its own: each series starts from an
    empty Prefect database, not from the runs, events and automations of the one before."""
    from followup.settings import get_settings

    rng = random.Random(f"e2e-{kind}")
    load_before = helpers.load()
    with (
        helpers.database(kind, arguments.postgres_url, "bench-e2e-") as url,
        helpers.prefect_server(work / kind, helpers.prefect_database(arguments)) as api_url,
    ):
        settings = get_settings(database_url=url)
        npis = helpers.seed_clinic(url, settings, providers=10)
        total = arguments.scans + WARM_UP_ATTEMPTS
        generated = helpers.generate_scans(
            total,
            pool=pool,
            npis=npis,
            settings=settings,
            seed=f"e2e-{kind}",
            mix={c: helpers.MIX[c] for c in helpers.BOOKABLE},
        )
        prefect_yaml = helpers.bench_prefect_yaml(work / kind, floor=True)
        api = Api(api_url)
        scans: list[Run] = []
        floors: list[Run] = []
        with helpers.served_engine(
            prefect_yaml, database_url=url, api_url=api_url, log=work / kind / "serve.log"
        ) as engine:
            sender = helpers.MLLPSender(engine.mllp_port)
            events = helpers.FloorEvents(api_url)

            def scan(number: int) -> Run:
                message = generated[number]
                sender.send(message.raw)
                return Run("scan", f"scan-{message.accession}", time.time())

            def floor(number: int) -> Run:
                marker = f"{number:04d}-{uuid.uuid4().hex[:8]}"
                return Run("floor", f"floor-{marker}", events.emit(marker))

            def one(start: Callable[[int], Run], number: int, timeout: float) -> Run:
                record = start(number)
                record.run = api.wait(record.name, timeout)
                print(
                    f"[{kind}] {number + 1} {record.kind}: {record.run.get('state_type')} "
                    f"after {time.time() - record.t0:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(arguments.spacing * rng.uniform(0.5, 1.5))
                return record

            for start in (scan, floor):
                completed = 0
                for number in range(WARM_UP_ATTEMPTS):
                    run = one(start, number, WARM_UP_TIMEOUT).run
                    completed += run.get("state_type") == "COMPLETED"
                    if completed == WARM_UP:
                        break
                else:
                    raise RuntimeError(f"warm-up: {completed} completed {start.__name__} runs")
            for number in range(WARM_UP_ATTEMPTS, total):
                # Alternate which goes first, so neither always follows the other's exit.
                order: list[tuple[Callable[[int], Run], list[Run]]] = [
                    (scan, scans),
                    (floor, floors),
                ]
                for fire, records in order if number % 2 == 0 else order[::-1]:
                    records.append(one(fire, number, arguments.timeout))
            sender.close()
            events.close()
        for record in scans + floors:
            if record.run.get("id"):
                flow_marks(api, record)
        confirmation_marks(url, scans)
    return Series(kind, scans, floors, load_before, helpers.load())


# --- what a flow-run process does before its first task --------------------------------------

STARTUP_PROBES = {
    "python -m prefect.engine's imports": "import prefect.engine",
    "+ load bench-floor's entrypoint": (
        "import prefect.engine\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "load_flow_from_entrypoint('bench/_e2e_floor.py:floor')"
    ),
    "+ load scan-completed's entrypoint": (
        "import prefect.engine\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "load_flow_from_entrypoint('flows/scan_completed.py:scan_completed')"
    ),
    "+ classify in that process (the NLP pipeline the warm worker builds once)": (
        "import prefect.engine\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "load_flow_from_entrypoint('flows/scan_completed.py:scan_completed')\n"
        "from followup import nlp\n"
        "from followup.core.rules import load_rules\n"
        "from followup.settings import get_settings\n"
        "nlp.classify_report('IMPRESSION: No acute abnormality.',"
        " load_rules(get_settings().rules_path))"
    ),
}


def startup_profile(rounds: int) -> list[tuple[str, float, float]]:
    """Median wall and CPU seconds of a fresh interpreter doing each probe; the entrypoint
    probes once more without any bytecode cache, as this checkout runs by default."""
    cached = dict(os.environ)
    uncached = {k: v for k, v in cached.items() if k != "PYTHONPYCACHEPREFIX"}
    uncached["PYTHONDONTWRITEBYTECODE"] = "1"
    probes = [(label, code, cached) for label, code in STARTUP_PROBES.items()]
    if "PYTHONPYCACHEPREFIX" in cached:
        probes += [
            (f"{label}, no bytecode cache", code, uncached)
            for label, code in list(STARTUP_PROBES.items())[1:3]
        ]
    results = []
    for label, code, env in probes:
        walls, cpus = [], []
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
            walls.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        results.append((label, statistics.median(walls), statistics.median(cpus)))
    return results


# --- the report -------------------------------------------------------------------------------


def _stats(values: list[float]) -> str:
    if not values:
        return "– | – | –"
    p50, p95 = helpers.percentile(values, 0.5), helpers.percentile(values, 0.95)
    return f"{p50:.2f} | {p95:.2f} | {max(values):.2f}"


def headline(series: list[Series]) -> list[str]:
    lines = [
        "| app database | what | runs ok / sent | p50 s | p95 s | max s | p50 ratio "
        "| p95 ratio | load before → after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in series:
        scan = [r.span("t0", "done") for r in s.ok("scan")]
        floor = [r.span("t0", "done") for r in s.ok("floor")]
        ratio50 = ratio95 = "–"
        if scan and floor:
            ratio50 = f"{helpers.percentile(scan, 0.5) / helpers.percentile(floor, 0.5):.2f}×"
            ratio95 = f"**{helpers.percentile(scan, 0.95) / helpers.percentile(floor, 0.95):.2f}×**"
        load = f"{s.load_before} → {s.load_after}"
        lines += [
            f"| {s.database} | scan: ACK → confirmation queued | {len(scan)} / {len(s.scans)} "
            f"| {_stats(scan)} | {ratio50} | {ratio95} | {load} |",
            f"| {s.database} | floor: event → empty flow completed | {len(floor)} / "
            f"{len(s.floors)} | {_stats(floor)} | | | |",
        ]
    return lines


SCAN_PARTS = (
    ("inbox row stored → ACK read by the sender", "received", "t0"),
    ("ACK (event emitted) → flow run created by the trigger", "t0", "created"),
    ("created → pending (warm worker poll picks it up)", "created", "pending"),
    ("pending → running (submission, worker label, flow engine set-up)", "pending", "running"),
    ("running → load-scan starts (flow set-up)", "running", "load-scan:start"),
    ("load-scan task", "load-scan:start", "load-scan:end"),
    ("decide task (classify, record the decision)", "decide:start", "decide:end"),
    (
        "book-and-finish task → the confirmation committed with the reminders",
        "book-and-finish:start",
        "done",
    ),
    ("gaps between these tasks (task-run orchestration, tags)", "", ""),
    ("confirmation row → flow run completed (finish, artifact)", "done", "completed"),
)
FLOOR_PARTS = (
    ("event → flow run created by the trigger", "t0", "created"),
    ("created → pending (runner poll picks it up)", "created", "pending"),
    ("pending → running (process start, imports, flow load)", "pending", "running"),
    ("running → completed (the empty body, exit)", "running", "completed"),
)
TASKS = ("load-scan", "decide", "book-and-finish")


def _gaps(record: Run) -> float:
    """Time between the end of one task and the start of the next, load-scan to booking
    (the run's tags are written in the gap after decide)."""
    return sum(
        record.marks[f"{later}:start"] - record.marks[f"{earlier}:end"]
        for earlier, later in pairwise(TASKS)
    )


def breakdown(s: Series) -> list[str]:
    scans = [r for r in s.ok("scan") if all(f"{t}:end" in r.marks for t in TASKS)]
    floors = s.ok("floor")
    lines = [
        f"### {s.database}: scan-completed ({len(scans)} runs)",
        "",
        "| part | p50 s | p95 s |",
        "|---|---:|---:|",
    ]
    for label, start, end in SCAN_PARTS:
        values = (
            [r.span(start, end) for r in scans if start in r.marks and end in r.marks]
            if start
            else [_gaps(r) for r in scans]
        )
        lines.append(f"| {label} | {_pair(values)} |")
    lines += [
        "",
        f"### {s.database}: the floor ({len(floors)} runs)",
        "",
        "| part | p50 s | p95 s |",
        "|---|---:|---:|",
    ]
    for label, start, end in FLOOR_PARTS:
        lines.append(f"| {label} | {_pair([r.span(start, end) for r in floors])} |")
    return lines


def _pair(values: list[float]) -> str:
    if not values:
        return "– | –"
    return f"{helpers.percentile(values, 0.5):.3f} | {helpers.percentile(values, 0.95):.3f}"


def write_report(
    arguments: argparse.Namespace,
    series: list[Series],
    startup: list[tuple[str, float, float]],
    machine: str,
    load_start: str,
    bytecode: str,
) -> str:
    command = ".venv/bin/python bench/bench_e2e.py " + " ".join(sys.argv[1:])
    lines = [
        "# End-to-end latency against Prefect's floor",
        "",
        f"- command: `{command.strip()}`",
        f"- machine: {machine}",
        f"- load average (1, 5, 15 min) at the start: {load_start}; at the end: {helpers.load()}"
        " (the machine is shared: other sessions' tests and benchmarks show here)",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Python bytecode: {bytecode}",
        f"- runs: {arguments.scans} scans and {arguments.scans} floor events per database, "
        f"alternating, one at a time, after {WARM_UP} completed warm-up runs of each (not "
        f"counted); pause 0.5–1.5 × {arguments.spacing:g} s after each",
        "- Prefect: a local server per database (`prefect server start`; "
        + helpers.prefect_database_note(arguments)
        + "); scan-completed runs in `followup serve`'s warm worker (polling every 0.25 s, "
        "each run inside that process), the floor in its runner (polling every 1 s, each run a "
        "new `python -m prefect.engine` process)",
        "",
        "Scan: from the ACK read by the sender (the gateway emits `ris.scan.completed` right "
        "after writing it) to the `created_at` of the confirmation SMS row (outbound_message, "
        "set in the flow-run process just before its commit). Floor: from the `occurred` of "
        "`bench.floor.fired` to the end of the empty flow's run, same trigger kind, same "
        "concurrency limit, a process per run. Ratio = scan / floor; targets p50 ≤ 1.0 s, "
        "p95 ≤ 2.0 s, ratio ≤ 0.5×.",
        "",
        "## Headline",
        "",
        *headline(series),
        "",
        "## Where the time goes (medians and p95 over the runs above)",
        "",
    ]
    for s in series:
        lines += [*breakdown(s), ""]
    if not startup:
        return "\n".join(lines)
    lines += [
        "## What a process-per-run flow run does before its first task",
        "",
        f"What the warm worker pays once. A fresh interpreter per probe, median of "
        f"{arguments.startup_rounds}, run after the series (no server involved):",
        "",
        "| probe | wall s | CPU s |",
        "|---|---:|---:|",
        *[f"| {label} | {wall:.2f} | {cpu:.2f} |" for label, wall, cpu in startup],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=40, help="measured scans (and floors)")
    parser.add_argument("--spacing", type=float, default=2.0, help="mean pause between runs, s")
    parser.add_argument("--timeout", type=float, default=180.0, help="per flow run, s")
    parser.add_argument("--startup-rounds", type=int, default=3)
    parser.add_argument("--postgres-url", help="also measure with a PostgreSQL app database")
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=["sqlite", "postgresql"],
        default=["sqlite", "postgresql"],
        help="app databases to measure (postgresql only with --postgres-url); for quick A/B runs",
    )
    parser.add_argument("--output", type=Path, default=helpers.RESULTS / "e2e.md")
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    helpers.add_bytecode_arguments(parser)
    helpers.add_prefect_server_database_argument(parser)
    arguments = parser.parse_args()
    helpers.check_prefect_server_database(parser, arguments)
    if "postgresql" in arguments.databases and not arguments.postgres_url:
        arguments.databases.remove("postgresql")
    if not arguments.databases:
        parser.error("--databases postgresql needs --postgres-url")
    helpers.stop_cleanly_on_sigterm()
    bytecode = helpers.use_bytecode_cache(arguments.bytecode_cache)
    load_start = helpers.load()
    machine = helpers.machine(arguments.postgres_url)
    kinds = arguments.databases

    def publish(series: list[Series], startup: list[tuple[str, float, float]]) -> str:
        """The report so far, rewritten after each series: a run stopped early keeps its rows."""
        report = write_report(arguments, series, startup, machine, load_start, bytecode)
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(report)
        return report

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as folder:
        from followup.settings import get_settings

        work = arguments.log_dir or Path(folder)
        pool = helpers.report_pool(get_settings())
        series: list[Series] = []
        for kind in kinds:
            series.append(run_series(kind, arguments, pool, work))
            publish(series, [])
        report = publish(series, startup_profile(arguments.startup_rounds))
    print(report)
    print(f"written to {arguments.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
