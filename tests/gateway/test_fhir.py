"""FHIR R4 DiagnosticReport / Bundle → ScanCompleted, pure: the project's samples, the official
R4 examples (which reference patients that are not there), and every kind of bad input."""

from __future__ import annotations

import base64
import copy
import json
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from followup.errors import (
    InboundMessageError,
    InvalidField,
    MalformedMessage,
    MissingField,
    UnsupportedMessage,
)
from followup.ris.fhir import FhirReport, json_depth_exceeds, parse_report
from followup.ris.hl7v2 import decode_message, parse_oru
from followup.ris.scan import CodedReportItem, PersonName, ProviderRef
from tests.conftest import SAMPLES, THIRD_PARTY
from tests.ris import sample_documents

ZONE = ZoneInfo("America/New_York")
FHIR = SAMPLES / "fhir"
OFFICIAL = THIRD_PARTY / "fhir-r4"
SPINE = SAMPLES / "hl7" / "spine_pain_degenerative.hl7"
REQUESTER = ProviderRef(
    identifier="1000000003",
    name=PersonName(family="Ramanathan", given="Priya"),
    source_field="ServiceRequest.requester",
)


def load(name: str) -> dict[str, Any]:
    return json.loads((FHIR / name).read_text())


def parse(document: dict[str, Any]) -> FhirReport:
    return parse_report(json.dumps(document).encode(), site_zone=ZONE)


def failure(document: dict[str, Any] | bytes) -> InboundMessageError:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(InboundMessageError) as caught:
        parse_report(raw, site_zone=ZONE)
    return caught.value


def test_report_with_contained_resources() -> None:
    report = parse(load("diagnosticreport_contained.json"))
    scan = report.scan

    assert (report.identifier, report.resource_path) == (
        "urn:oid:2.16.840.1.113883.3.9999.2|ACC2026200103",
        "DiagnosticReport",
    )
    assert (scan.accession, scan.mrn, scan.result_status) == ("ACC2026200103", "DM200103", "F")
    assert scan.patient_name == PersonName(family="Whitaker", given="Thomas")
    assert (scan.birth_date, scan.phone_e164) == (date(1971, 11, 30), "+15085550145")
    assert scan.ordering_provider == REQUESTER
    assert (scan.procedure_code, scan.procedure_text) == (
        "72148",
        "MRI LUMBAR SPINE WITHOUT CONTRAST",
    )
    assert scan.exam_time == datetime(2026, 11, 3, 16, 10, tzinfo=ZONE)
    assert scan.result_time == datetime(2026, 11, 4, 9, 21, tzinfo=ZONE)
    assert scan.exam_time.utcoffset() == ZONE.utcoffset(datetime(2026, 11, 3, 16, 10))
    # presentedForm (text/plain; the PDF beside it is skipped), then the conclusion.
    assert scan.report_text.startswith("EXAM: MRI LUMBAR SPINE WITHOUT CONTRAST\n")
    assert scan.report_text.endswith(
        "\nIMPRESSION:\n1. Broad-based L4-5 disc protrusion with annular fissure, without nerve"
        " root contact. No spinal canal stenosis.\n2. Multilevel lower lumbar facet arthropathy,"
        " most pronounced at L4-5 and L5-S1.\n3. Degenerative disc disease at L5-S1 with Modic"
        " type 2 endplate changes."
    )
    assert "%PDF" not in scan.report_text


def test_transaction_bundle_with_practitioner_role() -> None:
    report = parse(load("bundle_transaction.json"))
    scan = report.scan

    assert report.resource_path == "Bundle.entry[4].resource"
    assert (scan.accession, scan.mrn) == ("ACC2026300103", "DM300103")
    assert scan.ordering_provider == REQUESTER
    assert scan.report_text.startswith("IMPRESSION:\n1. Broad-based L4-5 disc protrusion")


