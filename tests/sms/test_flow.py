"""The dispatch-reminders flow through a real Prefect API, in dry-run (no Twilio settings)."""

from __future__ import annotations

import asyncio

import pytest

from flows.dispatch_reminders import dispatch_reminders
from models.tables import OutboundStatus
from models.types import utcnow
from tests.sms.conftest import World

pytestmark = pytest.mark.prefect


def test_the_flow_dispatches_due_messages_into_the_dry_run_outbox(
    world: World, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    monkeypatch.setenv("DATABASE_URL", world.database_url)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM"):
        monkeypatch.delenv(name, raising=False)
    # An answer to the patient's own text: due at any hour, so the test holds day and night.
    message_id = world.message(world.patient(), key="reply:SMtest:help", scheduled_for=utcnow())

    outcomes = asyncio.run(dispatch_reminders(max_seconds=10))

    assert outcomes["dry_run"] == 1 and outcomes["sent"] == 0
    assert world.get(message_id).status == OutboundStatus.DRY_RUN
