"""FHIR R4 DiagnosticReport (alone or in a transaction Bundle) → ScanCompleted: pure parsing.

fhir.resources 8 reads R4 with its `R4B` classes (its default classes are R5); R4B changed
nothing in the elements read here. Choices, and why:

* Locations are FHIRPath-like ("DiagnosticReport.identifier", "Bundle.entry[2].resource.status")
  so an OperationOutcome's `expression` points the sender at the element. Structural problems
  fhir.resources finds (wrong types, unknown elements) are InvalidField; a missing required
  element is MissingField; not JSON or no resource at all is MalformedMessage; a resource or
  Bundle type this endpoint does not take is UnsupportedMessage.
* Accession: the identifier typed ACSN (HL7 v2 table 0203, how US Core and IHE mark it), else
  the first identifier with a value. The same identifier is the report's idempotency key.
* Status: final → F; amended/corrected/appended → C; preliminary/partial → P; cancelled and
  entered-in-error → X (nothing to route). `registered` carries no result and is refused.
* Patient and requester come from `contained` resources or from the Bundle's entries (matched by
  fullUrl, or by Type/id), or from a logical reference's identifier. A literal reference this
  server cannot resolve is refused: fetching it from another server is not this gateway's job.
* Ordering provider: `basedOn` ServiceRequest → `requester` (Practitioner, or PractitionerRole →
  practitioner): its NPI identifier if any, else its first identifier, else its name.
* Text: one `presentedForm` attachment, then `conclusion` under an IMPRESSION heading unless
  the text already contains it. R4 requires the forms to be semantically equivalent, so one
  is read: the first of the kind a reader prefers (plain text, then CDA, HTML, RTF, PDF; see
  `documents.py`), the next one when it cannot be read. Pictures are skipped. When forms are
  sent and none can be read (corrupt, a PDF without a text layer, an unread type, only a
  `url` to fetch) the report is refused (InvalidField) even with a conclusion: the
  findings of the full report may hold a critical finding the conclusion omits. A report
  with neither text nor coded conclusion is refused (MissingField) unless it is preliminary
  or cancelled, as in HL7 v2: it would route as "nothing found".
* Language: `Patient.communication`, the preferred one first, as the two-letter code the SMS
  templates are filed under (BCP 47 "es-MX", ISO 639-2 "spa"); unrecognised is unknown.
* A NUL character (JSON "\\u0000") anywhere is refused (InvalidField at its element), as in
  HL7 v2: no stored text can hold it. Values longer than their columns are refused (scan.py).
* Limits, checked before anything recurses or validates: JSON nested deeper than
  `max_json_depth` is MalformedMessage (Python's JSON parser and the checks below recurse once
  per level: a few thousand brackets raised RecursionError, which no caller expected), found
  by a scan of the bytes (`json_depth_exceeds`) the HTTP gateway also runs before it stores a
  body; a Bundle of more than `max_bundle_entries` entries is UnsupportedMessage, counted on
  the parsed JSON before fhir.resources validates the entries (its cost grows with each).
* Times: `effective[x]` is the exam time, `issued` the result time; a date without a time is
  local midnight in the site zone, like an HL7 DTM without offset.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from itertools import accumulate
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from fhir.resources.R4B.attachment import Attachment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.fhirresourcemodel import FHIRResourceModel
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from followup.errors import (
    InvalidField,
    MalformedMessage,
    MissingField,
    UnsupportedMessage,
)
from followup.ris.documents import DocumentKind, document_kind, document_text, is_picture
from followup.ris.hl7v2 import to_e164
from followup.ris.scan import (
    CodedReportItem,
    PersonName,
    ProviderRef,
    ScanCompleted,
    check_scan_fits,
    language_code,
)

_STATUSES = {
    "final": "F",
    "amended": "C",
    "corrected": "C",
    "appended": "C",
    "preliminary": "P",
    "partial": "P",
    "cancelled": "X",
    "entered-in-error": "X",
}
_BUNDLE_TYPES = {"transaction", "batch", "collection"}
_ACCESSION_TYPE = "ACSN"
_MRN_TYPE = "MR"
_NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
_BOM = "\ufeff"
# Result statuses that may carry no report text yet (preliminary) or at all (cancelled).
_TEXT_OPTIONAL_STATUSES = {"P", "X"}
# The settings' defaults (FOLLOWUP_FHIR_MAX_JSON_DEPTH, FOLLOWUP_FHIR_MAX_BUNDLE_ENTRIES).
DEFAULT_MAX_JSON_DEPTH = 64
DEFAULT_MAX_BUNDLE_ENTRIES = 100
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_A_BRACKET = bytes(set(range(256)) - set(b"[]{}"))
_NESTING_STEP = [0] * 256  # what each bracket does to the depth
for _opening in b"[{":
    _NESTING_STEP[_opening] = 1
for _closing in b"]}":
    _NESTING_STEP[_closing] = -1

_M = TypeVar("_M", bound=FHIRResourceModel)


@dataclass(frozen=True, slots=True)
class FhirReport:
    """The parsed ScanCompleted and where the report sat (for locations and the answer)."""

    scan: ScanCompleted
    identifier: str  # the report's identifier (system|value), its idempotency key
    resource_path: str  # "DiagnosticReport" or "Bundle.entry[1].resource"


@dataclass(slots=True)
class _Resources:
    """Resources a reference may point at: contained ones by '#id', the Bundle's by URL."""

    by_key: dict[str, FHIRResourceModel] = field(default_factory=dict)

    def add(self, resource: FHIRResourceModel, *keys: str | None) -> None:
        for key in keys:
            if key:
                self.by_key[key] = resource

    def get(self, reference: str) -> FHIRResourceModel | None:
        found = self.by_key.get(reference)
        if found is None and "/_history/" in reference:
            found = self.by_key.get(reference.split("/_history/", 1)[0])
        if found is None and reference.count("/") > 1:  # absolute URL: try its Type/id tail
            found = self.by_key.get("/".join(reference.rsplit("/", 2)[-2:]))
        return found


