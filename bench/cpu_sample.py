"""CPU per process kind while a replay runs, from /proc: who spends the CPU-s of a scan.

    python bench/cpu_sample.py OUT.jsonl [--every 1.0]        # until SIGTERM/Ctrl-C
    python bench/cpu_sample.py --report OUT.jsonl --scans N [--from T0] [--to T1]

Every `--every` seconds one JSON line: the time and, for every process on the machine, its
kind and its cumulative user+system CPU (clock ticks). The kinds: the Prefect server (API and
its background services, one process), the engine (`_serve.py`: MLLP/HTTP gateway and the
runner), the warm worker, flow-run subprocesses of the runner, the bench driver, PostgreSQL
backends by database (the Prefect server's `bench_prefect_*`, the application's `bench_*`),
PostgreSQL's own processes, and everything else (other sessions on the machine).

`--report` sums each process's CPU between two sample times (default: the first and last
line), grouped by kind, per scan. A process seen for the first time inside the window counts
from 0; one that exits loses at most its last interval.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
MEASUREMENT = "measurement (sampler, py-spy)"


def kind_of(cmdline: str, comm: str) -> str:
    if cmdline.startswith("postgres:"):
        # "postgres: 15/main: USER DATABASE HOST(PORT) STATE"
        database = next((w for w in cmdline.split()[2:4] if w.startswith("bench_")), "")
        if database.startswith("bench_prefect_"):
            return "postgres backend: Prefect DB"
        if database:
            return "postgres backend: app DB"
        return "postgres: own processes/other DBs"
    if comm == "postgres":
        return "postgres: own processes/other DBs"
    if "prefect server start" in cmdline or "prefect server services" in cmdline:
        return "Prefect server (API + services)"
    if "bench/_serve.py" in cmdline:
        return "engine (gateway + runner)"
    if "warm-worker" in cmdline:
        return "warm worker"
    if "prefect.engine" in cmdline or "prefect/engine.py" in cmdline:
        return "runner flow-run subprocess"
    if "bench_replay.py" in cmdline or "bench_throughput.py" in cmdline:
        return "bench driver"
    if "cpu_sample.py" in cmdline or "py-spy" in cmdline:
        return MEASUREMENT
    return "other"


def snapshot() -> dict[str, tuple[str, int]]:
    seen: dict[str, tuple[str, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        seen[entry.name] = (kind_of(cmdline.decode(errors="replace").strip(), comm), ticks)
    return seen


def database_counters(url: str) -> dict[str, list[float]]:
    """Per bench database: sessions opened, commits, rollbacks, seconds active (pg_stat)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT datname, sessions, xact_commit, xact_rollback, active_time / 1000 "
            "FROM pg_stat_database WHERE datname LIKE 'bench%'"
        ).fetchall()
    return {name: [float(v) for v in values] for name, *values in rows}


def sample(out: Path, every: float, pg: str | None) -> None:
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with out.open("a") as file:
        while running:
            line = {"t": time.time(), "p": snapshot()}
            if pg:
                try:
                    line["db"] = database_counters(pg)
                except Exception as error:  # the database may be gone between two samples
                    line["db_error"] = str(error)
            file.write(json.dumps(line) + "\n")
            file.flush()
            time.sleep(every)


def report(path: Path, scans: int, start: float | None, end: float | None) -> str:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    window = [
        s for s in lines if (start is None or s["t"] >= start) and (end is None or s["t"] <= end)
    ]
    first: dict[str, int] = {pid: ticks for pid, (_, ticks) in window[0]["p"].items()}
    last: dict[str, tuple[str, int]] = {}
    for s in window:
        for pid, (kind, ticks) in s["p"].items():
            # The first kind that names it: an exiting process's cmdline reads empty.
            named = last[pid][0] if pid in last and last[pid][0] != "other" else kind
            last[pid] = (named, ticks)
    per_kind: defaultdict[str, float] = defaultdict(float)
    for pid, (kind, ticks) in last.items():
        per_kind[kind] += (ticks - first.get(pid, 0)) / TICKS
    seconds = window[-1]["t"] - window[0]["t"]
    apart = ("other", MEASUREMENT)  # not the replay's: other sessions, and this measurement
    total = sum(v for k, v in per_kind.items() if k not in apart)
    rows = [
        f"window {seconds:.0f} s, {scans} scans; CPU-s per scan (share of the replay's processes):",
        "| process | CPU-s | CPU-s per scan | share | cores busy |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, value in sorted(per_kind.items(), key=lambda item: -item[1]):
        share = f"{100 * value / total:.0f} %" if kind not in apart else "-"
        rows.append(
            f"| {kind} | {value:.1f} | {value / scans:.3f} | {share} | {value / seconds:.2f} |"
        )
    rows.append(
        f"| the replay's processes | {total:.1f} | {total / scans:.3f} | 100 % "
        f"| {total / seconds:.2f} |"
    )
    databases: dict[str, list[float]] = {}
    for s in window:
        for name, values in s.get("db", {}).items():
            databases.setdefault(name, values)
            databases[name + " (last)"] = values
    if databases:
        rows += ["", "| database | sessions opened | commits | rollbacks | active s |"]
        rows.append("|---|---:|---:|---:|---:|")
        for name in sorted(n for n in databases if not n.endswith(" (last)")):
            a, b = databases[name], databases[name + " (last)"]
            rows.append(
                f"| {name} | "
                + " | ".join(f"{y - x:.0f}" for x, y in zip(a, b, strict=True))
                + " |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--pg", help="also record pg_stat_database of bench_* (a libpq URL)")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--scans", type=int, default=1)
    parser.add_argument("--from", dest="start", type=float)
    parser.add_argument("--to", dest="end", type=float)
    arguments = parser.parse_args()
    if arguments.report:
        print(report(arguments.out, arguments.scans, arguments.start, arguments.end))
    else:
        sample(arguments.out, arguments.every, arguments.pg)


if __name__ == "__main__":
    main()
