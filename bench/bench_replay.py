"""Replay: a RIS reconnecting after an outage sends a backlog of scans; how long until drained.

    .venv/bin/python bench/bench_replay.py --postgres-url URL [--scans 10000] [--rate 20]
        [--timeout 14400] [--output bench/results/replay.md]

The same replay as bench_throughput.py's "through Prefect" (generated ORU^R01 in the same mix,
sent over MLLP at --rate per second to the engine as `followup serve` runs it, Prefect server
on PostgreSQL as in production, scan-completed's runs inside the warm worker), with its rich
progress bar of finished scans, and then the three figures that matter for a backlog: the time
from the first scan sent to the last one finished, lost (an accepted scan whose inbox row never
finished) and doubled (a second appointment or confirmation for one study). Both must be 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from bench import _helpers as helpers  # noqa: E402
from bench.bench_throughput import console, prefect_replay  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=20.0, help="scans/s sent (the backlog)")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="s, then stop")
    parser.add_argument("--postgres-url", required=True, help="for the app and Prefect's DB")
    parser.add_argument("--concurrency", type=int, help="override scan-completed's limit")
    parser.add_argument("--report-every", type=int, default=1000, help="log a count every N")
    parser.add_argument("--output", type=Path, default=helpers.RESULTS / "replay.md")
    parser.add_argument("--log-dir", type=Path, help="the servers' logs (default: in /tmp)")
    helpers.add_bytecode_arguments(parser)
    arguments = parser.parse_args()
    arguments.prefect_server_database = "postgresql"
    arguments.prefect_timeout = arguments.timeout
    helpers.stop_cleanly_on_sigterm()
    bytecode = helpers.use_bytecode_cache(arguments.bytecode_cache)
    from followup.settings import get_settings

    pool = helpers.report_pool(get_settings())
    folder = arguments.log_dir or Path(tempfile.mkdtemp(prefix="bench-replay-logs-"))
    replay = prefect_replay("postgresql", arguments, pool, count=arguments.scans, work=folder)
    drained = replay.done == arguments.scans
    lines = [
        "# Replay: a backlog of scans through Prefect",
        "",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- machine: {helpers.machine(arguments.postgres_url)}",
        f"- load average before → after: {replay.load_before} → {replay.load_after}",
        f"- Python bytecode: {bytecode}",
        "",
        f"**{replay.done} of {arguments.scans} scans finished in {replay.seconds:.0f} s "
        f"({replay.seconds / 60:.1f} min, {replay.rate:.2f} scans/s, steady "
        f"{replay.steady_rate():.2f}); {'drained' if drained else 'NOT drained'}; "
        f"{replay.cpu_seconds / max(1, replay.done):.3f} CPU-s per scan (Prefect server, "
        "engine, warm worker)**",
        "",
        *[f"- {note}" for note in replay.notes],
        "",
    ]
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text("\n".join(lines))
    print("\n".join(lines))
    console.log(f"written to {arguments.output}")


if __name__ == "__main__":
    main()
