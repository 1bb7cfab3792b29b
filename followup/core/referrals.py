"""Closed-loop referral states (DOMAIN.md §7), modelled on FHIR ServiceRequest + Task / ONC 360X.

    initiated → sent → accepted | declined → scheduled → completed, or cancelled

Plain data and one check; the database layer records every transition with its time, actor
and reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum

from followup.core.scheduling import EMERGENT, ROUTINE, URGENT
from followup.errors import FollowupError


class ReferralStatus(StrEnum):
    INITIATED = "initiated"
    SENT = "sent"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    SCHEDULED = "scheduled"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


# From each state, where a referral may go next. A declined referral may be sent again (to
# another specialist); a scheduled one goes back to accepted when its appointment is cancelled.
TRANSITIONS: Mapping[ReferralStatus, frozenset[ReferralStatus]] = {
    ReferralStatus.INITIATED: frozenset({ReferralStatus.SENT, ReferralStatus.CANCELLED}),
    ReferralStatus.SENT: frozenset(
        {ReferralStatus.ACCEPTED, ReferralStatus.DECLINED, ReferralStatus.CANCELLED}
    ),
    ReferralStatus.ACCEPTED: frozenset({ReferralStatus.SCHEDULED, ReferralStatus.CANCELLED}),
    ReferralStatus.DECLINED: frozenset({ReferralStatus.SENT, ReferralStatus.CANCELLED}),
    ReferralStatus.SCHEDULED: frozenset(
        {ReferralStatus.COMPLETED, ReferralStatus.ACCEPTED, ReferralStatus.CANCELLED}
    ),
    ReferralStatus.COMPLETED: frozenset(),
    ReferralStatus.CANCELLED: frozenset(),
}

# States in which the loop is still open: the referral has no appointment yet.
AWAITING_APPOINTMENT = frozenset(
    {
        ReferralStatus.INITIATED,
        ReferralStatus.SENT,
        ReferralStatus.ACCEPTED,
        ReferralStatus.DECLINED,
    }
)

# How long after it was opened a referral may wait for its appointment, by the decision's tier.
DEFAULT_ALLOWANCE: Mapping[str, timedelta] = {
    EMERGENT: timedelta(days=1),
    URGENT: timedelta(days=3),
    ROUTINE: timedelta(days=14),
}


class IllegalReferralTransition(FollowupError):
    """A move the referral state machine does not allow (e.g. completed → sent)."""


def check_transition(current: str, target: str) -> ReferralStatus:
    """The target state, when the move from `current` is allowed; raises otherwise."""
    source, destination = ReferralStatus(current), ReferralStatus(target)
    if destination not in TRANSITIONS[source]:
        allowed = ", ".join(sorted(TRANSITIONS[source])) or "nothing (final state)"
        raise IllegalReferralTransition(
            f"referral cannot go from {source} to {destination}; allowed: {allowed}"
        )
    return destination


class UnknownReferral(FollowupError, LookupError):
    """An answer names a referral this engine never sent."""


def answer_path(current: str, answer: str) -> list[ReferralStatus]:
    """The moves a specialist's answer makes from `current`, each allowed by TRANSITIONS;
    raises IllegalReferralTransition (before anything is written) when one is not.

    A specialist who answers has the referral, so one still `initiated` (its I12's ACK was
    lost, or it went by hand) is first `sent`; one who books the visit has accepted it. An
    answer the referral already reflects (a second "accepted") changes nothing, and a booking
    for a referral already scheduled only moves its date (no state change).
    """
    state, target = ReferralStatus(current), ReferralStatus(answer)
    if state == target:
        return []
    path: list[ReferralStatus] = []
    if state == ReferralStatus.INITIATED:
        path.append(check_transition(state, ReferralStatus.SENT))
        state = ReferralStatus.SENT
    if target == ReferralStatus.SCHEDULED and state == ReferralStatus.SENT:
        path.append(check_transition(state, ReferralStatus.ACCEPTED))
        state = ReferralStatus.ACCEPTED
    path.append(check_transition(state, target))
    return path
