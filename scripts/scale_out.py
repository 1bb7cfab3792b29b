"""Scale-out on one machine: two warm workers sharing one Prefect server, one stream of scans.

    .venv/bin/python scripts/scale_out.py [--scans 60] [--spacing 0.5]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

What it starts, all on 127.0.0.1, and stops at the end (the databases are dropped):

* a Prefect server (`prefect server start`) on a fresh PostgreSQL database `scale_prefect_<ts>`
  (PREFECT_API_DATABASE_CONNECTION_URL, asyncpg), a throwaway PREFECT_HOME;
* the application on a fresh PostgreSQL database `bench_<ts>`, migrated, with a generated
  clinic (ten providers in two practices, five weeks of slots);
* the `followup-warm` pool (as `followup warm-worker` creates it), the `followup` process
  pool, and every deployment of prefect.yaml registered with `prefect --no-prompt deploy --all`
  exactly as an operator would: scan-completed on the warm pool, the others on `followup`;
* two `followup warm-worker --limit 4` processes (logs scale-warm-a, scale-warm-b), each with
  a PREFECT_HOME of its own, as on two hosts: they run every scan-completed run between them;
* one `prefect worker start --pool followup` process (scale-process-worker) for the
  minute-by-minute flows, polling every two seconds;
* the gateways in their own process (`followup gateway`: MLLP and HTTP, no flows), emitting
  `ris.scan.completed` to the server.

Then it sends `--scans` generated ORU^R01 results over one MLLP connection, `--spacing` seconds
apart, waits until the inbox has drained and every scan-completed run has finished, and prints
the counts: scans in, inbox rows, flow runs per worker, appointments and outbound messages
(each against what the processed rows' summaries say) and duplicated work (must be 0).
Generated messages come from bench/_helpers.py, the same generator the benchmarks use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from bench import _helpers as helpers  # noqa: E402
from followup.gateway.serve import stop_process  # noqa: E402

POOL = "followup"
WARM_WORKERS = ("scale-warm-a", "scale-warm-b")
PROCESS_WORKER = "scale-process-worker"
# Adding up to scan-completed's concurrency limit (8): a worker that takes a run beyond it has
# the server send the run back to wait 30 s for a slot (docs/deploy.md).
RUNS_PER_WARM_WORKER = 4
WORKER_LOGS = (*WARM_WORKERS, PROCESS_WORKER)
CREATE_WARM_POOL = """
import asyncio
from prefect import get_client
from followup.warm_worker import WARM_POOL, ensure_pool

async def create() -> None:
    async with get_client() as client:
        await ensure_pool(client, WARM_POOL)

asyncio.run(create())
"""
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PENDING_INBOX = ("received", "processing")
PREFECT = str(Path(sys.executable).with_name("prefect"))


# --- setup -------------------------------------------------------------------------------------


@contextmanager
def prefect_database(base_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the Prefect server; its asyncpg URL. Dropped after."""
    from sqlalchemy import create_engine, make_url, text

    name = f"scale_prefect_{datetime.now(UTC):%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(base_url)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def process(command: list[str], *, env: dict[str, str], log: Path) -> Iterator[None]:
    """A child process logging to `log`; SIGTERM at the end, SIGKILL if it lingers."""
    with log.open("wb") as output:
        child = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            yield
        finally:
            stop_process(child, timeout=60)


