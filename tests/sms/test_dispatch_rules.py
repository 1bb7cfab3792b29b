"""The dispatcher's pure rules: state machine, error mapping, send-time checks, pacing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from followup.core.messaging.policy import US_STRICT_ZONES
from followup.messaging.sender import SmsSendError
from followup.services.dispatch import (
    FINAL_STATUSES,
    TWILIO_STATUSES,
    DispatchPolicy,
    ErrorAction,
    RateLimiter,
    SendCheck,
    Verdict,
    advance,
    check_send,
    classify_send_error,
    retry_delay,
)
from models.tables import OutboundStatus

POLICY = DispatchPolicy(rate_per_second=1.0)
NEW_YORK = ZoneInfo("America/New_York")


# --- state machine -----------------------------------------------------------------------------


def replay(reports: list[str], start: str = OutboundStatus.SENDING) -> list[str]:
    status, seen = start, [start]
    for reported in reports:
        status = advance(status, reported) or status
        seen.append(status)
    return seen


def test_reports_in_order_walk_the_machine() -> None:
    assert replay(["queued", "sending", "sent", "delivered"], start="scheduled") == [
        "scheduled",
        "queued",
        "sending",
        "sent",
        "delivered",
    ]


def test_a_late_report_never_moves_a_message_back() -> None:
    assert replay(["delivered", "sent", "queued", "failed"])[-1] == "delivered"
    assert advance("sent", "sending") is None
    assert advance("sent", "sent") is None


@given(st.lists(st.sampled_from(sorted(TWILIO_STATUSES)), max_size=12))
def test_any_order_of_reports_is_monotonic_and_final_states_stick(reports: list[str]) -> None:
    order = ["scheduled", "queued", "sending", "sent"]
    seen = replay(reports)
    ranks = [order.index(s) if s in order else len(order) for s in seen]
    finals = [s for s in seen if s in FINAL_STATUSES]

    assert ranks == sorted(ranks)
    assert len(set(finals)) <= 1  # the first final state is the last state


def test_unknown_reports_and_our_own_final_states_change_nothing() -> None:
    assert advance("sending", "receiving") is None
    for final in ("dry_run", "suppressed", "cancelled"):
        assert advance(final, "delivered") is None


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (SmsSendError(code=21610, http_status=400), ErrorAction.OPTED_OUT),
        (SmsSendError(code=21211, http_status=400), ErrorAction.CALL_PATIENT),
        (SmsSendError(code=21614, http_status=400), ErrorAction.CALL_PATIENT),
        (SmsSendError(code=30006, http_status=400), ErrorAction.CALL_PATIENT),
        (SmsSendError(code=30003, http_status=400), ErrorAction.RETRY_FEW),
        (SmsSendError(code=20429, http_status=429), ErrorAction.RETRY),
        (SmsSendError(http_status=429), ErrorAction.RETRY),
        (SmsSendError(http_status=500), ErrorAction.RETRY),
        (SmsSendError(code=20503, http_status=503), ErrorAction.RETRY),
        (SmsSendError(network=True), ErrorAction.RETRY),
        (SmsSendError(code=20003, http_status=401), ErrorAction.CONFIGURATION),
        (SmsSendError(code=21408, http_status=400), ErrorAction.FAIL),
    ],
)
def test_twilio_errors_map_to_what_to_do(error: SmsSendError, action: ErrorAction) -> None:
    assert classify_send_error(error) == action


def test_backoff_doubles_and_is_capped() -> None:
    delays = [retry_delay(attempt, base_seconds=5) for attempt in range(1, 10)]
    assert delays[:4] == [timedelta(seconds=s) for s in (5, 10, 20, 40)]
    assert max(delays) == timedelta(minutes=10)


# --- send-time checks --------------------------------------------------------------------------


def check(**values: object) -> SendCheck:
    defaults: dict[str, object] = {
        "kind": "reminder",
        "phone": "+15555550123",
        "opted_out": False,
        "zone": NEW_YORK,
    }
    return SendCheck(**{**defaults, **values})  # type: ignore[arg-type]


AFTERNOON = datetime(2026, 12, 8, 19, 0, tzinfo=UTC)  # 14:00 New York
NIGHT = datetime(2026, 12, 9, 7, 0, tzinfo=UTC)  # 02:00 New York


def test_a_reminder_inside_the_window_goes() -> None:
    assert check_send(check(), now=AFTERNOON, policy=POLICY).verdict == Verdict.SEND


def test_at_night_a_reminder_waits_for_eight_local() -> None:
    result = check_send(check(), now=NIGHT, policy=POLICY)

    assert result.verdict == Verdict.DEFER
    assert result.until == datetime(2026, 12, 9, 13, 0, tzinfo=UTC)  # 08:00 EST


def test_an_opted_out_number_gets_nothing_but_the_carrier_required_answers() -> None:
    assert check_send(check(opted_out=True), now=AFTERNOON, policy=POLICY).verdict == (
        Verdict.SUPPRESS
    )
    answer = check(kind="opt_out_confirmation", opted_out=True, reply=True)
    assert check_send(answer, now=NIGHT, policy=POLICY).verdict == Verdict.SEND
    # A reschedule answer is a reply too, but not one an opted-out number may still get.
    reschedule = check(kind="reschedule", opted_out=True, reply=True)
    assert check_send(reschedule, now=AFTERNOON, policy=POLICY).verdict == Verdict.SUPPRESS


def test_answers_go_at_any_hour_and_outside_the_caps() -> None:
    sent_today = (AFTERNOON - timedelta(hours=1),)
    answer = check(kind="help", reply=True, recent_sends=sent_today)
    assert check_send(answer, now=NIGHT, policy=POLICY).verdict == Verdict.SEND


@pytest.mark.parametrize("kind", ["reminder", "confirmation", "reschedule"])
def test_a_text_about_a_cancelled_or_past_visit_is_cancelled(kind: str) -> None:
    cancelled = check(kind=kind, visit_start=AFTERNOON + timedelta(days=2), visit_active=False)
    past = check(kind=kind, visit_start=AFTERNOON - timedelta(minutes=1))
    assert check_send(cancelled, now=AFTERNOON, policy=POLICY).verdict == Verdict.CANCEL
    assert check_send(past, now=AFTERNOON, policy=POLICY).verdict == Verdict.CANCEL


def test_the_cancellation_notice_goes_although_its_visit_is_cancelled() -> None:
    notice = check(
        kind="cancellation", visit_start=AFTERNOON + timedelta(days=2), visit_active=False
    )
    assert check_send(notice, now=AFTERNOON, policy=POLICY).verdict == Verdict.SEND


def test_no_number_fails_and_a_person_calls() -> None:
    assert check_send(check(phone=None), now=AFTERNOON, policy=POLICY).verdict == Verdict.FAIL


def test_over_the_daily_cap_a_text_waits_a_day_or_is_dropped_when_the_visit_comes_first() -> None:
    sent_today = (AFTERNOON - timedelta(hours=2),)
    waits = check_send(
        check(recent_sends=sent_today, visit_start=AFTERNOON + timedelta(days=3)),
        now=AFTERNOON,
        policy=POLICY,
    )
    assert waits.verdict == Verdict.DEFER and waits.until == AFTERNOON + timedelta(days=1)
    dropped = check_send(
        check(recent_sends=sent_today, visit_start=AFTERNOON + timedelta(hours=20)),
        now=AFTERNOON,
        policy=POLICY,
    )
    assert dropped.verdict == Verdict.SUPPRESS


ZONES = st.sampled_from([None, *US_STRICT_ZONES, ZoneInfo("Europe/Madrid")])
INSTANTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


def inside_window(when: datetime, zone: ZoneInfo | None) -> bool:
    return all(8 <= when.astimezone(z).hour < 20 for z in ([zone] if zone else US_STRICT_ZONES))


@given(now=INSTANTS, zone=ZONES)
def test_a_send_goes_exactly_when_it_is_eight_to_eight_local(
    now: datetime, zone: ZoneInfo | None
) -> None:
    result = check_send(check(zone=zone), now=now, policy=POLICY)

    assert (result.verdict == Verdict.SEND) is inside_window(now, zone)


@given(now=INSTANTS, zone=ZONES)
def test_a_deferred_send_waits_for_the_window_and_no_longer(
    now: datetime, zone: ZoneInfo | None
) -> None:
    assume(not inside_window(now, zone))
    result = check_send(check(zone=zone), now=now, policy=POLICY)

    assert result.verdict == Verdict.DEFER and result.until is not None
    assert inside_window(result.until, zone)
    assert not inside_window(result.until - timedelta(minutes=1), zone)


# --- pacing ------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_limiter_spaces_sends_evenly_without_bursts() -> None:
    fake = FakeTime()
    limiter = RateLimiter(50, clock=fake.clock, sleep=fake.sleep)
    for _ in range(101):
        limiter.wait()

    assert fake.now == pytest.approx(102.0)  # 100 intervals of 20 ms after the first send
    assert fake.slept == pytest.approx([0.02] * 100)


def test_idle_time_is_not_saved_up_for_a_burst() -> None:
    fake = FakeTime()
    limiter = RateLimiter(10, clock=fake.clock, sleep=fake.sleep)
    limiter.wait()
    fake.now += 60  # a quiet minute
    limiter.wait()
    limiter.wait()

    assert fake.slept == pytest.approx([0.1])
