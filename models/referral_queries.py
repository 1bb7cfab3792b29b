"""Referral tracking: a referral's status history and the referrals overdue for an appointment
(each urgency tier's allowance is the core's, followup.core.referrals)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import (
    and_,
    or_,
)
from sqlmodel import Session, col, select

from followup.core.referrals import (
    AWAITING_APPOINTMENT,
    DEFAULT_ALLOWANCE,
)
from models.tables import (
    Decision,
    Referral,
    ReferralStatusChange,
)


def referral_history(*, session: Session, referral_id: int) -> list[ReferralStatusChange]:
    return list(
        session.exec(
            select(ReferralStatusChange)
            .where(ReferralStatusChange.referral_id == referral_id)
            .order_by(col(ReferralStatusChange.at), col(ReferralStatusChange.id))
        )
    )


def overdue_referrals(
    *,
    session: Session,
    now: datetime,
    allowance: Mapping[str, timedelta] = DEFAULT_ALLOWANCE,
) -> list[Referral]:
    """Open referrals still without an appointment past their tier's allowance, oldest first."""
    late = [
        and_(col(Decision.urgency) == tier, col(Referral.created_at) < now - delta)
        for tier, delta in allowance.items()
    ]
    return list(
        session.exec(
            select(Referral)
            .join(Decision, col(Decision.id) == col(Referral.decision_id))
            .where(col(Referral.status).in_(AWAITING_APPOINTMENT), or_(*late))
            .order_by(col(Referral.created_at), col(Referral.id))
        )
    )
