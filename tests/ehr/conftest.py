"""A seeded clinic, a scan that books a visit and opens a neurology referral, and a dispatcher
with a clock the tests move (retries fall due without waiting)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from followup.core.demo import restamp_for_today
from followup.services import intake
from followup.services.ehr_dispatch import (
    EhrDispatcher,
    EhrDispatchReport,
    EhrPolicy,
    default_transports,
)
from followup.settings import Settings, get_settings
from models.db import session_scope
from models.tables import Appointment, EhrOutboxMessage, Referral
from models.types import utcnow
from tests.conftest import SAMPLES, run_scan, seed_clinic

NEUROLOGY_SCAN = SAMPLES / "hl7" / "spine_neurology_root_compression.hl7"
MRN = "DM100101"
ACCESSION = "ACC2026000101"
POLICY = EhrPolicy(
    max_attempts=3, retry_base_seconds=60, connect_timeout=2, ack_timeout=1, batch_size=50
)


def _a_minute_ahead() -> datetime:
    """Ahead of the rows a test writes after the clock is made, so they are due."""
    return utcnow() + timedelta(minutes=1)


@dataclass
class Clock:
    now: datetime = field(default_factory=_a_minute_ahead)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def ingest(settings: Settings, path: Any = NEUROLOGY_SCAN) -> dict[str, Any]:
    raw = restamp_for_today(path.read_bytes(), now=datetime.now(settings.site_zone))
    with session_scope(settings.database_url) as session:
        receipt = intake.receive_message(session=session, raw=raw, source="test", settings=settings)
    assert receipt.run_inbox_id is not None
    return run_scan(receipt.run_inbox_id)


def dispatch(settings: Settings, clock: Clock, policy: EhrPolicy = POLICY) -> EhrDispatchReport:
    dispatcher = EhrDispatcher(
        settings=settings, transports=default_transports(policy), policy=policy, now=clock
    )
    return dispatcher.run(max_seconds=30)


def outbox(database_url: str) -> list[EhrOutboxMessage]:
    with session_scope(database_url) as session:
        return list(session.exec(select(EhrOutboxMessage).order_by(col(EhrOutboxMessage.id))))


def the_visit(database_url: str) -> Appointment:
    with session_scope(database_url) as session:
        return session.exec(select(Appointment).where(col(Appointment.status) == "booked")).one()


def visit_id(database_url: str) -> int:
    visit = the_visit(database_url)
    assert visit.id is not None
    return visit.id


def the_referral(database_url: str) -> Referral:
    with session_scope(database_url) as session:
        return session.exec(select(Referral)).one()


@pytest.fixture
def clinic(flow_database_url: str) -> str:
    """The seeded clinic the scan-completed flow itself runs against."""
    seed_clinic(flow_database_url)
    return flow_database_url


@pytest.fixture
def clock() -> Clock:
    return Clock()


def settings_for(database_url: str, **overrides: Any) -> Settings:
    return get_settings(database_url=database_url, **overrides)
