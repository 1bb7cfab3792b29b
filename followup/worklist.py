"""The schedulers' worklist: which tables exist and how their cells read (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class WorklistTable:
    key: str  # Prefect artifact key: lowercase letters, digits, dashes
    title: str
    rows: list[dict[str, str]]

    @property
    def description(self) -> str:
        return f"{self.title}: {len(self.rows)}"


def local_cells(rows: Iterable[Mapping[str, Any]], zone: ZoneInfo) -> list[dict[str, str]]:
    """Datetimes shown in the site's time zone; every cell a string; empty tables say so."""

    def cell(value: Any) -> str:
        if isinstance(value, datetime):
            return value.astimezone(zone).strftime("%a %Y-%m-%d %H:%M")
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
    zone: ZoneInfo,
) -> list[WorklistTable]:
    sections = (
        ("worklist-bookings-today", "Follow-ups booked for today", bookings),
        ("worklist-critical-unacknowledged", "Critical findings awaiting a doctor", critical),
        ("worklist-escalations", "Other open escalations", other_escalations),
        ("worklist-unbookable", "Patients the engine could not book", unbookable),
        ("worklist-sms-call-instead", "Texts that could not be delivered: call", undeliverable),
        ("worklist-overdue-referrals", "Referrals overdue for an appointment", overdue_referrals),
    )
    return [WorklistTable(key, title, local_cells(rows, zone)) for key, title, rows in sections]
