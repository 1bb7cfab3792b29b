"""Bundled sample reports, re-dated so the demo always shows scans finished today."""

from __future__ import annotations

from datetime import datetime, timedelta

import hl7

from followup.ris.hl7v2 import decode_message


def restamp_for_today(raw: bytes, *, now: datetime) -> bytes:
    """Set MSH-7, OBR-7 and OBR-22 to around `now` (local site time, no offset, as RISes send)."""
    message = hl7.parse(decode_message(raw))
    exam = (now - timedelta(hours=2)).strftime("%Y%m%d%H%M%S")
    final = (now - timedelta(minutes=30)).strftime("%Y%m%d%H%M%S")
    message.assign_field(now.strftime("%Y%m%d%H%M%S"), "MSH", 1, 7)
    message.assign_field(exam, "OBR", 1, 7)
    message.assign_field(final, "OBR", 1, 22)
    return str(message).encode("utf-8")
