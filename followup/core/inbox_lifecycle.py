"""What happens to an accepted message whose processing failed: retry it, or hand it to a person.

A message answered AA has been promised to the sender; a failure after that must never leave it
silently terminal. Every failure ends in one of two states:

* `retry`: a fault that may pass by itself (a database or Prefect API outage, a timeout, a
  network error, or an error this module does not recognise). The row is taken again by
  sweep-inbox once `next_attempt_at` has passed, with exponential backoff, up to
  `max_attempts` attempts in all.
* `needs_action`: a fault that retrying cannot fix (the stored message no longer parses under
  the current code), or the last allowed attempt failed. The row is on the schedulers'
  worklist with what a person must do; `followup inbox retry` (or the retry-inbox-message
  deployment) puts it back once the cause is fixed.

Pure functions over plain values: the pipeline records the outcome, sweep-inbox acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import sqlalchemy.exc

from followup.errors import InboundMessageError


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    """What to do with a row whose run failed, and what a person reads on the worklist."""

    retry_at: datetime | None  # None: a person must act (`needs_action`)
    error: str  # the fault, without message content
    action: str  # what a person must do (also shown while retries go on)

    @property
    def needs_person(self) -> bool:
        return self.retry_at is None


def is_transient(error: BaseException) -> bool:
    """A fault that may pass by itself: worth trying again later without anyone's help."""
    if isinstance(error, InboundMessageError):
        return False
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        # Integrity and data errors are about this row's content: retrying repeats them.
        return not isinstance(error, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.DataError)
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        return status == 429 or status >= 500
    # Anything not recognised is retried a few times: an unknown bug then reaches a person
    # after `max_attempts`, while an unlisted transient fault still heals itself.
    return True


def describe(error: BaseException) -> str:
    """The fault in one line that never quotes the message: parser and database errors can
    carry report text or patient fields, so those are named by type (and HL7 location)."""
    if isinstance(error, InboundMessageError):
        where = f" at {error.location}" if error.location else ""
        return f"{type(error).__name__}{where}: {error.reason}"
    return type(error).__name__


def backoff(attempt: int, *, base_seconds: float, max_seconds: float) -> timedelta:
    """Wait before attempt `attempt + 1`: base, 2×base, 4×base, … capped at max."""
    return timedelta(seconds=min(max_seconds, base_seconds * 2 ** max(attempt - 1, 0)))


def after_failure(
    error: BaseException,
    *,
    inbox_id: int,
    attempts: int,
    max_attempts: int,
    now: datetime,
    base_seconds: float,
    max_seconds: float,
) -> FailureOutcome:
    """The outcome of the `attempts`-th failed attempt of inbox row `inbox_id`."""
    described = describe(error)
    rerun = f"then run `followup inbox retry {inbox_id} --by <your name>`"
    if isinstance(error, InboundMessageError):
        return FailureOutcome(
            None,
            described,
            "The stored message cannot be read any more: ask the RIS team to correct and "
            f"resend it, or fix the parser, {rerun}.",
        )
    if not is_transient(error) or attempts >= max_attempts:
        tried = f"failed {attempts} time{'s' if attempts != 1 else ''}"
        return FailureOutcome(
            None,
            f"{described} ({tried})",
            f"Processing {tried}: find inbox {inbox_id} in the engine's log, fix the cause, "
            f"{rerun}.",
        )
    wait = backoff(attempts, base_seconds=base_seconds, max_seconds=max_seconds)
    return FailureOutcome(
        now + wait,
        described,
        f"Nothing yet: retried automatically (attempt {attempts + 1} of {max_attempts}).",
    )
