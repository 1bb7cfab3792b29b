"""What came out of a fault, counted in the application database, and one printed line per case.

Every fault test ends in `check_counts`: it prints the counts (visible with `pytest -s` or
`-rA`) and then holds them to the exact numbers expected, so a case fails on one more or one
fewer row, never on a looser "at least".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from sqlmodel import col, select

from models.db import session_scope
from models.tables import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    ImagingStudy,
    InboxMessage,
    OutboundMessage,
)

Counts = Mapping[str, object]


def check_counts(
    case: str, counted: Counts, expected: Counts, *, shown: Counts | None = None
) -> None:
    """Print `[fault case] name=value ...` and assert the counts are exactly the expected ones;
    `shown` is printed too, for what may vary within what the checks allow."""
    line = " ".join(f"{name}={value}" for name, value in {**counted, **(shown or {})}.items())
    print(f"\n[fault {case}] {line}")
    assert dict(counted) == dict(expected)


def tally(values: Iterable[object]) -> dict[str, int]:
    """{value: how many}, sorted, so printed lines and assertion diffs read the same way."""
    return dict(sorted(Counter(str(value) for value in values).items()))


def inbox_statuses(database_url: str, accessions: Iterable[str]) -> dict[str, int]:
    """Inbox rows of these accessions by status."""
    with session_scope(database_url) as session:
        statuses = session.exec(
            select(InboxMessage.status).where(col(InboxMessage.accession).in_(accessions))
        ).all()
    return tally(statuses)


def outcome_counts(database_url: str, accessions: Iterable[str]) -> dict[str, object]:
    """Inbox rows by status, active appointments and outbox messages by kind, for these
    accessions (other cases may share the database)."""
    wanted = list(accessions)
    with session_scope(database_url) as session:
        appointments = session.exec(
            select(Appointment.id, Appointment.status)
            .join(ImagingStudy, col(ImagingStudy.id) == col(Appointment.study_id))
            .where(col(ImagingStudy.accession).in_(wanted))
        ).all()
        kinds = session.exec(
            select(OutboundMessage.kind).where(
                col(OutboundMessage.appointment_id).in_([id_ for id_, _ in appointments])
            )
        ).all()
    return {
        "inbox": inbox_statuses(database_url, wanted),
        "appointments": sum(status in ACTIVE_APPOINTMENT_STATUSES for _, status in appointments),
        "messages": tally(kinds),
    }
