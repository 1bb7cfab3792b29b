"""The schedulers' worklist: which tables exist and how their cells read (pure)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

# Escalation kinds per table: a critical finding or a patient's red-flag text waits for a doctor
# (and is re-notified until acknowledged), an unbookable patient for a scheduler's call.
CRITICAL_KINDS = ("critical_finding", "patient_worsening")
UNBOOKABLE_KINDS = ("unbookable",)
CRITICAL_KEY = "worklist-critical-unacknowledged"
CRITICAL_TITLE = "Critical findings awaiting a doctor"
FAILED_MESSAGES_KEY = "needs-attention"
FAILED_MESSAGES_TITLE = "Accepted results that failed: waiting for a person or retrying"


@dataclass(frozen=True, slots=True)
class WorklistTable:
    key: str  # Prefect artifact key: lowercase letters, digits, dashes
    title: str
    rows: list[dict[str, str]]

    @property
    def description(self) -> str:
        return f"{self.title}: {len(self.rows)}"


# A scan the engine could not finish alone: a review run's form closes these (no_phone is
# followup.services.visits.NO_PHONE_TASK).
REVIEWED_KINDS = ("needs_review", "unbookable", "unknown_provider", "no_phone")


def action_for(kind: str, escalation_id: int | None, accession: str) -> str:
    """What a person does about an open escalation, short enough to read first in a row."""
    if kind in CRITICAL_KINDS:
        return f"a doctor reads it now, then acknowledges {escalation_id} (acknowledge-escalation)"
    if kind in REVIEWED_KINDS:
        return f"answer the form of run review-{accession}, or call the patient"
    return f"act on the reason, then acknowledge {escalation_id} (acknowledge-escalation)"


def local_cells(rows: Iterable[Mapping[str, Any]], zone: ZoneInfo) -> list[dict[str, str]]:
    """Datetimes shown in the site's time zone, its abbreviation named; every cell a string."""

    def cell(value: Any) -> str:
        if isinstance(value, datetime):
            return value.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")
        return "-" if value is None else str(value)

    return [{column: cell(value) for column, value in row.items()} for row in rows]


def worklist_tables(
    *,
    bookings: list[dict[str, Any]],
    critical: list[dict[str, Any]],
    other_escalations: list[dict[str, Any]],
    unbookable: list[dict[str, Any]],
    undeliverable: list[dict[str, Any]],
    overdue_referrals: list[dict[str, Any]],
    failed_messages: list[dict[str, Any]],
    zone: ZoneInfo,
) -> list[WorklistTable]:
    sections = (
        (FAILED_MESSAGES_KEY, FAILED_MESSAGES_TITLE, failed_messages),
        ("worklist-bookings-today", "Follow-ups booked for today", bookings),
        (CRITICAL_KEY, CRITICAL_TITLE, critical),
        ("worklist-escalations", "Other open escalations", other_escalations),
        ("worklist-unbookable", "Patients the engine could not book", unbookable),
        ("worklist-sms-call-instead", "Texts that could not be delivered: call", undeliverable),
        ("worklist-overdue-referrals", "Referrals overdue for an appointment", overdue_referrals),
    )
    return [WorklistTable(key, title, local_cells(rows, zone)) for key, title, rows in sections]


def failed_messages_table(rows: list[dict[str, Any]], zone: ZoneInfo) -> WorklistTable:
    """The failed-messages table alone, as `worklist_tables` builds it (refreshed by the
    scan-completed run that failed)."""
    return WorklistTable(FAILED_MESSAGES_KEY, FAILED_MESSAGES_TITLE, local_cells(rows, zone))


def critical_table(rows: list[dict[str, Any]], zone: ZoneInfo) -> WorklistTable:
    """The critical-findings table alone, as `worklist_tables` builds it (re-notify refresh)."""
    return WorklistTable(CRITICAL_KEY, CRITICAL_TITLE, local_cells(rows, zone))


def as_text(tables: Iterable[WorklistTable], *, width: int) -> str:
    """The tables for a terminal of `width` columns: each row a record, its first cell (what
    to do) as the heading and the others as `column: value` lines, every value wrapped, never
    cut."""
    lines: list[str] = []
    for table in tables:
        lines += [table.description, "=" * min(width, len(table.description))]
        if not table.rows:
            lines += ["nothing to do", ""]
        for row in table.rows:
            (first, heading), *others = row.items()
            lines += textwrap.wrap(f"- {first}: {heading}", width, subsequent_indent="    ")
            for column, value in others:
                lines += textwrap.wrap(
                    f"{column}: {value}", width, initial_indent="    ", subsequent_indent="      "
                )
            lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class DueNotice:
    """An open escalation whose re-notice is due: ids, accession and provider key, no PHI."""

    escalation_id: int
    kind: str
    accession: str
    target: str  # the ordering provider's identifier, or a queue
    waiting_minutes: int
    notice: int  # this notice's number: 1 for the first re-notice

    def message(self) -> tuple[str, str]:
        """Subject and body of the notice. No finding or patient: notification channels
        (chat, e-mail) are not cleared for PHI; the accession leads to the report in the RIS."""
        what = "Patient red-flag text" if self.kind == "patient_worsening" else "Critical finding"
        subject = f"{what} not acknowledged: {self.accession}"
        body = (
            f"Escalation {self.escalation_id} (accession {self.accession}, for {self.target}) "
            f"has waited {self.waiting_minutes} min without acknowledgement; notice "
            f"{self.notice}. Acknowledge: followup escalations ack {self.escalation_id} "
            f"--by NAME, or POST /escalations/{self.escalation_id}/ack."
        )
        return subject, body
