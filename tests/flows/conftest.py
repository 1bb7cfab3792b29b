"""Fixtures for flow tests: a migrated database with the demo clinic, and a real Prefect API."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, NamedTuple

import pytest

from followup.core.demo import restamp_for_today
from followup.core.scheduling import site_holidays
from followup.services.intake import receive_message
from followup.settings import Settings, get_settings
from models.db import session_scope
from models.seed import seed_demo_clinic
from tests.conftest import SAMPLES


@pytest.fixture
def settings(database_url: str, monkeypatch: pytest.MonkeyPatch, prefect_api: None) -> Settings:
    # The flow builds its own Settings from the environment, as it does under a worker.
    monkeypatch.setenv("DATABASE_URL", database_url)
    settings = get_settings()
    today = datetime.now(settings.site_zone).date()
    with session_scope(database_url) as session:
        seed_demo_clinic(
            session=session,
            zone=settings.site_zone,
            first_day=today,
            closed_days=site_holidays("US", None, (today.year, today.year + 1)),
        )
    return settings


class Accepted(NamedTuple):
    """What the gateway's event carries for an accepted message: the row and its accession."""

    inbox_id: int
    accession: str


# An ordering provider the demo clinic's directory does not have, for a sample's own.
UNKNOWN_PROVIDER = (b"1000000003^Ramanathan^Priya", b"1999999999^Vance^Iris")


def receive_sample(
    settings: Settings, sample: str, *, replacing: tuple[bytes, bytes] | None = None
) -> Accepted:
    """An HL7 sample restamped for today, stored and accepted as the gateway would
    (`replacing`: one byte string swapped for another first)."""
    raw = (SAMPLES / "hl7" / sample).read_bytes()
    if replacing is not None:
        assert replacing[0] in raw
        raw = raw.replace(*replacing)
    raw = restamp_for_today(raw, now=datetime.now(settings.site_zone))
    with session_scope(settings.database_url) as session:
        receipt = receive_message(session=session, raw=raw, source="test", settings=settings)
    assert receipt.run_inbox_id is not None and receipt.accession is not None
    return Accepted(receipt.run_inbox_id, receipt.accession)


def run_sample(
    settings: Settings, sample: str, *, replacing: tuple[bytes, bytes] | None = None
) -> dict[str, Any]:
    from flows.scan_completed import scan_completed

    accepted = receive_sample(settings, sample, replacing=replacing)
    return asyncio.run(scan_completed(inbox_id=accepted.inbox_id, accession=accepted.accession))
