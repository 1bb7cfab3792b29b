"""Keep PHI out of logs and every record on one line: a logging filter that masks phone
numbers, patient names and HL7 identity segments, and escapes control characters in logged
values.

The engine itself logs accession and row ids only; this filter is the net under third-party
libraries (HTTP clients, parsers) that may log a request or a raw message, and under a
careless `extra=`. It runs on every record, so each pattern is tried only when a cheap
substring test says it could match.

Values come from senders: an accession with CR LF in a FHIR identifier, or an HL7 `\\X0D0A\\`
escape, logged as it is would start a line of its own that reads like the engine's (a forged
"accepted" line in the audit trail of a log file). So every logged value's control characters
(CR, LF, ESC, NEL, the Unicode line separators...) are written as their escapes (`\\r`,
`\\n`, `\\x1b`). Values are the %-arguments and `extra=` values; a record without arguments is
escaped whole, since an f-string puts its values in the message itself. The message template
of a record with arguments is the engine's own text and stays as written; tracebacks too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import lru_cache

from followup.ris.scan import PersonName

# E.164 and common North American spellings: +15555550123, (555) 555-0123, 555-555-0123.
_PHONE = re.compile(
    r"(?<![\w/])(?:\+\d{10,15}|(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4})(?![\w/])"
)
# A whole HL7 segment carrying identity (PID, NK1, GT1, IN1): everything after the segment id.
_HL7_IDENTITY_SEGMENT = re.compile(r"\b(PID|NK1|GT1|IN1)\|[^\r\n]*")
# Twilio form fields that hold numbers or message text.
_TWILIO_FIELDS = re.compile(r"\b(To|From|Body)=[^&\s]*")
# An HL7 person name outside a whole PID segment (PID-5 `DOE^JANE^Q^^^^L`): family and given
# name of letters only, so message types (ORU^R01), codes (72148^MRI) and identifiers
# (MRN1^^^HOSP) stay readable; not after a `^`, so a name is taken from its first component.
_LETTERS = r"[^\W\d_]+(?:['’-][^\W\d_]+)*"
_HL7_NAME = re.compile(rf"(?<![\w^]){_LETTERS}\^{_LETTERS}(?![\w'’-])(?:\^[^\s|^~\\&'\"]*)*")
# FHIR HumanName parts in JSON ("family": "Doe", "given": ["Jane"]).
_FHIR_NAME = re.compile(r'("(?:family|given)"\s*:\s*)(?:"(?:[^"\\]|\\.)*"|\[[^\]]*\])')
# A PersonName's repr, alone or inside a logged ScanCompleted / ProviderRef.
_PERSON_NAME_REPR = re.compile(r"PersonName\([^)]*\)")

# C0 controls but tab, DEL, C1 controls, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# `extra=` keys that hold a person's name. Not every "*_name": Prefect adds flow_name,
# task_run_name and the like, which schedulers need.
_NAME_KEY = re.compile(r"(?:^|_)(?:patient(?:_name)?|(?:family|given|first|last|full)_name)$")


def redact(text: str) -> str:
    text = _HL7_IDENTITY_SEGMENT.sub(r"\1|[redacted]", text)
    if "^" in text:
        text = _HL7_NAME.sub("[name]", text)
    if '"family"' in text or '"given"' in text:
        text = _FHIR_NAME.sub(r'\1"[name]"', text)
    if "PersonName(" in text:
        text = _PERSON_NAME_REPR.sub("[name]", text)
    text = _TWILIO_FIELDS.sub(r"\1=[redacted]", text)
    return _PHONE.sub("[phone]", text)


def escape_controls(text: str) -> str:
    """`text` with each control character written as its escape: one line, no terminal codes."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def _escaped_value(value: object) -> object:
    """The value, or its text with control characters escaped when it holds any."""
    if value is None or isinstance(value, int | float):  # numbers keep %d and %.1f working
        return value
    text = value if isinstance(value, str) else str(value)
    return escape_controls(text) if _CONTROL.search(text) else value


def _escape_values(record: logging.LogRecord) -> None:
    if not record.args:
        message = record.getMessage()
        if _CONTROL.search(message):
            record.msg = escape_controls(message)
        return
    if isinstance(record.args, Mapping):
        record.args = {key: _escaped_value(value) for key, value in record.args.items()}
    else:
        record.args = tuple(_escaped_value(value) for value in record.args)


@lru_cache(maxsize=256)
def _is_name_key(key: str) -> bool:
    return _NAME_KEY.search(key) is not None


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and `extra=` values once, before any handler formats
    them (a JSON formatter writes the extras too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _escape_values(record)
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # Extras are masked by key or type only: running every pattern over Prefect's own
        # extras (run ids and names) on every record would cost more than the message itself.
        for key in vars(record).keys() - _STANDARD_ATTRIBUTES:
            value = getattr(record, key)
            if _is_name_key(key) or isinstance(value, PersonName):
                setattr(record, key, "[name]")
            elif isinstance(value, str) and _CONTROL.search(value):
                setattr(record, key, escape_controls(value))
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