def test_conclusion_already_in_the_text_is_not_repeated() -> None:
    document = load("diagnosticreport_contained.json")
    document["conclusion"] = "Paraspinal soft tissues: Unremarkable."

    assert parse(document).scan.report_text.count("Paraspinal soft tissues") == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("final", "F"),
        ("corrected", "C"),
        ("amended", "C"),
        ("appended", "C"),
        ("preliminary", "P"),
        ("partial", "P"),
        ("cancelled", "X"),
        ("entered-in-error", "X"),
    ],
)
def test_status_mapping(status: str, code: str) -> None:
    document = load("diagnosticreport_contained.json")
    document["status"] = status

    assert parse(document).scan.result_status == code


def test_official_example_made_routable() -> None:
    """DiagnosticReport-f201 (CT head-neck) with an accession and its patient contained."""
    document = json.loads((OFFICIAL / "DiagnosticReport-f201.json").read_text())
    document["identifier"] = [{"value": "F201-ACC"}]
    document["contained"] = [
        {"resourceType": "Patient", "id": "roel", "identifier": [{"value": "f201-mrn"}]}
    ]
    document["subject"] = {"reference": "#roel"}

    scan = parse(document).scan

    assert (scan.accession, scan.mrn) == ("F201-ACC", "f201-mrn")
    assert scan.report_text == "IMPRESSION:\nCT brains: large tumor sphenoid/clivus."
    assert scan.coded_items == (
        CodedReportItem(
            system="http://snomed.info/sct",
            code="188340000",
            display="Malignant tumor of craniopharyngeal duct",
        ),
    )
    # effectiveDateTime carries +01:00: the same instant, in the site zone.
    assert scan.exam_time == datetime(2012, 12, 1, 6, 0, tzinfo=ZONE)


@pytest.mark.parametrize(
    ("example", "error", "location"),
    [
        ("DiagnosticReport-f201.json", MissingField, "DiagnosticReport.identifier"),
        ("DiagnosticReport-ultrasound.json", MissingField, "DiagnosticReport.identifier"),
        ("DiagnosticReport-102.json", MissingField, "DiagnosticReport.identifier"),
        ("DiagnosticReport-pap.json", MissingField, "DiagnosticReport.identifier"),
        ("DiagnosticReport-example-pgx.json", MissingField, "DiagnosticReport.identifier"),
        # an identifier, but the subject is only a display name
        ("DiagnosticReport-gingival-mass.json", MissingField, "DiagnosticReport.subject"),
    ],
)
def test_official_examples_are_refused_with_the_element(
    example: str, error: type[InboundMessageError], location: str
) -> None:
    caught = failure((OFFICIAL / example).read_bytes())

    assert (type(caught), caught.location) == (error, location)


def test_unresolvable_subject_is_refused() -> None:
    document = json.loads((OFFICIAL / "DiagnosticReport-ultrasound.json").read_text())
    document["identifier"] = [{"value": "US-1"}]

    caught = failure(document)

    assert (type(caught), caught.location) == (InvalidField, "DiagnosticReport.subject.reference")
    assert "Patient/example" in caught.reason


def test_logical_subject_reference_gives_the_mrn() -> None:
    document = load("diagnosticreport_contained.json")
    document["subject"] = {"identifier": {"system": "urn:mrn", "value": "LOGICAL-1"}}

    scan = parse(document).scan

    assert (scan.mrn, scan.patient_name.family, scan.phone_e164) == ("LOGICAL-1", "", None)


def test_accession_typed_acsn_wins_over_the_first_identifier() -> None:
    document = load("diagnosticreport_contained.json")
    document["identifier"].insert(0, {"system": "urn:placer", "value": "PLACER-9"})

    assert parse(document).scan.accession == "ACC2026200103"


def test_date_only_effective_time_is_local_midnight() -> None:
    document = load("diagnosticreport_contained.json")
    document["effectiveDateTime"] = "2026-11-03"

    assert parse(document).scan.exam_time == datetime(2026, 11, 3, tzinfo=ZONE)


