"""The log filter masks phone numbers and identity segments and leaves the rest readable."""

from __future__ import annotations

import logging

import pytest

from followup.redaction import install_redaction, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sent to +15555550123 ok", "sent to [phone] ok"),
        ("call (555) 555-0123 now", "call [phone] now"),
        ("call 555-555-0123.", "call [phone]."),
        ("PID|1||MRN123^^^HOSP||Doe^Jane||19800101\rOBR|1", "PID|[redacted]\rOBR|1"),
        (
            "POST To=%2B15555550123&Body=hello&From=x",
            "POST To=[redacted]&Body=[redacted]&From=[redacted]",
        ),
        (
            "accession ACC2026000101 inbox 42 at 2026-11-26",
            "accession ACC2026000101 inbox 42 at 2026-11-26",
        ),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_installed_filter_masks_records_propagated_from_child_loggers() -> None:
    parent = logging.getLogger("followup-test-parent")
    handler = _Collect()
    parent.addHandler(handler)
    try:
        install_redaction("followup-test-parent")
        install_redaction("followup-test-parent")  # idempotent: one filter, not two
        logging.getLogger("followup-test-parent.library").warning("texting %s", "+15555550123")
    finally:
        parent.removeHandler(handler)

    assert handler.lines == ["texting [phone]"]
    assert len(handler.filters) == 1
