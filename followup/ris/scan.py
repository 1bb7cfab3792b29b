"""The one value every RIS input (HL7 v2 ORU^R01, FHIR DiagnosticReport) is parsed into."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from followup.errors import InvalidField

# Sizes of the columns a ScanCompleted (or an order/ADT update) is stored in; models/tables.py
# declares those columns with these very constants. The parsers refuse a longer value (AE,
# naming the field): accepted, it would fail the flow on every retry on PostgreSQL, while
# SQLite ignores lengths, and the same message must get the same answer on both.
ACCESSION_LENGTH = 64
MRN_LENGTH = 64
NAME_LENGTH = 128
PROVIDER_KEY_LENGTH = 255
PROCEDURE_CODE_LENGTH = 64
PROCEDURE_TEXT_LENGTH = 255
# Refused at intake, where the sender is told (AE), rather than accepted and then failing in
# the classifier (spaCy refuses texts over its max_length): the longest real MRI reports run
# to a few thousand characters, so this is only ever reached by a broken feed.
REPORT_TEXT_LENGTH = 100_000


@dataclass(frozen=True, slots=True)
class PersonName:
    family: str
    given: str = ""

    @property
    def initials(self) -> str:
        """What a scheduler may see in artifacts and logs: initials only."""
        return "".join(part[:1].upper() for part in (self.given, self.family) if part)


@dataclass(frozen=True, slots=True)
class ProviderRef:
    """Ordering provider as the RIS names it (XCN: id, family, given)."""

    identifier: str
    name: PersonName | None = None
    source_field: str = ""  # e.g. "OBR-16": which fallback step supplied it


@dataclass(frozen=True, slots=True)
class CodedReportItem:
    """A coded observation value (OBX-5 of type CE/CWE), kept for coded routing rules."""

    system: str
    code: str
    display: str = ""


@dataclass(frozen=True, slots=True)
class ScanCompleted:
    """A completed, reported imaging study for one patient.

    Times are timezone-aware; HL7 times without an offset are read in the site time zone.
    """

    accession: str
    mrn: str
    patient_name: PersonName
    result_status: str  # F final, P preliminary, C corrected, X cancelled
    report_text: str
    birth_date: date | None = None
    phone_e164: str | None = None
    language: str | None = None  # ISO 639-1, the key of the SMS template folders; None: unknown
    ordering_provider: ProviderRef | None = None
    procedure_code: str = ""
    procedure_text: str = ""
    exam_time: datetime | None = None
    result_time: datetime | None = None
    control_id: str = ""
    sending_facility: str = ""
    coded_items: tuple[CodedReportItem, ...] = field(default_factory=tuple)

    @property
    def final_time(self) -> datetime | None:
        """The moment the follow-up window counts from: result time (OBR-22), else exam (OBR-7)."""
        return self.result_time or self.exam_time


def check_patient_fits(
    *, mrn: str, name: PersonName, provider: ProviderRef | None, mrn_at: str, name_at: str
) -> None:
    """InvalidField at the first patient or provider value its column cannot hold."""
    _fits("patient identifier (MRN)", mrn, MRN_LENGTH, mrn_at)
    _fits("patient family name", name.family, NAME_LENGTH, name_at)
    _fits("patient given name", name.given, NAME_LENGTH, name_at)
    if provider is not None:
        key, where = provider.identifier, provider.source_field
        _fits("ordering provider key", key, PROVIDER_KEY_LENGTH, where)


def check_scan_fits(
    scan: ScanCompleted,
    *,
    accession_at: str,
    mrn_at: str,
    name_at: str,
    procedure_at: str,
    text_at: str,
) -> None:
    """InvalidField at the first value of the scan its column cannot hold: too long, or with
    a NUL (which survives parsing when escaped: HL7 \\X00\\, a base64 FHIR attachment).
    `*_at` are the fields the parser read the values from, for the answer to name."""
    _fits("accession", scan.accession, ACCESSION_LENGTH, accession_at)
    check_patient_fits(
        mrn=scan.mrn,
        name=scan.patient_name,
        provider=scan.ordering_provider,
        mrn_at=mrn_at,
        name_at=name_at,
    )
    _fits("procedure code", scan.procedure_code, PROCEDURE_CODE_LENGTH, procedure_at)
    _fits("procedure text", scan.procedure_text, PROCEDURE_TEXT_LENGTH, procedure_at)
    _fits("report text", scan.report_text, REPORT_TEXT_LENGTH, text_at)


def _fits(what: str, value: str, limit: int | None, location: str) -> None:
    if "\x00" in value:
        raise InvalidField(f"{what} holds a NUL character", location=location)
    if limit is not None and len(value) > limit:
        raise InvalidField(
            f"{what} is {len(value)} characters long, over {limit}", location=location
        )


_LANGUAGE_ALPHA3 = {
    "eng": "en", "spa": "es", "chi": "zh", "zho": "zh", "vie": "vi", "tgl": "tl", "kor": "ko",
    "rus": "ru", "ara": "ar", "fre": "fr", "fra": "fr", "por": "pt", "hat": "ht", "ger": "de",
    "deu": "de", "ita": "it", "pol": "pl", "jpn": "ja", "hin": "hi", "urd": "ur", "per": "fa",
    "fas": "fa", "som": "so",
}  # fmt: skip


def language_code(value: str) -> str | None:
    """A PID-15 code ("en-US", "SPA", "eng", "es") as ISO 639-1; None when not recognised."""
    code = value.strip().lower().replace("_", "-").split("-", 1)[0]
    if len(code) == 2 and code.isascii() and code.isalpha():
        return code
    return _LANGUAGE_ALPHA3.get(code)