def test_latin1_presented_form() -> None:
    document = load("diagnosticreport_contained.json")
    document["presentedForm"] = [
        {
            "contentType": "text/plain; charset=ISO-8859-1",
            "data": base64.b64encode("Núñez: no stenosis.".encode("latin-1")).decode(),
        }
    ]

    assert parse(document).scan.report_text.startswith("Núñez: no stenosis.\n")


def _bundle_patient_with_bad_birth_date() -> dict[str, Any]:
    bundle = load("bundle_transaction.json")
    bundle["entry"][0]["resource"]["birthDate"] = "1971-13-30"
    return bundle


def _report(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(load("diagnosticreport_contained.json"))
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


@pytest.mark.parametrize(
    ("document", "error", "location"),
    [
        (b"{not json", MalformedMessage, None),
        (b"[1, 2]", MalformedMessage, None),
        ({"resourceType": "Patient"}, UnsupportedMessage, "resourceType"),
        ({"resourceType": "Bundle", "type": "searchset"}, UnsupportedMessage, "Bundle.type"),
        ({"resourceType": "Bundle", "type": "transaction"}, MissingField, "Bundle.entry"),
        (_report(status=None), MissingField, "DiagnosticReport.status"),
        (_report(status="registered"), InvalidField, "DiagnosticReport.status"),
        (_report(subject={"reference": 5}), InvalidField, "DiagnosticReport.subject.reference"),
        (_report(unknownElement=1), InvalidField, "DiagnosticReport.unknownElement"),
        (_report(subject=None), MissingField, "DiagnosticReport.subject"),
        (_report(identifier=[{"system": "urn:x"}]), MissingField, "DiagnosticReport.identifier"),
        (
            _report(subject={"reference": "#req"}),  # a Practitioner
            InvalidField,
            "DiagnosticReport.subject",
        ),
        (
            _report(presentedForm=[{"contentType": "text/plain; charset=utf-8", "data": "/w=="}]),
            InvalidField,
            "DiagnosticReport.presentedForm[0].data",
        ),
        (
            _bundle_patient_with_bad_birth_date(),
            InvalidField,
            "Bundle.entry[0].resource.birthDate",
        ),
    ],
)
def test_bad_input_names_the_element(
    document: dict[str, Any] | bytes, error: type[InboundMessageError], location: str | None
) -> None:
    caught = failure(document)

    assert (type(caught), caught.location) == (error, location)


def test_patient_without_identifier() -> None:
    document = load("diagnosticreport_contained.json")
    del document["contained"][0]["identifier"]

    caught = failure(document)

    assert (type(caught), caught.location) == (MissingField, "Patient.identifier")


def test_same_report_as_hl7_gives_the_same_text_as_its_hl7_twin() -> None:
    """The FHIR sample carries the HL7 sample's report: FINDINGS and IMPRESSION as sent."""
    hl7_text = parse_oru(decode_message(SPINE.read_bytes()), site_zone=ZONE).report_text

    assert parse(load("diagnosticreport_contained.json")).scan.report_text == hl7_text


def test_patient_language_from_the_preferred_communication() -> None:
    assert parse(load("diagnosticreport_contained.json")).scan.language == "en"  # "en-US"

    document = load("bundle_transaction.json")
    patient = next(
        e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    patient["communication"] = [
        {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
        {
            "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-MX"}]},
            "preferred": True,
        },
    ]

    assert parse(document).scan.language == "es"


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ({"coding": [{"system": "urn:ietf:bcp:47", "code": "vi"}]}, "vi"),
        (
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0296", "code": "SPA"}
                ]
            },
            "es",
        ),
        ({"coding": [{"system": "urn:x-local", "code": "SPANISH"}], "text": "es"}, "es"),
        ({"text": "Klingon"}, None),
    ],
)
def test_patient_language_codes(language: dict[str, Any], code: str | None) -> None:
    document = load("diagnosticreport_contained.json")
    document["contained"][0]["communication"] = [{"language": language}]

    assert parse(document).scan.language == code


