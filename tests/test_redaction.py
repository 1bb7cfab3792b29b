"""The log filter masks phone numbers, patient names and identity segments and leaves the rest
readable."""

from __future__ import annotations

import logging

import pytest

from followup.core.redaction import RedactingFilter, install_redaction, redact
from followup.ris.scan import PersonName


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
        # HL7 person names outside a PID segment (PID-5 quoted in a parser's error).
        ("PID-5 'DOE^JANE^Q^^^^L' is too long", "PID-5 '[name]' is too long"),
        ("field |O'Brien-Smith^Mary| invalid", "field |[name]| invalid"),
        ("name Müller^Jürgen", "name [name]"),
        # ...but not message types, codes and identifiers, which share the caret.
        ("ORU^R01^ORU_R01 from RIS", "ORU^R01^ORU_R01 from RIS"),
        ("procedure 72148^MRI LUMBAR SPINE", "procedure 72148^MRI LUMBAR SPINE"),
        ("MRN123^^^HOSP^MR", "MRN123^^^HOSP^MR"),
        # FHIR HumanName in a logged request body, and a logged PersonName (alone or nested).
        (
            '{"name": [{"family": "Doe", "given": ["Jane", "Q"]}], "gender": "female"}',
            '{"name": [{"family": "[name]", "given": "[name]"}], "gender": "female"}',
        ),
        (
            "ref ProviderRef(identifier='1', name=PersonName(family='Doe', given='Jo'))",
            "ref ProviderRef(identifier='1', name=[name])",
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


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_filter_masks_names_passed_as_extra_and_keeps_run_names() -> None:
    logger = logging.getLogger("followup-test-extra")
    handler = _Records()
    logger.addHandler(handler)
    try:
        logger.warning(
            "booked %s",
            "ACC2026000101",
            extra={
                "patient_name": "Jane Doe",
                "family_name": "Doe",
                "patient": "Jane Doe",
                "who": PersonName("Doe", "Jane"),
                "flow_run_name": "scan-ACC2026000101",
                "patient_id": 7,
            },
        )
    finally:
        logger.removeHandler(handler)

    [record] = handler.records
    extras = {key: getattr(record, key) for key in ("patient_name", "family_name", "patient")}
    assert extras == dict.fromkeys(extras, "[name]")
    fields = vars(record)
    assert fields["who"] == "[name]"
    assert fields["flow_run_name"] == "scan-ACC2026000101"
    assert fields["patient_id"] == 7
    assert record.getMessage() == "booked ACC2026000101"


def test_control_characters_in_logged_values_are_escaped_and_the_template_kept() -> None:
    logger = logging.getLogger("followup-test-controls")
    handler = _Records()
    logger.addHandler(handler)
    try:
        logger.warning("inbox %d: %s\n(%s)", 7, "ACC1\r\nINFO forged", ValueError("a\x1b[2Jb"))
        logger.warning("%(accession)s", {"accession": "ACC2\u2028x"})
        logger.warning("f-string ACC3\rINFO forged", extra={"sender": "RIS\nx", "inbox": 3})
    finally:
        logger.removeHandler(handler)

    assert [record.getMessage() for record in handler.records] == [
        "inbox 7: ACC1\\r\\nINFO forged\n(a\\x1b[2Jb)",
        "ACC2\\u2028x",
        "f-string ACC3\\rINFO forged",
    ]
    assert (vars(handler.records[2])["sender"], vars(handler.records[2])["inbox"]) == ("RIS\\nx", 3)
