"""Benchmark the EHR outbox: 1,000 SIU messages drained to a local MLLP listener.

    python bench/bench_outbox.py [--messages 1000] [--batch 100] [--postgres-url URL]
                                 [--no-write]

Each message is a visit booked through the production hook (`record_visit_change`, in the
booking's transaction), then the production dispatcher (claim, build the SIU^S12, one MLLP
connection per batch, ACK read and matched, result recorded) drains the outbox to the test
EHR of tools/fake_ehr.py, a real MLLP listener on 127.0.0.1 answering AA. Reported:
throughput (messages per second from the first claim to the last recorded result), and the
per-message exchange latency (frame written → its ACK read and judged) p50/p99, plus the
database share (build + record) per message. Checked: every message reached the listener
once, every row is done.

Results go to bench/results/outbox.md unless --no-write (load average before and after: the
machine is shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from sqlmodel import col, select  # noqa: E402

from followup.ehr.transport import MllpTransport, Outgoing, Result, Transport  # noqa: E402
from followup.ris.mllp_framing import FrameDecoder  # noqa: E402
from followup.services.ehr_dispatch import Destination, EhrDispatcher, EhrPolicy  # noqa: E402
from followup.settings import get_settings  # noqa: E402
from models.db import migrate, session_scope  # noqa: E402
from models.ehr_outbox import VisitChange, record_visit_change  # noqa: E402
from models.tables import (  # noqa: E402
    Appointment,
    EhrOutboxMessage,
    Patient,
    Provider,
    Slot,
)
from tools.fake_ehr import fake_ehr  # noqa: E402

START = datetime(2026, 12, 14, 14, 0, tzinfo=UTC)
EXCHANGES: list[float] = []


class TimedMllp(MllpTransport):
    """The production MLLP client, each exchange (write → ACK judged) timed."""

    def _exchange(self, sock: socket.socket, decoder: FrameDecoder, message: Outgoing) -> Result:
        began = time.perf_counter()
        result = super()._exchange(sock, decoder, message)
        EXCHANGES.append(time.perf_counter() - began)
        return result


def seed(database_url: str, messages: int) -> None:
    """One provider, `messages` patients each with a visit booked through the hook."""
    with session_scope(database_url) as session:
        provider = Provider(
            npi="1000000001", family_name="Bench", practice="Bench", timezone="America/New_York"
        )
        session.add(provider)
        session.flush()
        assert provider.id is not None
        for number in range(messages):
            patient = Patient(mrn=f"B{number:07d}", family_name="Patient", given_name=f"N{number}")
            start = START + timedelta(minutes=30 * number)
            slot = Slot(provider_id=provider.id, start=start, end=start + timedelta(minutes=30))
            session.add_all([patient, slot])
            session.flush()
            assert patient.id is not None and slot.id is not None
            visit = Appointment(
                patient_id=patient.id,
                provider_id=provider.id,
                slot_id=slot.id,
                start=start,
                status="booked",
            )
            session.add(visit)
            session.flush()
            record_visit_change(session=session, appointment=visit, change=VisitChange.BOOKED)


def run(database_url: str, messages: int, batch: int) -> dict[str, object]:
    migrate(database_url)
    seed(database_url, messages)
    EXCHANGES.clear()
    with fake_ehr() as ehr:
        settings = get_settings(database_url=database_url, ehr_mllp=ehr.address)
        policy = EhrPolicy(batch_size=batch, ack_timeout=10)

        def transports(destination: Destination) -> Transport:
            return TimedMllp.at(destination.address, connect_timeout=5, ack_timeout=10)

        dispatcher = EhrDispatcher(settings=settings, transports=transports, policy=policy)
        began = time.perf_counter()
        report = dispatcher.run()
        seconds = time.perf_counter() - began
        received, kept = len(ehr.received), len(ehr.accepted)
        connections = ehr.connections
    with session_scope(database_url) as session:
        statuses = list(
            session.exec(select(EhrOutboxMessage.status).order_by(col(EhrOutboxMessage.id)))
        )
    exchanges = sorted(EXCHANGES)
    return {
        "messages": messages,
        "done": statuses.count("done"),
        "received": received,
        "kept": kept,
        "connections": connections,
        "seconds": seconds,
        "per_second": messages / seconds,
        "exchange_p50_ms": 1000 * statistics.median(exchanges),
        "exchange_p99_ms": 1000 * exchanges[int(0.99 * (len(exchanges) - 1))],
        "per_message_ms": 1000 * seconds / messages,
        "database_per_message_ms": 1000 * (seconds - sum(exchanges)) / messages,
        "report": report.as_dict(),
    }


def _load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--postgres-url", default=os.environ.get("FOLLOWUP_BENCH_POSTGRES_URL"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    load_before = _load()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        results.append(("SQLite", run(f"sqlite:///{folder}/bench.db", args.messages, args.batch)))
    if args.postgres_url:
        from tests.conftest import _postgres_schema_url

        for url in _postgres_schema_url(args.postgres_url):
            results.append(("PostgreSQL", run(url, args.messages, args.batch)))
    load_after = _load()
    lines = [
        "# EHR outbox: SIU^S12 drained to a local MLLP listener",
        "",
        f"- when: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- load average (1/5/15 min) before: {load_before}, after: {load_after}",
        f"- command: `.venv/bin/python bench/bench_outbox.py --messages {args.messages} "
        f"--batch {args.batch}{' --postgres-url URL' if args.postgres_url else ''}`",
        "",
        "| database | messages | done | at the EHR (kept) | connections | seconds | msg/s | "
        "exchange p50 / p99 ms | per message ms (database share) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results:
        lines.append(
            f"| {name} | {result['messages']} | {result['done']} | {result['received']} "
            f"({result['kept']}) | {result['connections']} | {result['seconds']:.2f} | "
            f"{result['per_second']:.0f} | {result['exchange_p50_ms']:.2f} / "
            f"{result['exchange_p99_ms']:.2f} | {result['per_message_ms']:.2f} "
            f"({result['database_per_message_ms']:.2f}) |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    for _, result in results:
        assert result["done"] == result["received"] == result["kept"] == result["messages"]
    if not args.no_write:
        (ROOT / "bench" / "results" / "outbox.md").write_text(text)


if __name__ == "__main__":
    main()
