"""MLLP gateway benchmark: ACK latency and throughput, engine vs a bare python-hl7 server.

    .venv/bin/python bench/bench_mllp.py [--messages 5000] [--connections 4] [--rate 100]

Each server runs in its own process (so the client's work does not share its event loop) on
127.0.0.1: a bare python-hl7 asyncio server that parses and ACKs and stores nothing, then the
engine's MLLP listener on a fresh SQLite file and, when FOLLOWUP_BENCH_POSTGRES_URL is set
(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test), on a fresh PostgreSQL schema. The
engine's event callback is a no-op here: emitting only queues the event for Prefect's
background sender, and a Prefect server is not what this measures.

Two phases per server, each sending `--messages` distinct ORU^R01 (a project sample with its
own MSH-10 and accession) over `--connections` connections, one message in flight per
connection (a sender waits for each ACK, as MLLP senders do):
  * paced: `--rate` messages/s in total, the issue's latency target (p99 ≤ 20 ms at 100/s);
  * flood: as fast as the server answers, for throughput.
Latency is from the first byte sent to the whole ACK received. After each engine phase the
inbox row count must equal the messages sent. Results: a markdown table on stdout and in
bench/results/mllp.md, with the machine and the command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "tests" / "samples" / "hl7" / "spine_pain_degenerative.hl7"
RESULTS = ROOT / "bench" / "results" / "mllp.md"
VT, FS_CR = b"\x0b", b"\x1c\r"


# --- the servers (run in a child process: `bench_mllp.py serve bare|engine URL`) ------------


async def _serve_bare() -> None:
    import hl7
    from hl7.mllp import start_hl7_server

    async def answer(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                writer.writemessage(message.create_ack())
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    server = await start_hl7_server(answer, "127.0.0.1", 0, encoding="utf-8")
    await _announce_and_wait(server.sockets[0].getsockname()[1])


async def _serve_engine(database_url: str) -> None:
    from followup.gateway.mllp import MLLPListener
    from followup.settings import get_settings

    listener = MLLPListener(get_settings(database_url=database_url), on_accepted=lambda r: None)
    await listener.start("127.0.0.1", 0)
    await _announce_and_wait(listener.port)


async def _announce_and_wait(port: int) -> None:
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF


@contextmanager
def server_process(kind: str, database_url: str = "") -> Iterator[int]:
    process = subprocess.Popen(
        [sys.executable, __file__, "serve", kind, database_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        yield int(process.stdout.readline())
    finally:
        process.stdin.close()  # EOF: the server exits
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the client -------------------------------------------------------------------------------


def messages(count: int, run: str) -> list[bytes]:
    raw = SAMPLE.read_bytes()
    return [
        raw.replace(b"DEMO-ORU-0003", f"{run}-{n:06d}".encode()).replace(
            b"ACC2026000103", f"{run}{n:07d}".encode()
        )
        for n in range(count)
    ]


@dataclass
class Phase:
    latencies: list[float]
    seconds: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def send_all(port: int, batch: list[bytes], connections: int, rate: float | None) -> Phase:
    """Send `batch` over `connections` connections; `rate` msgs/s in total, or None: flood."""
    from hl7.mllp import open_hl7_connection

    latencies: list[float] = []
    started = time.perf_counter()
    interval = connections / rate if rate else 0.0
    done = 0

    async def connection(share: list[bytes], offset: float) -> None:
        nonlocal done
        reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
        next_send = time.perf_counter() + offset
        for message in share:
            if interval:
                await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
                next_send += interval
            sent = time.perf_counter()
            writer.writeblock(message)
            await writer.drain()
            ack = await reader.readblock()
            latencies.append(time.perf_counter() - sent)
            if b"MSA|AA|" not in ack:
                raise RuntimeError(f"not accepted: {ack[:200]!r}")
            done += 1
            if done % 500 == 0:
                print(f"    {done}/{len(batch)}", file=sys.stderr, flush=True)
        writer.close()
        await writer.wait_closed()

    shares = [batch[i::connections] for i in range(connections)]
    await asyncio.gather(
        *(connection(share, i * interval / connections) for i, share in enumerate(shares))
    )
    return Phase(latencies, time.perf_counter() - started)


def inbox_rows(database_url: str) -> int:
    from sqlalchemy import text

    from models.db import get_engine

    with get_engine(database_url).connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM inbox_message")).scalar_one())


# --- databases --------------------------------------------------------------------------------


@contextmanager
def sqlite_database() -> Iterator[str]:
    from models.db import migrate

    with tempfile.TemporaryDirectory(prefix="bench-mllp-") as folder:
        url = f"sqlite:///{folder}/followup.db"
        migrate(url)
        yield url


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    from models.db import migrate

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base_url else "?"
    url = f"{base_url}{separator}options=-csearch_path%3D{schema}"
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# --- the report -------------------------------------------------------------------------------


def machine() -> str:
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
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs{memory}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; SQLite "
        f"{sqlite3.sqlite_version}"
    )


def _load(averages: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.1f}" for value in averages)


def table(rows: list[tuple[str, str, Phase]]) -> str:
    lines = [
        "| server | load | messages | p50 ms | p95 ms | p99 ms | max ms | messages/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for server, load, phase in rows:
        lines.append(
            f"| {server} | {load} | {len(phase.latencies)} | {phase.percentile(50):.2f} | "
            f"{phase.percentile(95):.2f} | {phase.percentile(99):.2f} | "
            f"{max(phase.latencies) * 1000:.2f} | {phase.throughput:.0f} |"
        )
    return "\n".join(lines)


def run(arguments: argparse.Namespace) -> None:
    postgres_url = os.environ.get("FOLLOWUP_BENCH_POSTGRES_URL")
    rows: list[tuple[str, str, Phase]] = []
    load_before = os.getloadavg()
    paced = f"paced {arguments.rate:g}/s"

    def measure(name: str, kind: str, database_url: str = "") -> None:
        for load, rate in ((paced, arguments.rate), ("flood", None)):
            print(f"{name}, {load}:", file=sys.stderr, flush=True)
            before = inbox_rows(database_url) if database_url else 0
            with server_process(kind, database_url) as port:
                run_id = f"{kind[0].upper()}{load[0].upper()}{uuid.uuid4().hex[:6]}"
                batch = messages(arguments.messages, run_id)
                phase = asyncio.run(send_all(port, batch, arguments.connections, rate))
            if database_url:
                stored = inbox_rows(database_url) - before
                if stored != arguments.messages:
                    raise SystemExit(f"{name}: {stored} inbox rows for {arguments.messages} sent")
            rows.append((name, load, phase))

    measure("bare python-hl7 (ACK only)", "bare")
    with sqlite_database() as url:
        measure("engine, SQLite", "engine", url)
    if postgres_url:
        with postgres_database(postgres_url) as url:
            measure("engine, PostgreSQL", "engine", url)
    else:
        print("FOLLOWUP_BENCH_POSTGRES_URL not set: PostgreSQL skipped", file=sys.stderr)

    result = table(rows)
    print(result)
    command = " ".join(
        [
            *([f"FOLLOWUP_BENCH_POSTGRES_URL={shlex.quote(postgres_url)}"] if postgres_url else []),
            ".venv/bin/python bench/bench_mllp.py",
            *sys.argv[1:],
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# MLLP gateway benchmark\n\n"
        f"{arguments.messages} ORU^R01 messages per row over {arguments.connections} concurrent "
        "MLLP connections (one message in flight per connection), 127.0.0.1; latency from the "
        "first byte sent to the whole ACK received. Every engine row also checks that the inbox "
        "holds one row per message sent.\n\n"
        f"- command: `{command}`\n"
        f"- machine: {machine()}\n"
        f"- load average (1, 5, 15 min) before: {_load(load_before)}, after: "
        f"{_load(os.getloadavg())} (other work on the machine shows here)\n"
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"{result}\n"
    )
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        kind, database_url = sys.argv[2], sys.argv[3]
        asyncio.run(_serve_bare() if kind == "bare" else _serve_engine(database_url))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0, help="paced phase, messages/s")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
