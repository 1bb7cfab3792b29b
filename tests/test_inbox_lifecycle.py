"""The life cycle of an accepted message whose processing failed
(followup/core/inbox_lifecycle.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy.exc

from followup.core.inbox_lifecycle import after_failure, backoff
from followup.errors import MissingField

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


def http_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:4200/api/flow_runs/")
    return httpx.HTTPStatusError("", request=request, response=httpx.Response(status))


def database_outage() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))


@pytest.mark.parametrize(
    "error",
    [database_outage(), http_error(503), http_error(429), TimeoutError(), ConnectionError()],
    ids=["database outage", "prefect 503", "prefect 429", "timeout", "connection"],
)
def test_a_transient_fault_is_retried_with_backoff(error: BaseException) -> None:
    first = after_failure(
        error, inbox_id=42, attempts=1, max_attempts=5, now=NOW, base_seconds=60, max_seconds=1800
    )
    third = after_failure(
        error, inbox_id=42, attempts=3, max_attempts=5, now=NOW, base_seconds=60, max_seconds=1800
    )

    assert (first.retry_at, third.retry_at) == (
        NOW + timedelta(seconds=60),
        NOW + timedelta(seconds=240),
    )
    assert not first.needs_person
    assert "attempt 2 of 5" in first.action


def test_the_last_attempt_hands_the_row_to_a_person_with_what_to_do() -> None:
    last = after_failure(
        database_outage(),
        inbox_id=42,
        attempts=5,
        max_attempts=5,
        now=NOW,
        base_seconds=60,
        max_seconds=1800,
    )

    assert last.needs_person
    assert last.error == "OperationalError (failed 5 times)"
    assert "followup inbox retry 42 --by" in last.action


@pytest.mark.parametrize(
    "error",
    [MissingField("patient identifier is empty", location="PID-3"), http_error(400)],
    ids=["unreadable message", "prefect 400"],
)
def test_a_fault_retrying_cannot_fix_goes_to_a_person_at_once(error: BaseException) -> None:
    held = after_failure(
        error, inbox_id=7, attempts=1, max_attempts=5, now=NOW, base_seconds=60, max_seconds=1800
    )

    assert held.needs_person
    assert "followup inbox retry 7" in held.action


def test_the_recorded_error_never_quotes_a_database_error_s_text() -> None:
    leaky = sqlalchemy.exc.IntegrityError(
        "INSERT INTO patient VALUES ('DOE^JANE')", {}, Exception("duplicate DOE^JANE")
    )

    held = after_failure(
        leaky, inbox_id=7, attempts=1, max_attempts=5, now=NOW, base_seconds=60, max_seconds=1800
    )

    assert held.needs_person
    assert "DOE" not in held.error + held.action
    assert held.error.startswith("IntegrityError")


def test_backoff_doubles_and_is_capped() -> None:
    waits = [backoff(n, base_seconds=60, max_seconds=600).total_seconds() for n in range(1, 7)]

    assert waits == [60, 120, 240, 480, 600, 600]
