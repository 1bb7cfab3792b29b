"""The dispatch-reminders flow through a real Prefect API, in dry-run (no Twilio settings)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from flows.dispatch_reminders import dispatch_reminders
from followup.services import visits
from followup.settings import get_settings
from models.db import session_scope
from models.tables import OutboundStatus
from models.types import utcnow
from tests.sms.conftest import World

pytestmark = pytest.mark.prefect


@pytest.fixture
def dry_run(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", world.database_url)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM"):
        monkeypatch.delenv(name, raising=False)


def test_the_flow_dispatches_due_messages_into_the_dry_run_outbox(
    world: World, dry_run: None, prefect_api: None
) -> None:
    # An answer to the patient's own text: due at any hour, so the test holds day and night.
    message_id = world.message(world.patient(), key="reply:SMtest:help", scheduled_for=utcnow())

    outcomes = asyncio.run(dispatch_reminders(max_seconds=10))

    assert outcomes["dry_run"] == 1 and outcomes["sent"] == 0
    assert world.get(message_id).status == OutboundStatus.DRY_RUN


def afternoon_zone() -> str:
    """A fixed-offset zone where it is now 14:xx: inside quiet hours whenever the test runs."""
    offset = (14 - utcnow().hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}"  # the POSIX sign: Etc/GMT-3 is three hours ahead of UTC


def test_the_flow_expires_offers_first_so_the_next_offer_goes_out_in_the_same_run(
    world: World, dry_run: None, prefect_api: None
) -> None:
    zone = afternoon_zone()
    now = utcnow()
    visit = world.visit(world.patient(timezone=zone), now + timedelta(days=3))
    for phone, since in (("+15555550177", now - timedelta(days=2)), ("+15555550188", now)):
        world.waitlist(world.patient(phone=phone, timezone=zone), since=since, window_start=now)
    # Cancelled five hours ago (09:xx there): the first patient's four hours are over, and
    # their text, never sent, is still in the outbox.
    with session_scope(world.database_url) as session:
        cancelled = visits.cancel_visit(
            session=session,
            appointment_id=visit,
            reason="patient called",
            settings=get_settings(),
            now=now - timedelta(hours=5),
            actor="test",
        )
    [unanswered] = cancelled.texts.offers

    outcomes = asyncio.run(dispatch_reminders(max_seconds=10))

    assert outcomes["offer_texts"] == 1
    assert world.get(unanswered).status == OutboundStatus.CANCELLED
    [next_offer] = [
        m for m in world.messages() if m.kind == "waitlist_offer" and m.id != unanswered
    ]
    assert next_offer.status == OutboundStatus.DRY_RUN


def test_a_failing_expiry_does_not_hold_back_the_sends_and_still_fails_the_run(
    world: World, dry_run: None, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = world.message(world.patient(), key="reply:SMtest:help", scheduled_for=utcnow())

    def broken(**_: object) -> None:
        raise RuntimeError("waitlist tables unreadable")

    monkeypatch.setattr(visits, "expire_waitlist_offers", broken)

    with pytest.raises(RuntimeError, match="waitlist tables unreadable"):
        asyncio.run(dispatch_reminders(max_seconds=10))
    assert world.get(message_id).status == OutboundStatus.DRY_RUN