def test_patient_without_communication_has_no_language() -> None:
    document = load("diagnosticreport_contained.json")
    del document["contained"][0]["communication"]

    assert parse(document).scan.language is None


def _with_patient(**changes: Any) -> dict[str, Any]:
    document = _report()
    document["contained"][0].update(changes)
    return document


@pytest.mark.parametrize(
    ("document", "location"),
    [
        (_report(conclusion="No acute\u0000 findings."), "DiagnosticReport.conclusion"),
        (
            _with_patient(name=[{"family": "Whit\u0000aker"}]),
            "DiagnosticReport.contained[0].name[0].family",
        ),
        (
            _report(
                presentedForm=[
                    {"contentType": "text/plain", "data": base64.b64encode(b"a\x00b").decode()}
                ]
            ),
            "DiagnosticReport.presentedForm",
        ),
        (
            _with_patient(identifier=[{"value": "M" * 65}]),
            "Patient.identifier",
        ),
        (_with_patient(name=[{"family": "W" * 129}]), "Patient.name"),
        (_report(code={"text": "P" * 256}), "DiagnosticReport.code"),
        (
            _report(identifier=[{"system": "urn:x", "value": "A" * 65}]),
            "DiagnosticReport.identifier",
        ),
    ],
)
def test_a_value_its_column_cannot_hold_is_refused_naming_the_element(
    document: dict[str, Any], location: str
) -> None:
    caught = failure(document)

    assert (type(caught), caught.location) == (InvalidField, location)


# --- report text from presentedForm and conclusion ---------------------------------------------


def _form(content_type: str, data: bytes) -> dict[str, str]:
    return {"contentType": content_type, "data": base64.b64encode(data).decode()}


NO_TEXT_PDF = _form("application/pdf", sample_documents.pdf_with_lines([]))
PICTURE = _form("image/jpeg", b"\xff\xd8\xff")


def test_report_only_in_a_pdf_presented_form_is_read() -> None:
    scan = parse(load("diagnosticreport_pdf.json")).scan

    assert scan.report_text.split("\n") == sample_documents.PDF_REPORT
    assert (FHIR / "diagnosticreport_pdf.json").read_text() == sample_documents.fhir_pdf_sample()


def test_a_cda_presented_form_is_read_with_its_section_titles() -> None:
    cda = sample_documents.cda_with_sections([("Impression", ["Grade 1 anterolisthesis."])])

    scan = parse(_report(conclusion=None, presentedForm=[_form("text/xml", cda.encode())])).scan

    assert scan.report_text == "Impression:\nGrade 1 anterolisthesis."


def test_an_html_form_is_preferred_to_a_pdf_of_the_same_report() -> None:
    pdf = _form("application/pdf", sample_documents.pdf_with_lines(["IMPRESSION: from the PDF."]))
    html = _form("text/html", b"<p>IMPRESSION:</p><p>Grade 1 anterolisthesis.</p>")

    scan = parse(_report(conclusion=None, presentedForm=[pdf, html])).scan

    assert scan.report_text == "IMPRESSION:\nGrade 1 anterolisthesis."


def test_the_next_form_is_read_when_the_preferred_one_cannot_be() -> None:
    pdf = _form("application/pdf", sample_documents.pdf_with_lines(["IMPRESSION: Normal."]))
    broken_text = _form("text/plain; charset=utf-8", b"\xff")

    scan = parse(_report(conclusion=None, presentedForm=[pdf, broken_text])).scan

    assert scan.report_text == "IMPRESSION: Normal."


def test_pictures_are_skipped_and_the_conclusion_is_read() -> None:
    scan = parse(_report(conclusion="No acute abnormality.", presentedForm=[PICTURE])).scan

    assert scan.report_text == "IMPRESSION:\nNo acute abnormality."


