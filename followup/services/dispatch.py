"""Sending due SMS from the outbox, each exactly once, and following what Twilio reports.

One message goes through three short transactions and one API call:

1. claim: scheduled → sending, one UPDATE (models.messaging_queries.claim_due_messages), so
   two dispatchers never hold the same row;
2. check, at send time: the number is not opted out, the hour is inside the patient's
   08:00–20:00, the daily/weekly caps hold, the visit is still on. A row that fails a check is
   deferred (back to scheduled, later), suppressed or cancelled, and never reaches Twilio;
3. the API call, paced by a messages-per-second limit, outside any transaction;
4. record: the Twilio sid, or the error mapped to what to do about it (`classify_send_error`).

A row that got no sid can be retried with the same idempotency key (the row); a row with a sid
is never sent again. Twilio's reports after that move it through a monotonic state machine:
queued → sending → sent → delivered | undelivered | failed (`advance`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from sqlmodel import Session

from followup.core.messaging.policy import (
    AFTER_OPT_OUT_KINDS,
    REPLY_KEY_PREFIX,
    apply_caps,
    is_send_allowed,
    next_allowed_send_time,
)
from followup.errors import FollowupError
from followup.messaging.sender import (
    OutgoingSms,
    SendReceipt,
    SentLookup,
    SmsSender,
    SmsSendError,
)
from followup.services import visits
from followup.settings import Settings
from models import messaging_queries as mq
from models import queries
from models.db import session_scope
from models.tables import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    OutboundMessage,
    OutboundStatus,
    Patient,
)
from models.types import utcnow

logger = logging.getLogger(__name__)

ACTOR = "sms-dispatcher"

# Texts about a visit that are pointless once it has started or was cancelled.
VISIT_KINDS = frozenset({"confirmation", "reminder", "reschedule"})

# A claim that has not reached Twilio after this long belongs to a worker that died.
CLAIM_TIMEOUT = timedelta(minutes=10)
# 30003 (handset unreachable: off, out of coverage): a few new attempts, further apart.
UNREACHABLE_REDELIVERY_DELAYS = (timedelta(minutes=15), timedelta(hours=1))
MAX_RETRY_DELAY = timedelta(minutes=10)
MAX_WORKERS = 16  # API calls in flight at most (the client's connection pool is about this)

UNDELIVERABLE_TASK = "sms_undeliverable"  # a scheduler calls the patient instead
UNKNOWN_OUTCOME = mq.UNKNOWN_OUTCOME  # the last attempt may have reached Twilio: look first
SCHEDULER_QUEUE = "scheduler-queue"


class SmsConfigurationError(FollowupError):
    """Twilio refused the account itself (credentials, permissions): no message can go."""


# --- the state machine -------------------------------------------------------------------------

_RANK = {
    OutboundStatus.SCHEDULED: 0,
    OutboundStatus.QUEUED: 1,
    OutboundStatus.SENDING: 2,
    OutboundStatus.SENT: 3,
    OutboundStatus.DELIVERED: 4,
    OutboundStatus.UNDELIVERED: 4,
    OutboundStatus.FAILED: 4,
}
FINAL_STATUSES = frozenset(
    {
        OutboundStatus.DELIVERED,
        OutboundStatus.UNDELIVERED,
        OutboundStatus.FAILED,
        OutboundStatus.DRY_RUN,
        OutboundStatus.SUPPRESSED,
        OutboundStatus.CANCELLED,
    }
)
# Twilio's MessageStatus values for an outbound message, as outbox states.
TWILIO_STATUSES = {
    "accepted": OutboundStatus.QUEUED,
    "queued": OutboundStatus.QUEUED,
    "sending": OutboundStatus.SENDING,
    "sent": OutboundStatus.SENT,
    "delivered": OutboundStatus.DELIVERED,
    "read": OutboundStatus.DELIVERED,
    "undelivered": OutboundStatus.UNDELIVERED,
    "failed": OutboundStatus.FAILED,
}


def advance(current: str, reported: str) -> str | None:
    """The status after Twilio reports `reported` (a MessageStatus), or None if nothing changes.

    Callbacks arrive out of order: a report older than what is known, one equal to it, or
    anything after a final state changes nothing.
    """
    new = TWILIO_STATUSES.get(reported)
    if new is None or current in FINAL_STATUSES:
        return None
    return new if _RANK[new] > _RANK[OutboundStatus(current)] else None


# --- what a Twilio error means -----------------------------------------------------------------


class ErrorAction(StrEnum):
    OPTED_OUT = "opted_out"  # 21610: suppress the number, never retry
    CALL_PATIENT = "call_patient"  # invalid, not SMS-capable, landline: a scheduler calls
    RETRY = "retry"  # rate limited, Twilio down, network: same row again, later
    RETRY_FEW = "retry_few"  # handset unreachable: a few more tries
    CONFIGURATION = "configuration"  # our account is refused: stop, keep the message
    FAIL = "fail"  # anything else: failed, and a scheduler calls


_CALL_PATIENT_CODES = frozenset({21211, 21614, 30005, 30006})
_CONFIGURATION_CODES = frozenset({20003, 20005})
_UNREACHABLE = 30003
_RETRY_FEW_ATTEMPTS = 3


def classify_send_error(error: SmsSendError) -> ErrorAction:
    if error.network:
        return ErrorAction.RETRY
    if error.code == 21610:
        return ErrorAction.OPTED_OUT
    if error.code in _CALL_PATIENT_CODES:
        return ErrorAction.CALL_PATIENT
    if error.code == _UNREACHABLE:
        return ErrorAction.RETRY_FEW
    if error.code == 20429 or error.http_status == 429:
        return ErrorAction.RETRY
    if error.code in _CONFIGURATION_CODES or error.http_status in (401, 403):
        return ErrorAction.CONFIGURATION
    if error.http_status is not None and error.http_status >= 500:
        return ErrorAction.RETRY
    return ErrorAction.FAIL


def retry_delay(attempt: int, *, base_seconds: float) -> timedelta:
    """Exponential backoff after the `attempt`-th failed try: base, 2·base, 4·base … ≤ 10 min."""
    return min(timedelta(seconds=base_seconds * 2 ** max(attempt - 1, 0)), MAX_RETRY_DELAY)


# --- the send-time checks (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    rate_per_second: float
    max_attempts: int = 5
    start_hour: int = 8
    end_hour: int = 20
    status_callback_base: str | None = None
    retry_base_seconds: float = 5.0
    claim_timeout: timedelta = CLAIM_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchPolicy:
        return cls(
            rate_per_second=settings.sms_rate_per_second,
            max_attempts=settings.sms_max_attempts,
            start_hour=settings.quiet_hours_end,
            end_hour=settings.quiet_hours_start,
            status_callback_base=settings.twilio_webhook_base_url,
        )

    def status_callback(self, message_id: int) -> str | None:
        """Where Twilio reports on a message; the row id rides along (signed with the URL), so a
        report that beats the sid into the database still finds its row."""
        if not self.status_callback_base:
            return None
        return f"{self.status_callback_base.rstrip('/')}/twilio/status?outbound_id={message_id}"


class Verdict(StrEnum):
    SEND = "send"
    DEFER = "defer"
    SUPPRESS = "suppress"
    CANCEL = "cancel"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class SendCheck:
    """What the send-time checks look at, read from the database just before the call."""

    kind: str
    phone: str | None
    opted_out: bool
    zone: ZoneInfo | None  # None: the patient's zone is unknown, the strict all-US window
    reply: bool = False  # an answer to the patient's own text
    redelivery: bool = False  # a new attempt at a text the handset could not take
    visit_start: datetime | None = None
    visit_active: bool = True
    recent_sends: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    reason: str = ""
    until: datetime | None = None


def check_send(check: SendCheck, *, now: datetime, policy: DispatchPolicy) -> CheckResult:
    """Whether a claimed message may go now, and if not, what becomes of it."""
    if not check.phone:
        return CheckResult(Verdict.FAIL, "no_phone")
    if check.opted_out and not (
        check.reply and check.kind in AFTER_OPT_OUT_KINDS and not check.redelivery
    ):
        return CheckResult(Verdict.SUPPRESS, "opted_out")
    if check.kind in VISIT_KINDS and (
        not check.visit_active or (check.visit_start is not None and check.visit_start <= now)
    ):
        return CheckResult(Verdict.CANCEL, "visit_changed")
    if check.reply:
        return CheckResult(Verdict.SEND)
    hours = {"start_hour": policy.start_hour, "end_hour": policy.end_hour}
    if not is_send_allowed(now, check.zone, **hours):
        return CheckResult(
            Verdict.DEFER, "quiet_hours", next_allowed_send_time(now, check.zone, **hours)
        )
    if not apply_caps([now], check.zone, already_sent=check.recent_sends):
        # Over the daily or weekly cap: try again a day later, while the visit is still ahead.
        later = next_allowed_send_time(now + timedelta(days=1), check.zone, **hours)
        if check.visit_start is not None and later >= check.visit_start:
            return CheckResult(Verdict.SUPPRESS, "cap")
        return CheckResult(Verdict.DEFER, "cap", later)
    return CheckResult(Verdict.SEND)


# --- pacing ------------------------------------------------------------------------------------


class RateLimiter:
    """Starts at most `rate` sends a second, evenly spaced (no bursts); shared by threads."""

    def __init__(
        self,
        rate_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self._interval = 1.0 / rate_per_second
        self._clock, self._sleep = clock, sleep
        self._next = -math.inf
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


# --- one message -------------------------------------------------------------------------------


class Outcome(StrEnum):
    SENT = "sent"
    DRY_RUN = "dry_run"
    DEFERRED = "deferred"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"  # no longer ours (a status callback or another worker got there first)


def _zone(name: str | None) -> ZoneInfo | None:
    return ZoneInfo(name) if name else None


def _prepare(
    session: Session, message_ids: list[int], *, now: datetime, policy: DispatchPolicy
) -> tuple[list[OutgoingSms], list[Outcome]]:
    """Run the send-time checks on claimed rows, in one transaction for the batch: the SMS to
    send, and what became of the others (deferred, suppressed, cancelled, failed)."""
    rows = mq.load_claimed(session=session, ids=message_ids)
    phones = {message.to_phone or patient.phone_e164 for message, patient, _ in rows}
    suppressed = mq.suppressed_phones(session=session, phones={p for p in phones if p})
    history = mq.capped_send_times(
        session=session,
        patient_ids={message.patient_id for message, _, _ in rows},
        since=now - timedelta(days=7),
        exclude_key_prefix=REPLY_KEY_PREFIX,
        exclude_ids=message_ids,
    )
    to_send: list[OutgoingSms] = []
    outcomes: list[Outcome] = []
    for message, patient, visit in rows:
        assert message.id is not None
        if message.status != OutboundStatus.SENDING or message.twilio_sid is not None:
            outcomes.append(Outcome.SKIPPED)
            continue
        phone = message.to_phone or patient.phone_e164
        reply = message.idempotency_key.startswith(REPLY_KEY_PREFIX)
        check = SendCheck(
            kind=message.kind,
            phone=phone,
            opted_out=patient.sms_opt_out or phone in suppressed,
            zone=_zone(patient.timezone),
            reply=reply,
            redelivery=bool(_REDELIVERY.search(message.idempotency_key)),
            visit_start=visit.start if visit else None,
            visit_active=visit is None or visit.status in ACTIVE_APPOINTMENT_STATUSES,
            recent_sends=tuple(history.get(message.patient_id, ())),
        )
        result = check_send(check, now=now, policy=policy)
        if result.verdict != Verdict.SEND:
            outcomes.append(_hold_back(session, message, result))
            continue
        assert phone is not None
        if not reply:  # a second text to the same patient in this batch sees this one
            history.setdefault(message.patient_id, []).append(now)
        # Nothing is written for a send here: the attempt is counted with its result, so a
        # send costs one commit (on SQLite, one fsync) instead of two.
        to_send.append(
            OutgoingSms(
                message_id=message.id,
                to=phone,
                body=message.body,
                status_callback=policy.status_callback(message.id),
                attempt=message.attempts + 1,
                maybe_sent_since=message.sent_at if message.error_code == UNKNOWN_OUTCOME else None,
            )
        )
    return to_send, outcomes


def _opted_out_since_checked(session: Session, message_id: int) -> bool:
    """Suppress a claimed message whose number opted out after `_prepare` checked it."""
    if not mq.opted_out_for_send(session=session, message_id=message_id):
        return False
    message = mq.get_message(session=session, message_id=message_id, lock=True)
    if message.idempotency_key.startswith(REPLY_KEY_PREFIX) and (
        message.kind in AFTER_OPT_OUT_KINDS and not _REDELIVERY.search(message.idempotency_key)
    ):
        return False
    _hold_back(session, message, CheckResult(Verdict.SUPPRESS, "opted_out"))
    return True


def _hold_back(session: Session, message: OutboundMessage, result: CheckResult) -> Outcome:
    """A claimed row that may not go now: back to the queue for later, or closed."""
    if result.verdict == Verdict.DEFER:
        assert result.until is not None
        mq.release_claim(session=session, message=message, send_at=result.until)
        return Outcome.DEFERRED
    final = {
        Verdict.SUPPRESS: (OutboundStatus.SUPPRESSED, Outcome.SUPPRESSED),
        Verdict.CANCEL: (OutboundStatus.CANCELLED, Outcome.CANCELLED),
        Verdict.FAIL: (OutboundStatus.FAILED, Outcome.FAILED),
    }
    status, outcome = final[result.verdict]
    message.status = status
    message.error_code = result.reason
    session.add(message)
    if result.verdict == Verdict.FAIL:
        _call_patient_task(session, message, reason=result.reason)
    _audit(session, message, f"sms.{outcome}", {"reason": result.reason})
    return outcome


def _record_receipt(
    session: Session, message_id: int, receipt: SendReceipt, *, now: datetime
) -> Outcome:
    message = mq.get_message(session=session, message_id=message_id, lock=True)
    message.attempts += 1
    message.sent_at = now
    message.error_code = None
    if receipt.dry_run:
        message.status = OutboundStatus.DRY_RUN
        session.add(message)
        return Outcome.DRY_RUN
    # A status callback may have come first (it finds the row by id) and set sid and status;
    # else Twilio's acceptance makes it sent (a row released as stale while the call was slow
    # included), and the callbacks take it on to delivered, undelivered or failed.
    message.twilio_sid = message.twilio_sid or receipt.sid
    message.status = advance(message.status, "sent") or message.status
    session.add(message)
    return Outcome.SENT


def _record_error(
    session: Session,
    message_id: int,
    error: SmsSendError,
    *,
    now: datetime,
    policy: DispatchPolicy,
) -> Outcome:
    message = mq.get_message(session=session, message_id=message_id, lock=True)
    action = classify_send_error(error)
    code = str(error.code or error.http_status or "network")
    if error.outcome_unknown or message.error_code == UNKNOWN_OUTCOME:
        # Twilio may hold the message: the next attempt looks for it first. The first such
        # attempt's time stays: the lookup covers everything since.
        code = UNKNOWN_OUTCOME
        message.sent_at = message.sent_at or now
    message.error_code = code
    if action == ErrorAction.CONFIGURATION:
        # Not this message's fault: it waits, unchanged, for the account to be fixed.
        mq.release_claim(session=session, message=message, send_at=message.scheduled_for)
        return Outcome.RETRY
    message.attempts += 1
    if action == ErrorAction.OPTED_OUT:
        _opted_out_at_carrier(session, message, now=now)
        return Outcome.SUPPRESSED
    limit = min(policy.max_attempts, _RETRY_FEW_ATTEMPTS)
    if action == ErrorAction.RETRY:
        limit = policy.max_attempts
    if action in (ErrorAction.RETRY, ErrorAction.RETRY_FEW) and message.attempts < limit:
        delay = retry_delay(message.attempts, base_seconds=policy.retry_base_seconds)
        mq.release_claim(session=session, message=message, send_at=now + delay)
        _audit(session, message, "sms.retry", {"code": code, "attempt": message.attempts})
        return Outcome.RETRY
    message.status = OutboundStatus.FAILED
    session.add(message)
    _call_patient_task(session, message, reason=f"Twilio error {code}")
    _audit(session, message, "sms.failed", {"code": code, "attempts": message.attempts})
    return Outcome.FAILED


def _opted_out_at_carrier(session: Session, message: OutboundMessage, *, now: datetime) -> None:
    """21610: the number sent STOP to Twilio. Suppress it everywhere; never retry."""
    message.status = OutboundStatus.SUPPRESSED
    message.error_code = "21610"
    session.add(message)
    phone = message.to_phone
    patient_ids = [message.patient_id]
    if phone:
        mq.set_suppression(
            session=session, phone=phone, active=True, source="twilio_21610", now=now
        )
        patient_ids += [p.id for p in mq.patients_with_phone(session=session, phone=phone) if p.id]
    for patient_id in set(patient_ids):
        patient = session.get(Patient, patient_id)
        assert patient is not None
        patient.sms_opt_out = True
        patient.updated_at = now
        session.add(patient)
    effects = visits.stop_texting(session=session, patient_ids=sorted(set(patient_ids)), now=now)
    _audit(
        session,
        message,
        "sms.opted_out_at_carrier",
        {"cancelled": effects.cancelled_messages, "tasks": effects.task_ids},
    )


def _call_patient_task(session: Session, message: OutboundMessage, *, reason: str) -> None:
    visit = session.get(Appointment, message.appointment_id) if message.appointment_id else None
    mq.open_task(
        session=session,
        kind=UNDELIVERABLE_TASK,
        reason=(
            f"SMS {message.id} ({message.kind}) to patient {message.patient_id} could not be "
            f"delivered ({reason}): call the patient instead."
        ),
        target=SCHEDULER_QUEUE,
        study_id=visit.study_id if visit else None,
    )


def _audit(
    session: Session, message: OutboundMessage, action: str, detail: dict[str, object]
) -> None:
    queries.audit(
        session=session,
        actor=ACTOR,
        action=action,
        entity="outbound_message",
        entity_id=message.id,
        detail=dict(detail),
    )


# --- Twilio's status callbacks -----------------------------------------------------------------


def apply_status_report(
    *,
    session: Session,
    message: OutboundMessage,
    sid: str,
    reported: str,
    error_code: str | None,
    now: datetime,
) -> str | None:
    """Apply one status callback to its row; the new status, or None when it changed nothing."""
    if message.twilio_sid is None:
        message.twilio_sid = sid
    if reported in ("failed", "undelivered") and error_code == "21610":
        if message.status in FINAL_STATUSES:
            return None
        _opted_out_at_carrier(session, message, now=now)
        return message.status
    new = advance(message.status, reported)
    if new is None:
        session.add(message)
        return None
    message.status = new
    if error_code:
        message.error_code = error_code
    session.add(message)
    if new == OutboundStatus.UNDELIVERED and error_code == str(_UNREACHABLE):
        _redeliver_later(session, message, now=now)
    elif new in (OutboundStatus.UNDELIVERED, OutboundStatus.FAILED):
        _call_patient_task(session, message, reason=f"Twilio error {error_code or reported}")
    return new


_REDELIVERY = re.compile(r":redeliver\d+$")


def _redeliver_later(session: Session, message: OutboundMessage, *, now: datetime) -> None:
    """30003: the handset was unreachable. A new row sends the same text later, a few times."""
    original_key = _REDELIVERY.sub("", message.idempotency_key)
    done = mq.redelivery_count(session=session, key_prefix=f"{original_key}:redeliver")
    if done >= len(UNREACHABLE_REDELIVERY_DELAYS):
        _call_patient_task(session, message, reason="handset unreachable")
        return
    again = OutboundMessage.model_validate(
        {
            **message.model_dump(include=set(OutboundMessage.model_fields) - _PER_SEND_FIELDS),
            "idempotency_key": f"{original_key}:redeliver{done + 1}",
            "scheduled_for": now + UNREACHABLE_REDELIVERY_DELAYS[done],
        }
    )
    session.add(again)
    session.flush()
    _audit(session, message, "sms.redeliver", {"new_message_id": again.id})


_PER_SEND_FIELDS = frozenset(
    {"id", "status", "twilio_sid", "error_code", "attempts", "created_at", "sent_at", "claimed_at"}
)


# --- the dispatcher ----------------------------------------------------------------------------


@dataclass
class DispatchReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    released_stale: int = 0
    seconds: float = 0.0

    @property
    def handled(self) -> int:
        return sum(self.outcomes.values())

    def as_dict(self) -> dict[str, object]:
        return {
            **{outcome.value: self.outcomes.get(outcome, 0) for outcome in Outcome},
            "released_stale": self.released_stale,
            "seconds": round(self.seconds, 3),
        }


def default_workers(rate_per_second: float) -> int:
    """Threads that keep `rate_per_second` API calls going when one takes up to 250 ms."""
    return max(2, min(MAX_WORKERS, math.ceil(rate_per_second / 4)))


class Dispatcher:
    """Claims due rows and sends them with a pool of worker threads at a paced rate.

    `now` is the clock the checks use (tests move it); `limiter` paces the API calls. One
    Dispatcher (one limiter) per process: the rate is per dispatcher, so run one dispatching
    deployment at a time (its concurrency limit is 1) or divide the rate among them.
    `workers` (API calls in flight) defaults to enough for the rate at up to 250 ms a call.
    """

    def __init__(
        self,
        *,
        database_url: str,
        sender: SmsSender,
        policy: DispatchPolicy,
        now: Callable[[], datetime] = utcnow,
        limiter: RateLimiter | None = None,
        workers: int | None = None,
    ) -> None:
        self._database_url = database_url
        self._sender = sender
        self._policy = policy
        self._now = now
        self._limiter = limiter or RateLimiter(policy.rate_per_second)
        self._workers = workers or default_workers(policy.rate_per_second)

    def run(
        self,
        *,
        max_seconds: float | None = None,
        max_messages: int | None = None,
        ids: Collection[int] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> DispatchReport:
        """Send what is due (only `ids`, if given) until none is left or a budget runs out.

        Raises SmsConfigurationError after the run when Twilio refused the account; the
        messages involved are back in the queue unchanged.
        """
        started = time.monotonic()
        report = DispatchReport()
        stop = threading.Event()  # set when Twilio refuses the account
        with session_scope(self._database_url) as session:
            report.released_stale = mq.release_stale_claims(
                session=session, claimed_before=self._now() - self._policy.claim_timeout
            )
        batch = max(self._workers * 2, math.ceil(self._policy.rate_per_second))
        claimed_total = 0
        pending: set[Future[Outcome]] = set()

        def count(outcome: Outcome) -> None:
            report.outcomes[outcome] += 1
            if on_outcome is not None:
                on_outcome(outcome)

        with ThreadPoolExecutor(self._workers, thread_name_prefix="sms-dispatch") as pool:
            while True:
                out_of_time = max_seconds is not None and time.monotonic() - started > max_seconds
                # Refill at half empty: claims come in batches, and the sends already queued
                # keep the limiter busy while the next batch is claimed and checked.
                room = batch - len(pending) if len(pending) <= batch // 2 else 0
                if max_messages is not None:
                    room = min(room, max_messages - claimed_total)
                claimed: list[int] = []
                if room > 0 and not out_of_time and not stop.is_set():
                    claimed = self._claim(room, ids)
                    claimed_total += len(claimed)
                if claimed:
                    with session_scope(self._database_url) as session:
                        to_send, held_back = _prepare(
                            session, claimed, now=self._now(), policy=self._policy
                        )
                    for outcome in held_back:
                        count(outcome)
                    pending |= {pool.submit(self._send, sms, stop) for sms in to_send}
                if not pending:
                    if claimed:
                        continue  # all held back: look for more
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    count(future.result())
        report.seconds = time.monotonic() - started
        if stop.is_set():
            raise SmsConfigurationError("Twilio refused the account; messages left queued")
        return report

    def _claim(self, limit: int, ids: Collection[int] | None) -> list[int]:
        with session_scope(self._database_url) as session:
            return mq.claim_due_messages(session=session, now=self._now(), limit=limit, ids=ids)

    def _send(self, sms: OutgoingSms, stop: threading.Event) -> Outcome:
        if stop.is_set():
            return self._put_back(sms.message_id)
        self._limiter.wait()
        if sms.maybe_sent_since is not None and isinstance(self._sender, SentLookup):
            adopted = self._look_up(sms, self._sender, sms.maybe_sent_since)
            if adopted is not None:
                return adopted
        # Checked again at the moment of sending: a STOP can land between the batch's checks
        # and this call (the limiter may have held it for seconds), and after STOP nothing goes.
        with session_scope(self._database_url) as session:
            if _opted_out_since_checked(session, sms.message_id):
                return Outcome.SUPPRESSED
        try:
            receipt = self._sender.send(sms)
        except SmsSendError as error:
            if classify_send_error(error) == ErrorAction.CONFIGURATION:
                stop.set()
            logger.warning(
                "SMS %s not accepted: code=%s http_status=%s network=%s",
                sms.message_id,
                error.code,
                error.http_status,
                error.network,
            )
            with session_scope(self._database_url) as session:
                return _record_error(
                    session, sms.message_id, error, now=self._now(), policy=self._policy
                )
        with session_scope(self._database_url) as session:
            outcome = _record_receipt(session, sms.message_id, receipt, now=self._now())
        logger.info("SMS %s %s", sms.message_id, outcome)
        return outcome

    def _look_up(self, sms: OutgoingSms, lookup: SentLookup, since: datetime) -> Outcome | None:
        """Before resending a text whose earlier attempt got no answer: if Twilio has it, adopt
        its sid (the patient got it once, its callbacks find the row); None: send it now."""
        try:
            candidates = lookup.find_sent(to=sms.to, body=sms.body, since=since)
        except SmsSendError as error:
            with session_scope(self._database_url) as session:
                unknown = SmsSendError(
                    code=error.code,
                    http_status=error.http_status,
                    network=error.network,
                    outcome_unknown=True,
                )
                return _record_error(
                    session, sms.message_id, unknown, now=self._now(), policy=self._policy
                )
        with session_scope(self._database_url) as session:
            known = mq.known_sids(session=session, sids=candidates)
            sid = next((sid for sid in candidates if sid not in known), None)
            if sid is None:
                return None
            outcome = _record_receipt(
                session, sms.message_id, SendReceipt(sid=sid), now=self._now()
            )
            message = mq.get_message(session=session, message_id=sms.message_id)
            _audit(session, message, "sms.sid_adopted", {"attempt": sms.attempt})
        logger.info(
            "SMS %s was accepted by Twilio earlier: sid adopted, not resent", sms.message_id
        )
        return outcome

    def _put_back(self, message_id: int) -> Outcome:
        with session_scope(self._database_url) as session:
            message = mq.get_message(session=session, message_id=message_id)
            mq.release_claim(session=session, message=message, send_at=message.scheduled_for)
        return Outcome.RETRY
