"""A critical finding acknowledged from the acknowledge-escalation deployment's form."""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import select

from followup.settings import Settings
from models.db import session_scope
from models.tables import AuditEvent, Escalation
from tests.flows.conftest import run_sample

pytestmark = pytest.mark.prefect


def test_a_critical_finding_is_acknowledged_from_the_form_and_audited(
    settings: Settings,
) -> None:
    from flows.acknowledge_escalation import acknowledge_escalation

    summary = run_sample(settings, "spine_critical_cord_compression.hl7")
    [escalation] = summary["escalations"]

    with pytest.raises(ValueError, match="who acknowledges"):
        asyncio.run(acknowledge_escalation(escalation_id=escalation["id"], by="  "))
    said = asyncio.run(acknowledge_escalation(escalation_id=escalation["id"], by="dr.brennan"))

    assert said == f"escalation {escalation['id']} (critical_finding) acknowledged by dr.brennan"
    with session_scope(settings.database_url) as session:
        stored = session.get_one(Escalation, escalation["id"])
        assert (stored.status, stored.acknowledged_by) == ("acknowledged", "dr.brennan")
        [trail] = session.exec(
            select(AuditEvent).where(AuditEvent.action == "escalation.acknowledged")
        ).all()
        assert (trail.actor, trail.detail) == (
            "dr.brennan",
            {"kind": "critical_finding", "via": "prefect-ui"},
        )