@pytest.mark.parametrize(
    ("forms", "reason", "location"),
    [
        ([NO_TEXT_PDF], "no text layer", "DiagnosticReport.presentedForm[0].data"),
        (
            [PICTURE, {"contentType": "application/pdf", "url": "https://ris.example.org/r.pdf"}],
            "only a url",
            "DiagnosticReport.presentedForm[1].url",
        ),
        (
            [_form("application/msword", b"\xd0\xcf")],
            "msword",
            "DiagnosticReport.presentedForm[0].data",
        ),
        (
            [{"contentType": "application/pdf"}],
            "neither data nor url",
            "DiagnosticReport.presentedForm[0]",
        ),
    ],
    ids=["pdf-without-text", "url-only", "msword", "empty-form"],
)
def test_forms_that_cannot_be_read_refuse_the_report_even_with_a_conclusion(
    forms: list[dict[str, str]], reason: str, location: str
) -> None:
    caught = failure(_report(presentedForm=forms))

    assert (type(caught), caught.location, caught.ack_code) == (InvalidField, location, "AE")
    assert reason in caught.reason


def test_a_final_report_without_any_text_is_refused() -> None:
    caught = failure(_report(presentedForm=[PICTURE], conclusion=None))

    assert (type(caught), caught.location) == (MissingField, "DiagnosticReport.presentedForm")


@pytest.mark.parametrize(("status", "code"), [("preliminary", "P"), ("cancelled", "X")])
def test_a_preliminary_or_cancelled_report_may_have_no_text(status: str, code: str) -> None:
    scan = parse(_report(status=status, presentedForm=None, conclusion=None)).scan

    assert (scan.result_status, scan.report_text) == (code, "")


def test_a_coded_conclusion_alone_is_a_report() -> None:
    coded = [{"coding": [{"system": "http://snomed.info/sct", "code": "274152003"}]}]

    scan = parse(_report(presentedForm=None, conclusion=None, conclusionCode=coded)).scan

    assert (scan.report_text, [item.code for item in scan.coded_items]) == ("", ["274152003"])


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("raw", "limit", "exceeds"),
    [
        (_nested(64), 64, False),
        (_nested(65), 64, True),
        (b'{"a": {"b": [[1], {"c": []}]}}', 5, False),
        (b'{"a": {"b": [[[[1]]], {"c": []}]}}', 5, True),
        # Brackets in strings are text, escaped quotes included; keys are strings too.
        (b'{"t": "' + b"[{" * 100 + b'", "u": "\\"[[[["}', 1, False),
        (b'{"[[[[": 1}', 1, False),
        # An unterminated string's brackets count: a parser reading on would recurse on them.
        (b'{"t": "[[[[', 3, True),
        # A stray closing bracket ends what a parser reads; nothing after it nests.
        (b"[]]]]]" + _nested(3), 3, False),
    ],
)
def test_json_depth_is_read_from_the_bytes(raw: bytes, limit: int, exceeds: bool) -> None:
    assert json_depth_exceeds(raw, limit) is exceeds


def test_json_nested_past_the_limit_is_malformed_not_a_recursion_error() -> None:
    document = json.dumps(load("diagnosticreport_contained.json") | {"extension": "X"}).encode()
    deep = document.replace(b'"X"', _nested(100_000))

    error = failure(deep)

    assert isinstance(error, MalformedMessage)
    assert error.reason == "the JSON is nested deeper than 64 levels"


def test_a_bundle_over_the_entry_limit_is_refused_before_validation() -> None:
    bundle = load("bundle_transaction.json")
    raw = json.dumps(bundle).encode()
    crowded = json.dumps(bundle | {"entry": [*bundle["entry"], {"resource": 5}]}).encode()

    fits = parse_report(raw, site_zone=ZONE, max_bundle_entries=len(bundle["entry"]))
    with pytest.raises(UnsupportedMessage) as caught:
        # The extra entry is not even a resource: validation would have said so first.
        parse_report(crowded, site_zone=ZONE, max_bundle_entries=len(bundle["entry"]))

    assert fits.resource_path.startswith("Bundle.entry")
    assert (caught.value.location, caught.value.reason) == (
        "Bundle.entry",
        "the Bundle has 6 entries; at most 5 are taken",
    )
