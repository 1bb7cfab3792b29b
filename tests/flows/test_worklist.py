"""The schedulers' worklist: a critical finding shows until a person acknowledges it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from followup.settings import Settings
from models import worklist
from models.db import session_scope
from models.types import utcnow
from tests.flows.conftest import run_sample

pytestmark = pytest.mark.prefect


def _latest(key: str) -> Any:
    async def read() -> Any:
        async with get_client() as client:
            [artifact] = await client.read_latest_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
            return artifact

    return asyncio.run(read())


def test_critical_escalation_is_listed_until_acknowledged(settings: Settings) -> None:
    from flows.daily_worklist import daily_worklist

    summary = run_sample(settings, "spine_critical_cord_compression.hl7")
    [escalation] = summary["escalations"]

    listed = _latest("worklist-critical-unacknowledged")
    assert "ACC2026000105" in str(listed.data)
    assert "GA" in str(listed.data)  # initials, as a scheduler needs them
    assert "Abernathy" not in str(listed.data)  # never the name

    with session_scope(settings.database_url) as session:
        acknowledged = worklist.acknowledge_escalation(
            session=session, escalation_id=escalation["id"], by="dr.brennan", now=utcnow()
        )
        again = worklist.acknowledge_escalation(
            session=session, escalation_id=escalation["id"], by="someone-else", now=utcnow()
        )
    assert acknowledged.acknowledged_by == again.acknowledged_by == "dr.brennan"

    counts = asyncio.run(daily_worklist())

    assert counts["worklist-critical-unacknowledged"] == 0
    assert "ACC2026000105" not in str(_latest("worklist-critical-unacknowledged").data)
    assert counts["worklist-bookings-today"] == 0  # demo bookings are 7–14 days out


def test_acknowledging_an_unknown_escalation_is_an_error(settings: Settings) -> None:
    with session_scope(settings.database_url) as session, pytest.raises(LookupError):
        worklist.acknowledge_escalation(session=session, escalation_id=999, by="x", now=utcnow())
