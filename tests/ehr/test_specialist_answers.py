"""The specialists' answers through the real MLLP gateway: RRI^I12 accepted or declined, SIU
from the specialist's system (scheduled, then completed), and an answer for an unknown
referral refused with AE and audited. Each is stored raw before it is parsed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlmodel import col, select

from followup.core.referrals import ReferralStatus
from models import referral_queries
from models.db import session_scope
from models.tables import AuditEvent, InboxMessage, InboxStatus
from tests.ehr.conftest import Clock, dispatch, ingest, settings_for, the_referral
from tests.gateway.conftest import RunningListener, exchange, segments, start_listener
from tools.fake_ehr import fake_ehr

SPECIALIST = "MSH|^~\\&|NEURO_SCHED|NEURO_CLINIC|FOLLOWUP|demo|20261207120000||{type}|{id}|P|2.5.1"


def rri(referral_id: int, status: str, control_id: str, reason: str = "") -> bytes:
    reason_field = f"O^{reason}^L" if reason else ""
    return "\r".join(
        [
            SPECIALIST.format(type="RRI^I12^RRI_I12", id=control_id),
            "MSA|AA|FU2",
            f"RF1|{status}|||||REF{referral_id}^FOLLOWUP||||{reason_field}",
            "PRD|RT|Okafor^Ada",
            "PID|1||DM100101^^^DEMO^MR||Harper^Jonah",
        ]
    ).encode()


def siu(trigger: str, referral_id: int, start: str, status: str, control_id: str) -> bytes:
    sch = ["SCH", "", "N-77^NEURO"] + [""] * 23 + [f"REF{referral_id}^FOLLOWUP"]
    sch[25] = status
    return "\r".join(
        [
            SPECIALIST.format(type=f"SIU^{trigger}^SIU_S12", id=control_id),
            "|".join(sch),
            f"TQ1|1||||||{start}",
            "PID|1||DM100101^^^DEMO^MR||Harper^Jonah",
            "RGS|1|A",
        ]
    ).encode()


@pytest.fixture
def sent_referral(clinic: str, clock: Clock) -> int:
    """A scan's neurology referral, sent (the test specialist answered its I12 with AA)."""
    with fake_ehr() as neurology:
        settings = settings_for(clinic, referrals_mllp=neurology.address)
        ingest(settings)
        dispatch(settings, clock)
    referral = the_referral(clinic)
    assert referral.status == ReferralStatus.SENT and referral.id is not None
    return referral.id


@pytest.fixture
def gateway(clinic: str) -> Iterator[RunningListener]:
    yield from start_listener(clinic, mllp_idle_timeout_seconds=30)


def test_an_accepting_rri_then_the_specialists_booking_and_completion_close_the_loop(
    clinic: str, sent_referral: int, gateway: RunningListener
) -> None:
    acks = exchange(
        gateway,
        rri(sent_referral, "A", "RRI-1"),
        siu("S12", sent_referral, "20261215093000-0500", "Booked", "SIU-1"),
    )
    scheduled_for = the_referral(clinic).scheduled_for
    acks += exchange(gateway, siu("S14", sent_referral, "20261215093000-0500", "Complete", "SIU-2"))

    assert [segments(ack)["MSA"][1] for ack in acks] == ["AA", "AA", "AA"]
    assert gateway.accepted == []  # answers start no flow run
    with session_scope(clinic) as session:
        history = referral_queries.referral_history(session=session, referral_id=sent_referral)
    assert [(change.from_status, change.to_status) for change in history][-3:] == [
        ("sent", "accepted"),
        ("accepted", "scheduled"),
        ("scheduled", "completed"),
    ]
    assert history[-2].actor == "specialist:NEURO_SCHED|NEURO_CLINIC"
    assert the_referral(clinic).status == ReferralStatus.COMPLETED
    assert scheduled_for == datetime.fromisoformat("2026-12-15T14:30:00+00:00")
    assert [row.status for row in gateway.rows()][-3:] == [InboxStatus.PROCESSED] * 3


def test_a_declining_rri_keeps_its_reason(
    clinic: str, sent_referral: int, gateway: RunningListener
) -> None:
    [ack] = exchange(gateway, rri(sent_referral, "R", "RRI-2", reason="not a surgical case"))

    assert segments(ack)["MSA"][1] == "AA"
    with session_scope(clinic) as session:
        last = referral_queries.referral_history(session=session, referral_id=sent_referral)[-1]
    assert (last.to_status, last.reason) == (
        "declined",
        "RRI^I12 from the specialist: not a surgical case",
    )


def test_a_booking_from_the_specialist_implies_acceptance(
    clinic: str, sent_referral: int, gateway: RunningListener
) -> None:
    [ack] = exchange(gateway, siu("S12", sent_referral, "202612150930", "Booked", "SIU-3"))

    assert segments(ack)["MSA"][1] == "AA"
    with session_scope(clinic) as session:
        history = referral_queries.referral_history(session=session, referral_id=sent_referral)
    assert [change.to_status for change in history][-2:] == ["accepted", "scheduled"]


def test_an_answer_for_an_unknown_referral_is_refused_with_ae_and_audited(
    clinic: str, sent_referral: int, gateway: RunningListener
) -> None:
    unknown = sent_referral + 1000
    [ack] = exchange(gateway, rri(unknown, "A", "RRI-3"))

    answer = segments(ack)
    assert answer["MSA"][1:3] == ["AE", "RRI-3"]
    assert f"REF{unknown}" in answer["MSA"][3]
    assert answer["ERR"][2] == "RF1^1^6"
    with session_scope(clinic) as session:
        row = session.exec(
            select(InboxMessage).where(col(InboxMessage.control_id) == "RRI-3")
        ).one()
        [audit] = session.exec(
            select(AuditEvent).where(col(AuditEvent.action) == "referral.answer_refused")
        ).all()
    assert (row.status, row.error_location) == (InboxStatus.ERROR, "RF1-6")
    assert row.raw == rri(unknown, "A", "RRI-3")  # kept as it came
    assert audit.entity_id == row.id
    assert the_referral(clinic).status == ReferralStatus.SENT


def test_an_answer_the_referral_cannot_take_is_refused_and_changes_nothing(
    clinic: str, sent_referral: int, gateway: RunningListener
) -> None:
    [ack] = exchange(gateway, siu("S14", sent_referral, "202612150930", "Complete", "SIU-4"))

    assert segments(ack)["MSA"][1] == "AE"
    assert "cannot go from sent to completed" in segments(ack)["ERR"][8]
    assert the_referral(clinic).status == ReferralStatus.SENT
