"""Benchmark SMS dispatch: 1,000 due messages to the local Twilio contract mock at 50/s.

    python bench/bench_sms.py [--messages 1000] [--rate 50] [--night 100] [--workers N]
                              [--database-url URL] [--no-write]

The dispatcher (the production code path: claim, send-time checks, rate limiter, the official
twilio client through TwilioSender) sends to Prism serving Twilio's OpenAPI spec, which
validates every request. Besides the `--messages` patients whose local time is inside
08:00–20:00, `--night` patients live in zones where it is night: their messages must be
deferred, not sent. The send-time checks run on a clock that starts at a fixed instant (Tue
2026-12-08 19:00 UTC) and advances in real time, so the result does not depend on when the
benchmark runs and a retried message comes due again within the run.

Targets: achieved rate within 5% of the limit, zero duplicates, zero sends outside quiet hours.
Results go to bench/results/sms.md (machine, command, numbers) unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from sqlmodel import col, select  # noqa: E402

from followup.core.messaging.policy import is_send_allowed  # noqa: E402
from followup.messaging.sender import (  # noqa: E402
    OutgoingSms,
    SendReceipt,
    TwilioSender,
    build_twilio_client,
)
from followup.services.dispatch import Dispatcher, DispatchPolicy, Outcome  # noqa: E402
from followup.settings import get_settings  # noqa: E402
from models.db import migrate, session_scope  # noqa: E402
from models.tables import OutboundMessage, Patient  # noqa: E402
from tools.prism import ACCOUNT_SID, AUTH_TOKEN, running_prism  # noqa: E402

NOW = datetime(2026, 12, 8, 19, 0, tzinfo=UTC)
DAY_ZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
    "America/Puerto_Rico",
    None,  # unknown: the strict all-US window, open at this instant
)
NIGHT_ZONES = ("Asia/Tokyo", "Europe/Berlin", "Australia/Sydney")
RESULTS = ROOT / "bench" / "results" / "sms.md"


@dataclass
class TimedSender:
    """The production TwilioSender, with the start time of every API call recorded."""

    inner: TwilioSender
    starts: list[float] = field(default_factory=list)
    sent_ids: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, sms: OutgoingSms) -> SendReceipt:
        with self.lock:
            self.starts.append(time.monotonic())
            self.sent_ids.append(sms.message_id)
        return self.inner.send(sms)


def seed(database_url: str, *, day: int, night: int) -> None:
    with session_scope(database_url) as session:
        for n in range(day + night):
            zone = DAY_ZONES[n % len(DAY_ZONES)] if n < day else NIGHT_ZONES[n % len(NIGHT_ZONES)]
            phone = f"+1555{n:07d}"
            patient = Patient(mrn=f"BENCH{n:06d}", phone_e164=phone, timezone=zone)
            session.add(patient)
            session.flush()
            assert patient.id is not None
            session.add(
                OutboundMessage(
                    idempotency_key=f"bench:{n}",
                    patient_id=patient.id,
                    kind="reminder",
                    template="sms/en/reminder.j2",
                    body="Riverside Health Clinic: Reminder of your visit. Reply STOP to opt out.",
                    encoding="GSM-7",
                    segments=1,
                    to_phone=phone,
                    scheduled_for=NOW - timedelta(minutes=1),
                )
            )


def progress(total: int) -> tuple[Counter[str], object]:
    counts: Counter[str] = Counter()
    started = time.monotonic()

    def on_outcome(outcome: Outcome) -> None:
        counts[outcome] += 1
        done = sum(counts.values())
        if done % 100 == 0 or done == total:
            rate = done / max(time.monotonic() - started, 1e-9)
            summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
            print(f"  {done:5d}/{total} handled  {rate:6.1f}/s  {summary}", file=sys.stderr)

    return counts, on_outcome


def verify(database_url: str) -> dict[str, int]:
    """Duplicates and quiet-hour violations, read back from the database."""
    with session_scope(database_url) as session:
        rows = session.exec(
            select(OutboundMessage, Patient).join(
                Patient, col(Patient.id) == col(OutboundMessage.patient_id)
            )
        ).all()
    sent = [(m, p) for m, p in rows if m.twilio_sid is not None]
    sids = Counter(m.twilio_sid for m, _ in sent)
    outside = sum(
        1
        for m, p in sent
        if m.sent_at is None
        or not is_send_allowed(m.sent_at, ZoneInfo(p.timezone) if p.timezone else None)
    )
    night_sent = sum(1 for _, p in sent if p.timezone in NIGHT_ZONES)
    return {
        "rows_sent": len(sent),
        "duplicate_sids": sum(c - 1 for c in sids.values()),
        "sent_outside_quiet_hours": outside,
        "night_rows_sent": night_sent,
        "night_rows_deferred": sum(
            1 for m, p in rows if p.timezone in NIGHT_ZONES and m.status == "scheduled"
        ),
    }


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def machine() -> str:
    node = shutil.which("node")
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        if node
        else "-"
    )
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs (load average {load} at the end), "
        f"Python {platform.python_version()}, Node {node_version}, "
        "Prism (tools/twilio-mock/package-lock.json)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--night", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None, help="default: as in production")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--no-write", action="store_true", help="do not write " + str(RESULTS))
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="bench-sms-")
    database_url = args.database_url or f"sqlite:///{folder}/bench.db"
    migrate(database_url)
    seed(database_url, day=args.messages, night=args.night)
    total = args.messages + args.night
    print(f"seeded {args.messages} due messages (+{args.night} at night)", file=sys.stderr)

    engine_cpu_before = _cpu(resource.RUSAGE_SELF)
    prism_cpu_before = _cpu(resource.RUSAGE_CHILDREN)
    with running_prism() as prism_url:
        settings = get_settings(
            database_url=database_url,
            twilio_account_sid=ACCOUNT_SID,
            twilio_auth_token=AUTH_TOKEN,
            twilio_from="+15555550100",
            twilio_api_base=prism_url,
        )
        sender = TimedSender(
            TwilioSender(build_twilio_client(settings), from_number="+15555550100")
        )
        dispatcher = Dispatcher(
            database_url=database_url,
            sender=sender,
            policy=DispatchPolicy(rate_per_second=args.rate, start_hour=8, end_hour=20),
            now=lambda: NOW + timedelta(seconds=time.monotonic() - started),
            workers=args.workers,
        )
        print(f"dispatching at {args.rate:g}/s to Prism at {prism_url}", file=sys.stderr)
        started = time.monotonic()
        counts, on_outcome = progress(total)
        report = dispatcher.run(on_outcome=on_outcome)  # type: ignore[arg-type]

    engine_cpu = _cpu(resource.RUSAGE_SELF) - engine_cpu_before
    prism_cpu = _cpu(resource.RUSAGE_CHILDREN) - prism_cpu_before  # Prism has exited by now
    starts = sorted(sender.starts)
    achieved = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0
    checks = verify(database_url)
    duplicates = len(sender.sent_ids) - len(set(sender.sent_ids)) + checks["duplicate_sids"]
    deviation = abs(achieved - args.rate) / args.rate
    ok = (
        deviation <= 0.05
        and duplicates == 0
        and checks["sent_outside_quiet_hours"] == 0
        and checks["night_rows_sent"] == 0
        and checks["rows_sent"] == args.messages
    )
    lines = [
        "# SMS dispatch benchmark",
        "",
        f"- machine: {machine()}",
        f"- database: {'SQLite (temporary file)' if not args.database_url else 'given URL'}",
        "- command: `" + " ".join(["python", "bench/bench_sms.py", *sys.argv[1:]]) + "`",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| messages sent (API calls accepted) | {checks['rows_sent']} | {args.messages} |",
        f"| rate limit | {args.rate:g}/s | |",
        f"| achieved send rate (first to last API call) | {achieved:.2f}/s "
        f"({deviation:.1%} off) | within 5% |",
        f"| wall time of the run | {report.seconds:.2f} s | |",
        f"| engine CPU per message (this process, incl. the twilio client) | "
        f"{1000 * engine_cpu / total:.1f} ms | |",
        f"| Prism CPU per request (the mock, incl. its start-up) | "
        f"{1000 * prism_cpu / max(len(starts), 1):.1f} ms | |",
        f"| duplicates (same row twice, or a sid twice) | {duplicates} | 0 |",
        f"| sends outside 08:00–20:00 local | {checks['sent_outside_quiet_hours']} | 0 |",
        f"| night-zone messages sent / deferred | {checks['night_rows_sent']} / "
        f"{checks['night_rows_deferred']} | 0 / {args.night} |",
        "| outcomes | " + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) + " | |",
        f"| verdict | {'PASS' if ok else 'FAIL'} | |",
        "",
    ]
    print("\n".join(lines))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(lines), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
