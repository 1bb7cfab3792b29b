"""Benchmark the booking engine: latency per booking on SQLite and PostgreSQL, and its growth.

    python bench/bench_booking.py [--requests 10000] [--postgres-url URL] [--growth-requests 2000]

The headline run: 50 providers (practices of five, each covering the next) × 14 business days ×
16 slots a day, then 10,000 booking requests (80 % routine, 20 % urgent, a third with patient
preferences) for random ordering providers. One booking is one transaction: open a session,
run the fallback chain (ordering → covering → practice), commit. Target: p95 <= 5 ms.

The growth runs repeat it with 10–100 providers and 7–28 days, with the same number of requests
each, to show how the cost moves with the size of the calendar. Results: a markdown table on
stdout and in bench/results/booking.md, a plot in bench/results/booking.png.

PostgreSQL: --postgres-url, else FOLLOWUP_BENCH_POSTGRES_URL or FOLLOWUP_TEST_POSTGRES_URL; each
run uses a throwaway schema. Without a URL only SQLite is measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from sqlalchemy import create_engine, text  # noqa: E402

from followup.core.scheduling import (  # noqa: E402
    DayPart,
    Preferences,
    WorkingSession,
    booking_window,
    site_holidays,
)
from models import booking, calendar_queries  # noqa: E402
from models.db import get_engine, migrate, session_scope  # noqa: E402
from models.queries import audit  # noqa: E402
from models.tables import Patient, Provider  # noqa: E402

ZONE = ZoneInfo("America/New_York")
FIRST_DAY = date(2027, 3, 1)  # a Monday; no US holiday for the next eight weeks
HOLIDAYS = site_holidays("US", None, (2027,))
# 16 thirty-minute slots a day: 09:00–13:00 and 14:00–18:00, Monday to Friday.
SESSIONS = tuple(
    WorkingSession(day, start, end)
    for day in range(5)
    for start, end in ((clock(9), clock(13)), (clock(14), clock(18)))
)
PRACTICE_SIZE = 5
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Run:
    database: str
    providers: int
    days: int
    slots: int
    requests: int
    latencies_ms: list[float]
    outcomes: Counter[str]
    commit_ms: float  # median of a bare one-row insert + commit: the durability floor

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def calendar_days(business_days: int) -> int:
    """Calendar days from FIRST_DAY that hold `business_days` working days."""
    day, seen = FIRST_DAY, 0
    while seen < business_days:
        seen += day.weekday() < 5 and day not in HOLIDAYS
        day += timedelta(days=1)
    return (day - FIRST_DAY).days


@contextmanager
def database(kind: str, postgres_url: str | None) -> Iterator[str]:
    """A migrated, empty database: a temporary SQLite file or a throwaway PostgreSQL schema."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-booking-") as folder:
            url = f"sqlite:///{folder}/bench.db"
            migrate(url)
            try:
                yield url
            finally:
                get_engine(url).dispose()
        return
    assert postgres_url is not None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    try:
        migrate(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def build_clinic(url: str, providers: int, days: int) -> tuple[list[int], int]:
    """Providers in practices of five, each covering the next, with their slots laid."""
    ids: list[int] = []
    slots = 0
    with session_scope(url) as session:
        for number in range(providers):
            provider = Provider(
                npi=f"8{number:09d}",
                family_name=f"Bench{number}",
                practice=f"Practice {number // PRACTICE_SIZE}",
                timezone=ZONE.key,
            )
            session.add(provider)
            session.flush()
            assert provider.id is not None
            ids.append(provider.id)
        for index, provider_id in enumerate(ids):
            practice_start = index - index % PRACTICE_SIZE
            colleague = practice_start + (index + 1 - practice_start) % PRACTICE_SIZE
            if colleague < len(ids) and colleague != index:
                session.get_one(Provider, provider_id).covering_provider_id = ids[colleague]
            calendar_queries.set_working_hours(
                session=session, provider_id=provider_id, sessions=SESSIONS
            )
            slots += calendar_queries.materialize_slots(
                session=session,
                provider_id=provider_id,
                first_day=FIRST_DAY,
                days=calendar_days(days),
                closed_days=HOLIDAYS,
            ).created
    with session_scope(url) as session:
        session.execute(text("ANALYZE"))  # planner statistics, as autovacuum would keep them
    return ids, slots


def make_patients(url: str, count: int) -> list[int]:
    with session_scope(url) as session:
        patients = [Patient(mrn=f"BENCH{n:07d}") for n in range(count)]
        session.add_all(patients)
        session.flush()
        return [p.id for p in patients if p.id is not None]


@dataclass(frozen=True)
class Request:
    patient_id: int
    provider_id: int
    window: booking.BookingWindow
    preferences: Preferences


def make_requests(
    rng: random.Random, patients: list[int], providers: list[int], days: int
) -> list[Request]:
    """Report times spread so that the windows fall inside the laid calendar."""
    span = calendar_days(days)
    requests = []
    for patient_id in patients:
        urgent = rng.random() < 0.2
        if urgent:
            reported = FIRST_DAY + timedelta(days=rng.randrange(-1, max(0, span - 5)))
        else:
            reported = FIRST_DAY + timedelta(days=rng.randrange(-7, max(-6, span - 14)))
        final_at = datetime.combine(reported, clock(rng.randrange(8, 18)), tzinfo=ZONE)
        window = booking_window(
            final_at, "urgent" if urgent else "routine", zone=ZONE, closed_days=HOLIDAYS
        )
        assert window is not None
        preferences = (
            Preferences(
                day_part=rng.choice([None, DayPart.MORNING, DayPart.AFTERNOON]),
                weekdays=frozenset(rng.sample(range(5), rng.randrange(0, 4))),
            )
            if rng.random() < 1 / 3
            else Preferences()
        )
        requests.append(Request(patient_id, rng.choice(providers), window, preferences))
    return requests


def outcome(result: booking.BookingResult) -> str:
    if result.booked is None:
        return "unbookable"
    for step in ("ordering provider", "covering provider", "practice"):
        if result.reason.startswith(f"booked with the {step}"):
            return step
    raise AssertionError(result.reason)


def run(kind: str, postgres_url: str | None, providers: int, days: int, requests: int) -> Run:
    label = f"{kind} {providers} providers × {days} days, {requests} requests"
    print(f"[{label}] building the clinic…", file=sys.stderr, flush=True)
    with database(kind, postgres_url) as url:
        ids, slots = build_clinic(url, providers, days)
        rng = random.Random(f"{providers}-{days}-{requests}")
        planned = make_requests(rng, make_patients(url, requests), ids, days)
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()
        step = max(1, requests // 10)
        for number, request in enumerate(planned, start=1):
            started = time.perf_counter()
            with session_scope(url) as session:
                result = booking.book_with_fallback(
                    session=session,
                    patient_id=request.patient_id,
                    study_id=None,
                    ordering_provider_id=request.provider_id,
                    window=request.window,
                    closed_days=HOLIDAYS,
                    preferences=request.preferences,
                )
            latencies.append((time.perf_counter() - started) * 1000)
            outcomes[outcome(result)] += 1
            if number % step == 0:
                recent = sorted(latencies[-step:])
                print(
                    f"[{label}] {number}/{requests} bookings, "
                    f"p50 {recent[len(recent) // 2]:.2f} ms over the last {step}",
                    file=sys.stderr,
                    flush=True,
                )
        floor = commit_floor(url)
    return Run(kind, providers, days, slots, requests, latencies, outcomes, floor)


def commit_floor(url: str, rounds: int = 200) -> float:
    """Median time of the smallest durable write: one audit row, committed."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        with session_scope(url) as session:
            audit(session=session, actor="bench", action="bench", entity="bench", entity_id=None)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def machine() -> str:
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.1f} GiB RAM"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs (nproc){memory}, Python {platform.python_version()} "
        f"on {platform.system()} {platform.release()}; load average at the end {load}"
    )


def headline_table(runs: list[Run]) -> list[str]:
    lines = [
        "| database | providers × days × slots/day | requests | p50 ms | p95 ms | p99 ms "
        "| max ms | mean ms | bookings/s | commit floor ms | ordering | covering | practice "
        "| unbookable |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        total_s = sum(r.latencies_ms) / 1000
        lines.append(
            f"| {r.database} | {r.providers} × {r.days} × 16 ({r.slots} slots) | {r.requests} "
            f"| {r.percentile(0.5):.2f} | {r.percentile(0.95):.2f} | {r.percentile(0.99):.2f} "
            f"| {max(r.latencies_ms):.1f} | {statistics.fmean(r.latencies_ms):.2f} "
            f"| {r.requests / total_s:.0f} | {r.commit_ms:.2f} | {r.outcomes['ordering provider']} "
            f"| {r.outcomes['covering provider']} | {r.outcomes['practice']} "
            f"| {r.outcomes['unbookable']} |"
        )
    return lines


def growth_table(runs: list[Run]) -> list[str]:
    lines = [
        "| database | providers | days | slots | p50 ms | p95 ms | fallbacks | unbookable |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        fallbacks = r.outcomes["covering provider"] + r.outcomes["practice"]
        lines.append(
            f"| {r.database} | {r.providers} | {r.days} | {r.slots} | {r.percentile(0.5):.2f} "
            f"| {r.percentile(0.95):.2f} | {fallbacks} | {r.outcomes['unbookable']} |"
        )
    return lines


def plot(growth: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_providers, by_days) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, key, fixed, label in (
        (by_providers, "providers", ("days", 14), "providers (14 days)"),
        (by_days, "days", ("providers", 50), "days (50 providers)"),
    ):
        for database in sorted({r.database for r in growth}):
            points = sorted(
                (getattr(r, key), r)
                for r in growth
                if r.database == database and getattr(r, fixed[0]) == fixed[1]
            )
            xs = [x for x, _ in points]
            axis.plot(xs, [r.percentile(0.5) for _, r in points], "o-", label=f"{database} p50")
            axis.plot(xs, [r.percentile(0.95) for _, r in points], "s--", label=f"{database} p95")
        axis.axhline(5, color="grey", linewidth=0.8, linestyle=":", label="p95 target")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    by_providers.set_ylabel("ms per booking")
    by_providers.legend(fontsize=8)
    figure.suptitle("Booking latency as the calendar grows (same number of requests)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=50)
    parser.add_argument("--days", type=int, default=14, help="business days of slots")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--growth-requests", type=int, default=2_000)
    parser.add_argument("--no-growth", action="store_true", help="only the headline run")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("FOLLOWUP_BENCH_POSTGRES_URL")
        or os.environ.get("FOLLOWUP_TEST_POSTGRES_URL"),
    )
    args = parser.parse_args()
    databases = ["sqlite"] + (["postgresql"] if args.postgres_url else [])

    headline = [
        run(kind, args.postgres_url, args.providers, args.days, args.requests) for kind in databases
    ]
    growth_points = [(p, 14) for p in (10, 25, 50, 100)] + [(50, d) for d in (7, 28)]
    growth = (
        []
        if args.no_growth
        else [
            run(kind, args.postgres_url, providers, days, args.growth_requests)
            for kind in databases
            for providers, days in growth_points
        ]
    )

    command = "python bench/bench_booking.py " + " ".join(sys.argv[1:])
    lines = [
        "# Booking benchmark",
        "",
        f"Machine: {machine()}.",
        f"Command: `{command.strip()}` (PostgreSQL {'on' if args.postgres_url else 'not run'}).",
        "",
        "One booking = one transaction: session, fallback chain, commit. SQLite is a file in WAL",
        "mode with the engine's default synchronous=FULL; PostgreSQL runs on the same machine.",
        "The commit floor is the median of the smallest durable write (one row, committed) on the",
        "same database: the part of every booking that is the disk's, not the engine's.",
        "",
        "## Headline: target p95 <= 5 ms",
        "",
        *headline_table(headline),
    ]
    if growth:
        RESULTS.mkdir(parents=True, exist_ok=True)
        plot(growth, RESULTS / "booking.png")
        lines += [
            "",
            f"## Growth: {args.growth_requests} requests per point",
            "",
            *growth_table(growth),
            "",
            "![booking latency growth](booking.png)",
        ]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "booking.md").write_text(report)
    print(f"written to {RESULTS / 'booking.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