def parse_report(
    raw: bytes | str,
    *,
    site_zone: ZoneInfo,
    phone_region: str = "US",
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    max_bundle_entries: int = DEFAULT_MAX_BUNDLE_ENTRIES,
) -> FhirReport:
    """Validate a DiagnosticReport or a Bundle holding exactly one and extract its scan."""
    raw_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if json_depth_exceeds(raw_bytes, max_json_depth):
        raise MalformedMessage(f"the JSON is nested deeper than {max_json_depth} levels")
    document = _json(raw)
    resource_type = document.get("resourceType")
    nul_at = _first_nul(document, str(resource_type))
    if nul_at is not None:
        raise InvalidField("a NUL character is not FHIR content", location=nul_at)
    if resource_type == "DiagnosticReport":
        report = _validate(DiagnosticReport, document, "DiagnosticReport")
        resources = _Resources()
        path = "DiagnosticReport"
    elif resource_type == "Bundle":
        report, resources, path = _from_bundle(document, max_entries=max_bundle_entries)
    else:
        raise UnsupportedMessage(
            f"resource type {resource_type or '(none)'} is not DiagnosticReport or Bundle",
            location="resourceType",
        )
    for contained in report.contained or []:
        resources.add(contained, f"#{contained.id}" if contained.id else None)
    return _scan(report, resources, path, site_zone=site_zone, phone_region=phone_region)


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON in `raw` nests arrays and objects deeper than `limit`, without parsing.

    Strings are skipped whole, so brackets in text do not count. On broken JSON the count can
    come out higher than a parser would reach (an unterminated string's brackets count), and
    lower only past the point where the parser stops (a stray closing bracket), so a body that
    passes cannot make the parser recurse past `limit`.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:  # most bodies: two C-speed counts
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_A_BRACKET)
    # Past a point where the running depth would go below zero a parser has already failed
    # (a stray closing bracket), so the running sum need not be clamped there.
    return max(accumulate(map(_NESTING_STEP.__getitem__, brackets)), default=0) > limit