def wait_for_api(api_url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server did not answer within {timeout:.0f} s")


def prefect_cli(*arguments: str, env: dict[str, str]) -> None:
    subprocess.run(
        [PREFECT, "--no-prompt", *arguments],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


# --- reading back ------------------------------------------------------------------------------


def flow_runs(api_url: str) -> list[dict[str, Any]]:
    import httpx

    runs: list[dict[str, Any]] = []
    while True:
        page = httpx.post(
            f"{api_url}/flow_runs/filter", json={"limit": 200, "offset": len(runs)}, timeout=30
        ).json()
        runs += page
        if len(page) < 200:
            return runs


def flow_names(api_url: str) -> dict[str, str]:
    import httpx

    flows = httpx.post(f"{api_url}/flows/filter", json={}, timeout=30).json()
    return {flow["id"]: flow["name"] for flow in flows}


def inbox_statuses(database_url: str) -> Counter[str]:
    from sqlalchemy import func
    from sqlmodel import col, select

    from models.db import session_scope
    from models.tables import InboxMessage

    with session_scope(database_url) as session:
        rows = session.exec(
            select(InboxMessage.status, func.count()).group_by(col(InboxMessage.status))
        ).all()
    return Counter({status: int(count) for status, count in rows})


def application_counts(database_url: str) -> dict[str, int]:
    """What the engine did, what the processed rows' summaries say it did, and work done twice
    (a second live decision, follow-up or message for the same thing)."""
    from sqlalchemy import func
    from sqlalchemy import select as sql_select
    from sqlmodel import col, select

    from models.db import session_scope
    from models.tables import (
        ACTIVE_APPOINTMENT_STATUSES,
        Appointment,
        Decision,
        Escalation,
        InboxMessage,
        OutboundMessage,
    )

    def doubled(session: Any, columns: list[Any], where: Any) -> int:
        groups = session.execute(
            sql_select(*columns, func.count())
            .where(where)
            .group_by(*columns)
            .having(func.count() > 1)
        ).all()
        return sum(int(group[-1]) - 1 for group in groups)

    def count(session: Any, column: Any) -> int:
        return int(session.exec(select(func.count(column))).one())

    with session_scope(database_url) as session:
        summaries = [s for s in session.exec(select(InboxMessage.summary)) if s is not None]
        return {
            "appointments": count(session, col(Appointment.id)),
            "appointments in summaries": sum(1 for s in summaries if s.get("appointment")),
            "messages": count(session, col(OutboundMessage.id)),
            "messages in summaries": sum(len(s.get("scheduled_messages", [])) for s in summaries),
            "escalations": count(session, col(Escalation.id)),
            "duplicates": doubled(
                session,
                [col(Decision.study_id)],
                col(Decision.superseded_at).is_(None),
            )
            + doubled(
                session,
                [col(Appointment.study_id), col(Appointment.kind)],
                col(Appointment.status).in_(ACTIVE_APPOINTMENT_STATUSES),
            )
            + doubled(
                session,
                [
                    col(OutboundMessage.appointment_id),
                    col(OutboundMessage.kind),
                    col(OutboundMessage.scheduled_for),
                ],
                col(OutboundMessage.appointment_id).is_not(None),
            ),
        }


# --- the run -----------------------------------------------------------------------------------


def wait_until_drained(
    database_url: str, api_url: str, scans: int, timeout: float
) -> tuple[Counter[str], list[dict[str, Any]]]:
    """Every scan stored and finished, and no scan-completed run left to finish."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = inbox_statuses(database_url)
        names = flow_names(api_url)
        scan_runs = [r for r in flow_runs(api_url) if names.get(r["flow_id"]) == "scan-completed"]
        busy = sum(statuses[s] for s in PENDING_INBOX)
        unfinished = sum(1 for r in scan_runs if r["state_type"] not in TERMINAL)
        if statuses.total() >= scans and busy == 0 and unfinished == 0:
            return statuses, scan_runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"not drained: inbox {dict(statuses)}, {unfinished} runs running")
        print(f"  inbox {dict(statuses)}; scan-completed runs unfinished: {unfinished}")
        time.sleep(5)


def aborted_submissions(folder: Path, worker: str) -> int:
    """Runs this worker tried to start after the other had: the server refused the second
    claim (PENDING → PENDING), which is why two workers never run one flow run twice."""
    log = (folder / f"{worker}.log").read_text(errors="replace")
    return sum(
        "Aborted submission" in line and "cannot transition to a PENDING state" in line
        for line in log.splitlines()
    )


def report(
    *,
    arguments: argparse.Namespace,
    folder: Path,
    acked: int,
    statuses: Counter[str],
    scan_runs: list[dict[str, Any]],
    all_runs: list[dict[str, Any]],
    names: dict[str, str],
    counts: dict[str, int],
    seconds: float,
) -> str:
    # Warm workers name themselves warm-<host>-<pid>: grouped by the label each run carries.
    per_worker: dict[str, Counter[str]] = {}
    for run in all_runs:
        worker = run.get("labels", {}).get("prefect.worker.name")
        if worker is not None and run["state_type"] == "COMPLETED":
            per_worker.setdefault(worker, Counter())[names.get(run["flow_id"], "?")] += 1
    runs_per_row = Counter(run["parameters"].get("inbox_id") for run in scan_runs)
    by_status = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    lines = [
        f"{arguments.scans} scans, one MLLP connection, {arguments.spacing} s apart; "
        f"drained {seconds:.0f} s after the first was sent.",
        "",
        "| count | value |",
        "|---|---|",
        f"| scans sent / ACK AA | {arguments.scans} / {acked} |",
        f"| inbox rows | {statuses.total()} ({by_status}) |",
        f"| scan-completed runs: completed / all | "
        f"{sum(r['state_type'] == 'COMPLETED' for r in scan_runs)} / {len(scan_runs)} |",
    ]
    for worker, flows in sorted(per_worker.items()):
        detail = ", ".join(f"{name} {n}" for name, n in sorted(flows.items()))
        lines.append(f"| runs completed by {worker} | {sum(flows.values())} ({detail}) |")
    for log in WORKER_LOGS:
        lines.append(
            f"| runs {log} reached for after another worker had them (refused) | "
            f"{aborted_submissions(folder, log)} |"
        )
    lines += [
        f"| appointments / in summaries | {counts['appointments']} / "
        f"{counts['appointments in summaries']} |",
        f"| outbound messages / in summaries | {counts['messages']} / "
        f"{counts['messages in summaries']} |",
        f"| escalations | {counts['escalations']} |",
        f"| scan-completed runs for an already-run row | "
        f"{sum(n - 1 for n in runs_per_row.values())} |",
        f"| duplicated decisions, follow-ups, messages | {counts['duplicates']} |",
    ]
    return "\n".join(lines)


def run(arguments: argparse.Namespace) -> str:
    from followup.settings import get_settings

    folder = Path(tempfile.mkdtemp(prefix="followup-scale-"))
    for name in [n for n in os.environ if n.startswith(("TWILIO_", "PREFECT_"))]:
        del os.environ[name]  # dry-run SMS; nothing from the caller's Prefect profile
    with ExitStack() as stack:
        prefect_url = stack.enter_context(prefect_database(arguments.postgres_url))
        app_url = stack.enter_context(helpers.postgres_database(arguments.postgres_url))
        os.environ.update(
            {
                "PREFECT_HOME": str(folder / "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_API_DATABASE_CONNECTION_URL": prefect_url,
                "DATABASE_URL": app_url,
                "FOLLOWUP_HOME": str(ROOT),
                "PREFECT_WORKER_QUERY_SECONDS": "2",
            }
        )
        settings = get_settings()
        print("seeding the clinic and generating scans ...")
        npis = helpers.seed_clinic(app_url, settings, providers=10)
        scans = helpers.generate_scans(
            arguments.scans,
            pool=helpers.report_pool(settings),
            npis=npis,
            settings=settings,
            seed="scale-out",
        )
        print("starting the Prefect server on PostgreSQL ...")
        port = helpers.free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        stack.enter_context(
            process(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=dict(os.environ),
                log=folder / "prefect-server.log",
            )
        )
        wait_for_api(api_url)
        os.environ["PREFECT_API_URL"] = api_url
        env = dict(os.environ)
        prefect_cli("work-pool", "create", POOL, "--type", "process", env=env)
        subprocess.run([sys.executable, "-c", CREATE_WARM_POOL], env=env, cwd=ROOT, check=True)
        prefect_cli("deploy", "--all", env=env)
        for worker in WARM_WORKERS:
            home = folder / worker
            home.mkdir()
            stack.enter_context(
                process(
                    [
                        str(Path(sys.executable).with_name("followup")),
                        "warm-worker",
                        "--limit",
                        str(RUNS_PER_WARM_WORKER),
                    ],
                    env={**env, "PREFECT_HOME": str(home)},
                    log=folder / f"{worker}.log",
                )
            )
        stack.enter_context(
            process(
                [PREFECT, "worker", "start", "--pool", POOL, "--name", PROCESS_WORKER],
                env=env,
                log=folder / f"{PROCESS_WORKER}.log",
            )
        )
        mllp_port = helpers.free_port()
        stack.enter_context(
            process(
                [str(Path(sys.executable).with_name("followup")), "gateway"],
                env={
                    **env,
                    "FOLLOWUP_MLLP_PORT": str(mllp_port),
                    "FOLLOWUP_HTTP_PORT": str(helpers.free_port()),
                },
                log=folder / "gateway.log",
            )
        )
        while not helpers.listening(mllp_port):
            time.sleep(0.5)
        print(f"sending {len(scans)} scans (logs in {folder}) ...")
        started = time.monotonic()
        sender = helpers.MLLPSender(mllp_port)
        acked = 0
        for scan in scans:
            sender.send(scan.raw)  # raises unless the gateway answered AA
            acked += 1
            time.sleep(arguments.spacing)
        sender.close()
        statuses, scan_runs = wait_until_drained(app_url, api_url, len(scans), arguments.timeout)
        seconds = time.monotonic() - started
        table = report(
            arguments=arguments,
            folder=folder,
            acked=acked,
            statuses=statuses,
            scan_runs=scan_runs,
            all_runs=flow_runs(api_url),
            names=flow_names(api_url),
            counts=application_counts(app_url),
            seconds=seconds,
        )
    if not arguments.keep_logs:
        shutil.rmtree(folder)  # kept when something failed: the logs say what
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=60)
    parser.add_argument("--spacing", type=float, default=0.5, help="seconds between scans")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to drain")
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs folder")
    arguments = parser.parse_args()
    print(run(arguments))


if __name__ == "__main__":
    main()
