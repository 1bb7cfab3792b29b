"""The one value every RIS input (HL7 v2 ORU^R01, FHIR DiagnosticReport) is parsed into."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


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