def _json(raw: bytes | str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        document = json.loads(text.removeprefix(_BOM))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(document, dict) or "resourceType" not in document:
        raise MalformedMessage("not a FHIR resource (no resourceType)")
    return document


def _first_nul(value: Any, path: str) -> str | None:
    """The FHIRPath-like location of the first string (or key) holding a NUL, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = path if "\x00" in key else _first_nul(item, f"{path}.{key}")
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_nul(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _validate(model: type[_M], document: Mapping[str, Any], path: str) -> _M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = _fhirpath(path, first["loc"])
        if first["type"].endswith("missing"):
            raise MissingField(f"{location} is required", location=location) from exc
        raise InvalidField(f"{location}: {first['msg']}", location=location) from exc


def _fhirpath(path: str, loc: Sequence[int | str]) -> str:
    parts = [path]
    for part in loc:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        elif part != "resource_type":
            parts.append(str(part).removesuffix("__ext"))
    return ".".join(parts)


def _from_bundle(
    document: Mapping[str, Any], *, max_entries: int
) -> tuple[DiagnosticReport, _Resources, str]:
    entries = document.get("entry")
    if isinstance(entries, list) and len(entries) > max_entries:
        raise UnsupportedMessage(
            f"the Bundle has {len(entries)} entries; at most {max_entries} are taken",
            location="Bundle.entry",
        )
    bundle = _validate(Bundle, document, "Bundle")
    if bundle.type not in _BUNDLE_TYPES:
        raise UnsupportedMessage(
            f"Bundle type {bundle.type} is not one of {', '.join(sorted(_BUNDLE_TYPES))}",
            location="Bundle.type",
        )
    resources = _Resources()
    reports: list[tuple[int, DiagnosticReport]] = []
    for index, entry in enumerate(bundle.entry or []):
        resource = entry.resource
        if resource is None:
            continue
        type_id = f"{resource.get_resource_type()}/{resource.id}" if resource.id else None
        resources.add(resource, entry.fullUrl, type_id)
        if isinstance(resource, DiagnosticReport):
            reports.append((index, resource))
    if not reports:
        raise MissingField("the Bundle holds no DiagnosticReport", location="Bundle.entry")
    if len(reports) > 1:
        raise UnsupportedMessage(
            f"the Bundle holds {len(reports)} DiagnosticReports; one per request is supported",
            location="Bundle.entry",
        )
    index, report = reports[0]
    return report, resources, f"Bundle.entry[{index}].resource"


def _scan(
    report: DiagnosticReport,
    resources: _Resources,
    path: str,
    *,
    site_zone: ZoneInfo,
    phone_region: str,
) -> FhirReport:
    identifier, accession = obr_accession(report, path)
    status = _STATUSES.get(report.status or "")
    if status is None:
        raise InvalidField(
            f"status {report.status} carries no result to route", location=f"{path}.status"
        )
    patient_path = f"{path}.subject"
    if report.subject is None:
        raise MissingField("the report has no subject (patient)", location=patient_path)
    patient, mrn = _patient(report.subject, resources, patient_path)
    procedure = next(iter(report.code.coding or []), None)
    coded_items = tuple(
        CodedReportItem(system=coding.system or "", code=coding.code, display=coding.display or "")
        for concept in report.conclusionCode or []
        for coding in concept.coding or []
        if coding.code
    )
    report_text = _report_text(report, path)
    if not (report_text.strip() or coded_items or status in _TEXT_OPTIONAL_STATUSES):
        raise MissingField(
            "the report has no text: no readable presentedForm, no conclusion, no conclusionCode",
            location=f"{path}.presentedForm",
        )
    scan = ScanCompleted(
        accession=accession,
        mrn=mrn,
        patient_name=_name(patient.name if patient else None),
        result_status=status,
        report_text=report_text,
        birth_date=patient.birthDate if patient else None,
        phone_e164=_phone(patient, phone_region) if patient else None,
        language=_language(patient) if patient else None,
        ordering_provider=ordering_provider_of(report, resources),
        procedure_code=(procedure.code or "") if procedure else "",
        procedure_text=report.code.text or ((procedure.display or "") if procedure else ""),
        exam_time=_time(
            report.effectiveDateTime
            or (report.effectivePeriod.start if report.effectivePeriod else None),
            site_zone,
        ),
        result_time=_time(report.issued, site_zone),
        control_id=identifier,
        coded_items=coded_items,
    )
    check_scan_fits(
        scan,
        accession_at=f"{path}.identifier",
        mrn_at="Patient.identifier",
        name_at="Patient.name",
        procedure_at=f"{path}.code",
        text_at=f"{path}.presentedForm",
    )
    return FhirReport(scan=scan, identifier=identifier, resource_path=path)


def obr_accession(report: DiagnosticReport, path: str) -> tuple[str, str]:
    """(system|value as the idempotency key, value as the accession)."""
    chosen = _pick(report.identifier or [], lambda i: _has_type(i.type, _ACCESSION_TYPE))
    if chosen is None:
        raise MissingField(
            "the report has no identifier (accession)", location=f"{path}.identifier"
        )
    identifier, value = chosen
    return f"{identifier.system or ''}|{value}", value


def _pick(
    identifiers: Iterable[Identifier | None], prefer: Callable[[Identifier], bool]
) -> tuple[Identifier, str] | None:
    """The first identifier with a value that `prefer` likes, else the first with a value."""
    valued = [(i, i.value) for i in identifiers if i is not None and i.value]
    return next(iter([pair for pair in valued if prefer(pair[0])] or valued), None)


def _has_type(concept: Any, code: str) -> bool:
    return concept is not None and any(c.code == code for c in concept.coding or [])


def _patient(
    subject: Reference, resources: _Resources, location: str
) -> tuple[Patient | None, str]:
    patient = _resolve(subject, resources, location)
    if patient is None:  # a logical reference: the identifier is all there is
        assert subject.identifier is not None and subject.identifier.value
        return None, subject.identifier.value
    if not isinstance(patient, Patient):
        raise InvalidField(
            f"subject is a {patient.get_resource_type()}, not a Patient", location=location
        )
    chosen = _pick(patient.identifier or [], lambda i: _has_type(i.type, _MRN_TYPE))
    if chosen is None:
        raise MissingField("the patient has no identifier (MRN)", location="Patient.identifier")
    return patient, chosen[1]


def _resolve(
    reference: Reference, resources: _Resources, location: str
) -> FHIRResourceModel | None:
    """The resource a reference points at; None for a logical (identifier-only) reference."""
    if reference.reference:
        found = resources.get(reference.reference)
        if found is None:
            raise InvalidField(
                f"{reference.reference} is neither contained nor in the Bundle",
                location=f"{location}.reference",
            )
        return found
    if reference.identifier is not None and reference.identifier.value:
        return None
    raise MissingField("the reference has neither a reference nor an identifier", location=location)


def _name(names: Iterable[Any] | None) -> PersonName:
    candidates = list(names or [])
    official = [n for n in candidates if n.use == "official"]
    chosen = next(iter(official or candidates), None)
    if chosen is None:
        return PersonName(family="")
    return PersonName(family=chosen.family or "", given=next(iter(chosen.given or []), ""))


def _phone(patient: Patient, region: str) -> str | None:
    """The first valid phone number, mobiles first: SMS needs a mobile."""
    phones = [t for t in patient.telecom or [] if t.system == "phone" and t.value]
    for telecom in sorted(phones, key=lambda t: t.use != "mobile"):
        e164 = to_e164(telecom.value or "", region)
        if e164:
            return e164
    return None


def _language(patient: Patient) -> str | None:
    """The patient's preferred language (else the first one given) that is recognised."""
    spoken = sorted(patient.communication or [], key=lambda c: not c.preferred)
    for communication in spoken:
        concept = communication.language
        for value in [*(c.code for c in concept.coding or []), concept.text]:
            code = language_code(value or "")
            if code:
                return code
    return None


def ordering_provider_of(report: DiagnosticReport, resources: _Resources) -> ProviderRef | None:
    for based_on in report.basedOn or []:
        request = resources.get(based_on.reference) if based_on.reference else None
        if isinstance(request, ServiceRequest) and request.requester is not None:
            provider = _provider(request.requester, resources)
            if provider is not None:
                return provider
    return None


def _provider(reference: Reference, resources: _Resources) -> ProviderRef | None:
    target = resources.get(reference.reference) if reference.reference else None
    if isinstance(target, PractitionerRole):
        return _provider(target.practitioner, resources) if target.practitioner else None
    practitioner = target if isinstance(target, Practitioner) else None
    identifiers = [*(practitioner.identifier or [] if practitioner else []), reference.identifier]
    chosen = _pick(identifiers, lambda i: i.system == _NPI_SYSTEM)
    name = _name(practitioner.name) if practitioner else PersonName(family="")
    if chosen is None and not name.family:
        return None
    return ProviderRef(
        identifier=chosen[1] if chosen else f"name:{name.family}^{name.given}",
        name=name if name.family else None,
        source_field="ServiceRequest.requester",
    )


def _report_text(report: DiagnosticReport, path: str) -> str:
    parts = [_presented_form_text(report.presentedForm or [], f"{path}.presentedForm")]
    conclusion = (report.conclusion or "").strip()
    if conclusion and not any(conclusion in part for part in parts):
        parts.append(f"IMPRESSION:\n{conclusion}")
    return "\n".join(part.replace("\r\n", "\n") for part in parts if part)


def _presented_form_text(forms: Sequence[Attachment], location: str) -> str:
    """The text of the most readable form ("" when none is sent); see the module docstring."""
    candidates = sorted(
        (
            (document_kind(form.contentType or "") or len(DocumentKind) + 1, index, form)
            for index, form in enumerate(forms)
            if not is_picture(form.contentType or "")
        ),
        key=lambda candidate: candidate[:2],
    )
    first_problem: InvalidField | None = None
    for _, index, form in candidates:
        at = f"{location}[{index}]"
        try:
            return _form_text(form, at)
        except InvalidField as problem:
            first_problem = first_problem or problem
    if first_problem is not None:
        raise first_problem
    return ""


def _form_text(form: Attachment, at: str) -> str:
    if form.data is None:
        if form.url:
            raise InvalidField(
                "the report is only a url to a document elsewhere, which this engine does not "
                "fetch; send it as data",
                location=f"{at}.url",
            )
        raise InvalidField("the attachment has neither data nor url", location=at)
    return document_text(form.data, form.contentType or "", location=f"{at}.data").strip()


def _time(value: date | datetime | None, zone: ZoneInfo) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        # FHIR requires an offset with a time; the site zone covers senders that omit it.
        return value.astimezone(zone) if value.tzinfo else value.replace(tzinfo=zone)
    return datetime.combine(value, time(), tzinfo=zone)
