"""Closed-loop referral states: the transition table, history, audit, overdue referrals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from sqlmodel import col, select

from followup.core.referrals import (
    TRANSITIONS,
    IllegalReferralTransition,
    ReferralStatus,
    check_transition,
)
from followup.errors import BookingError
from models import queries, referral_queries
from models.db import session_scope
from models.tables import AuditEvent, Referral
from tests.booking.conftest import Clinic

NOW = datetime(2027, 3, 20, 12, tzinfo=UTC)
ILLEGAL = [
    (source, target)
    for source in ReferralStatus
    for target in ReferralStatus
    if target not in TRANSITIONS[source]
]


def test_the_closed_loop_path_and_its_branches_are_allowed() -> None:
    path = ["initiated", "sent", "accepted", "scheduled", "completed"]
    for source, target in pairwise(path):
        assert check_transition(source, target) == target
    assert check_transition("sent", "declined") == "declined"
    assert check_transition("declined", "sent") == "sent"
    assert check_transition("scheduled", "accepted") == "accepted"
    assert all(check_transition(s, "cancelled") for s in path[:-1])


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_every_other_move_is_refused(source: str, target: str) -> None:
    with pytest.raises(IllegalReferralTransition, match=f"from {source} to {target}"):
        check_transition(source, target)


def test_transitions_are_timestamped_kept_in_history_and_audited(clinic: Clinic) -> None:
    referral_id = clinic.referral(opened=NOW - timedelta(days=2))
    visit = NOW + timedelta(days=10)
    moves = [
        ("sent", None, "faxed to Neurology Associates"),
        ("accepted", None, "accepted by Dr. Ng"),
        ("scheduled", visit, "booked by the specialist's office"),
        ("completed", None, "consult note received"),
    ]
    for hours, (status, scheduled_for, reason) in enumerate(moves, start=1):
        with session_scope(clinic.url) as session:
            referral = queries.transition_referral(
                session=session,
                referral_id=referral_id,
                to=status,
                actor="scheduler:kim",
                reason=reason,
                at=NOW + timedelta(hours=hours),
                scheduled_for=scheduled_for,
            )
            assert (referral.status, referral.status_changed_at) == (
                status,
                NOW + timedelta(hours=hours),
            )

    with session_scope(clinic.url) as session:
        history = referral_queries.referral_history(session=session, referral_id=referral_id)
        audited = session.exec(
            select(AuditEvent)
            .where(AuditEvent.entity == "referral", AuditEvent.entity_id == referral_id)
            .order_by(col(AuditEvent.id))
        ).all()
    assert [(h.from_status, h.to_status, h.reason, h.actor) for h in history] == [
        ("initiated", "sent", "faxed to Neurology Associates", "scheduler:kim"),
        ("sent", "accepted", "accepted by Dr. Ng", "scheduler:kim"),
        ("accepted", "scheduled", "booked by the specialist's office", "scheduler:kim"),
        ("scheduled", "completed", "consult note received", "scheduler:kim"),
    ]
    assert [h.at for h in history] == [NOW + timedelta(hours=h) for h in range(1, 5)]
    assert [a.action for a in audited] == [
        "referral.sent",
        "referral.accepted",
        "referral.scheduled",
        "referral.completed",
    ]


def test_an_illegal_move_changes_nothing(clinic: Clinic) -> None:
    referral_id = clinic.referral(opened=NOW)
    with pytest.raises(IllegalReferralTransition), session_scope(clinic.url) as session:
        queries.transition_referral(
            session=session, referral_id=referral_id, to="completed", actor="x"
        )
    with pytest.raises(BookingError, match="scheduled_for"), session_scope(clinic.url) as session:
        queries.transition_referral(
            session=session, referral_id=referral_id, to="sent", actor="x", scheduled_for=NOW
        )
    with session_scope(clinic.url) as session:
        assert session.get_one(Referral, referral_id).status == "initiated"
        assert referral_queries.referral_history(session=session, referral_id=referral_id) == []


def test_overdue_referrals_are_open_ones_past_their_tiers_allowance(clinic: Clinic) -> None:
    routine_late = clinic.referral(opened=NOW - timedelta(days=15))
    clinic.referral(opened=NOW - timedelta(days=13))  # routine, still within 14 days
    urgent_late = clinic.referral(urgency="urgent", opened=NOW - timedelta(days=4))
    clinic.referral(urgency="urgent", opened=NOW - timedelta(days=2))
    declined_late = clinic.referral(opened=NOW - timedelta(days=20))
    scheduled = clinic.referral(opened=NOW - timedelta(days=30))
    with session_scope(clinic.url) as session:
        for referral_id, moves in (
            (declined_late, ["sent", "declined"]),
            (scheduled, ["sent", "accepted"]),
        ):
            for status in moves:
                queries.transition_referral(
                    session=session, referral_id=referral_id, to=status, actor="x"
                )
        queries.transition_referral(
            session=session,
            referral_id=scheduled,
            to="scheduled",
            actor="x",
            scheduled_for=NOW + timedelta(days=3),
        )

    with session_scope(clinic.url) as session:
        overdue = referral_queries.overdue_referrals(session=session, now=NOW)

    assert [r.id for r in overdue] == [declined_late, routine_late, urgent_late]
