"""Keep PHI out of logs: a logging filter that masks phone numbers and HL7 patient segments.

The engine itself logs accession and row ids only; this filter is the net under third-party
libraries (HTTP clients, parsers) that may log a request or a raw message.
"""

from __future__ import annotations

import logging
import re

# E.164 and common North American spellings: +15555550123, (555) 555-0123, 555-555-0123.
_PHONE = re.compile(
    r"(?<![\w/])(?:\+\d{10,15}|(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4})(?![\w/])"
)
# A whole HL7 segment carrying identity (PID, NK1, GT1, IN1): everything after the segment id.
_HL7_IDENTITY_SEGMENT = re.compile(r"\b(PID|NK1|GT1|IN1)\|[^\r\n]*")
# Twilio form fields that hold numbers or message text.
_TWILIO_FIELDS = re.compile(r"\b(To|From|Body)=[^&\s]*")


def redact(text: str) -> str:
    text = _HL7_IDENTITY_SEGMENT.sub(r"\1|[redacted]", text)
    text = _TWILIO_FIELDS.sub(r"\1=[redacted]", text)
    return _PHONE.sub("[phone]", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message once, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_redaction(*logger_names: str) -> None:
    """Attach the filter to the handlers of the given loggers (root when none is named).

    Filters on handlers, not loggers, because records from child loggers propagate to a
    parent's handlers without passing the parent logger's own filters.
    """
    for name in logger_names or ("",):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
