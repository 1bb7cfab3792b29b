"""HL7 v2 parsing: the project's sample messages, the public third-party samples, edge cases."""

from __future__ import annotations

import base64
import textwrap
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import hl7
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from followup.errors import (
    InboundMessageError,
    InvalidField,
    MalformedMessage,
    MissingField,
    UnsupportedMessage,
)
from followup.ris.hl7v2 import (
    MessageHeader,
    decode_message,
    message_header,
    parse_message,
    parse_oru,
)
from followup.ris.scan import CodedReportItem, PersonName, ProviderRef, ScanCompleted
from tests.conftest import THIRD_PARTY
from tests.ris import sample_documents

SAMPLES = Path(__file__).parents[1] / "samples" / "hl7"
SHARED_HL7 = THIRD_PARTY / "hl7"
DCM4CHE = SHARED_HL7 / "dcm4che"
FHIR_CONVERTER = SHARED_HL7 / "fhir-converter"

ZONE = ZoneInfo("America/New_York")


def load(path: Path) -> str:
    return decode_message(path.read_bytes())


def parse(path: Path) -> ScanCompleted:
    return parse_oru(load(path), site_zone=ZONE)


def local(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=ZONE)


# ---------------------------------------------------------------------------------------------
# The project's own samples (tests/samples/hl7)

GOOD_SAMPLES = {
    # file stem: accession, MRN, status, ordering provider id, phone, procedure code, exam, result
    "spine_neurology_root_compression": (
        "ACC2026000101", "DM100101", "F", "1000000001", "+14135550123", "72148",
        local(2026, 11, 3, 10, 15), local(2026, 11, 3, 13, 42),
    ),
    "spine_orthopedics_spondylolisthesis": (
        "ACC2026000102", "DM100102", "F", "1000000002", "+16175550134", "72148",
        local(2026, 11, 3, 11, 40, 30), local(2026, 11, 3, 15, 18, 5),
    ),
    "spine_pain_degenerative": (
        "ACC2026000103", "DM100103", "F", "1000000003", "+15085550145", "72148",
        local(2026, 11, 3, 16, 10), local(2026, 11, 4, 9, 21),
    ),
    "si_joint_rheumatology_sacroiliitis": (
        "ACC2026000104", "DM100104", "F", "1000000004", "+17815550156", "72195",
        local(2026, 11, 4, 12, 5), local(2026, 11, 4, 14, 46),
    ),
    "spine_critical_cord_compression": (
        "ACC2026000105", "DM100105", "F", "1000000005", "+14135550162", "72141",
        local(2026, 11, 4, 9, 40), local(2026, 11, 4, 11, 2),
    ),
    "brain_neurology_demyelination": (
        "ACC2026000106", "DM100106", "F", "1000000001", "+16175550171", "70553",
        local(2026, 11, 5, 8, 15), local(2026, 11, 5, 10, 12),
    ),
    "spine_normal": (
        "ACC2026000107", "DM100107", "F", "1000000002", "+15085550178", "72141",
        local(2026, 11, 5, 12, 30), local(2026, 11, 5, 14, 31),
    ),
    "spine_inconclusive": (
        "ACC2026000108", "DM100108", "F", "1000000003", "+17815550183", "72148",
        local(2026, 11, 5, 17, 45), local(2026, 11, 6, 9, 15),
    ),
    "spine_preliminary": (
        "ACC2026000109", "DM100109", "P", "1000000004", "+14135550190", "72146",
        local(2026, 11, 6, 15, 20), local(2026, 11, 6, 17, 11),
    ),
    "spine_corrected": (
        "ACC2026000101", "DM100101", "C", "1000000001", "+14135550123", "72148",
        local(2026, 11, 3, 10, 15), local(2026, 11, 5, 8, 20),
    ),
}  # fmt: skip

BAD_SAMPLES = {
    # file stem: error type, ERR location, ACK code
    "bad_no_accession": (MissingField, "OBR-3", "AE"),
    "bad_no_mrn": (MissingField, "PID-3", "AE"),
    "bad_birth_date": (InvalidField, "PID-7", "AE"),
    "bad_wrong_type": (UnsupportedMessage, "MSH-9", "AR"),
    "bad_ed_pdf_no_text_layer": (InvalidField, "OBX-5", "AE"),
    "bad_rp_reference": (InvalidField, "OBX-5", "AE"),
}

# Reports whose text is not in TX OBX lines (written by tests/ris/sample_documents.py).
TEXT_CARRIER_SAMPLES = {
    "text_nte_after_obr": sample_documents.NTE_AFTER_OBR_REPORT,
    "text_nte_after_obx": [
        "FINDINGS:",
        *sample_documents.NTE_AFTER_OBX_FINDINGS,
        "IMPRESSION:",
        *sample_documents.NTE_AFTER_OBX_IMPRESSION,
    ],
    "text_ft_escapes": [
        "EXAM: MRI LUMBAR SPINE WITHOUT CONTRAST",
        "TECHNIQUE: Sagittal T1, T2 & STIR; axial T1 and T2.",
        "FINDINGS:",
        "L4-5: Broad-based disc protrusion with annular fissure, without nerve root contact.",
        "L5-S1: Degenerative disc disease with Modic type 2 endplate changes"
        " (T1 ^ T2 hyperintense).",
        "Facets: Multilevel facet arthropathy, most pronounced at L4-5 \\ L5-S1.",
        "IMPRESSION:",
        "1. Broad-based L4-5 disc protrusion without nerve root contact.",
        "2. Lower lumbar facet arthropathy.",
        "3. Degenerative disc disease at L5-S1, Modic type 2, reviewed by Dr. Müller.",
    ],
    "text_ed_pdf": sample_documents.PDF_REPORT,
    "text_ed_cda": [
        line
        for title, paragraphs in sample_documents.CDA_SECTIONS
        for line in [f"{title}:", *paragraphs]
    ],
}

# Each heading in report order; the second may be spelled either way.
REPORT_HEADINGS = (
    ("EXAM:",),
    ("CLINICAL HISTORY:", "INDICATION:"),
    ("TECHNIQUE:",),
    ("COMPARISON:",),
    ("FINDINGS:",),
    ("IMPRESSION:",),
)


def test_every_sample_file_is_covered_and_uses_cr_separators() -> None:
    files = sorted(SAMPLES.glob("*.hl7"))
    assert sorted(path.stem for path in files) == sorted(
        [*GOOD_SAMPLES, *BAD_SAMPLES, *TEXT_CARRIER_SAMPLES]
    )
    assert [path.name for path in files if b"\n" in path.read_bytes()] == []


@pytest.mark.parametrize(("stem", "expected"), GOOD_SAMPLES.items(), ids=list(GOOD_SAMPLES))
def test_sample_parses_to_expected_values(stem: str, expected: tuple[object, ...]) -> None:
    scan = parse(SAMPLES / f"{stem}.hl7")

    assert (
        scan.accession,
        scan.mrn,
        scan.result_status,
        scan.ordering_provider.identifier if scan.ordering_provider else None,
        scan.phone_e164,
        scan.procedure_code,
        scan.exam_time,
        scan.result_time,
    ) == expected
    assert scan.exam_time.utcoffset() == timedelta(hours=-5)  # type: ignore[union-attr]
    assert scan.sending_facility == "DEMO_SPINE_NEURO"


@pytest.mark.parametrize("stem", list(GOOD_SAMPLES))
def test_sample_report_keeps_sections_in_order_with_one_line_per_obx(stem: str) -> None:
    path = SAMPLES / f"{stem}.hl7"
    lines = parse(path).report_text.split("\n")
    tx_lines = load(path).count("|TX|")

    positions = [
        next(i for i, line in enumerate(lines) if line.startswith(spellings))
        for spellings in REPORT_HEADINGS
    ]
    assert positions == sorted(positions)
    assert len(lines) == tx_lines


def test_root_compression_sample_reads_the_full_report() -> None:
    scan = parse(SAMPLES / "spine_neurology_root_compression.hl7")
    lines = scan.report_text.split("\n")

    assert scan.patient_name == PersonName(family="Harper", given="Jonah")
    assert scan.birth_date == date(1978, 4, 12)
    assert scan.ordering_provider == ProviderRef(
        identifier="1000000001",
        name=PersonName(family="Okafor", given="Adaeze"),
        source_field="OBR-16",
    )
    assert scan.procedure_text == "MRI LUMBAR SPINE WITHOUT CONTRAST"
    assert scan.control_id == "DEMO-ORU-0001"
    assert scan.coded_items == ()
    assert lines[0] == "EXAM: MRI LUMBAR SPINE WITHOUT CONTRAST"
    assert lines[2] == (
        "TECHNIQUE: Multiplanar multisequence MRI of the lumbar spine without intravenous "
        "contrast: sagittal T1, T2 & STIR; axial T1 and T2."
    )
    assert lines[-3:] == [
        "IMPRESSION:",
        "1. Left paracentral L5-S1 disc extrusion with caudal migration compressing the "
        "descending left S1 nerve root.",
        "2. Mild L4-5 disc bulge without stenosis.",
    ]


def test_corrected_sample_supersedes_the_original_accession() -> None:
    original = parse(SAMPLES / "spine_neurology_root_compression.hl7")
    corrected = parse(SAMPLES / "spine_corrected.hl7")
    lines = corrected.report_text.split("\n")

    assert (corrected.accession, corrected.mrn) == (original.accession, original.mrn)
    assert corrected.control_id == "DEMO-ORU-0010"
    assert lines[0] == "CORRECTED REPORT"
    assert lines[-1].startswith("ADDENDUM: Laterality corrected on 2026-11-05.")
    assert "compressing the descending right S1 nerve root." in corrected.report_text


def test_spondylolisthesis_sample_carries_coded_impression_items() -> None:
    scan = parse(SAMPLES / "spine_orthopedics_spondylolisthesis.hl7")

    assert scan.coded_items == (
        CodedReportItem(system="SCT", code="274152003", display="Spondylolisthesis"),
        CodedReportItem(system="SCT", code="76107001", display="Spinal stenosis"),
    )
    assert scan.report_text.split("\n")[-1] == (
        "2. Severe bilateral neural foraminal stenosis at L4-5."
    )


def test_sacroiliitis_sample_keeps_the_utf8_patient_name() -> None:
    scan = parse(SAMPLES / "si_joint_rheumatology_sacroiliitis.hl7")

    assert scan.patient_name == PersonName(family="Núñez", given="Sofía")


def _with_pid_field(text: str, number: int, value: str) -> str:
    segments = text.split("\r")
    for index, segment in enumerate(segments):
        if segment.startswith("PID|"):
            fields = segment.split("|")
            fields.extend([""] * (number + 1 - len(fields)))
            fields[number] = value
            segments[index] = "|".join(fields)
    return "\r".join(segments)


@pytest.mark.parametrize(("pid_15", "language"), [("SPA^Spanish^ISO639", "es"), ("en-US", "en")])
def test_primary_language_pid_15_is_read_as_iso_639_1(pid_15: str, language: str) -> None:
    text = _with_pid_field(load(SAMPLES / "spine_pain_degenerative.hl7"), 15, pid_15)

    assert parse_oru(text, site_zone=ZONE).language == language


def test_a_result_without_pid_15_leaves_the_language_unknown() -> None:
    assert parse(SAMPLES / "spine_pain_degenerative.hl7").language is None


def test_normal_sample_has_the_rule_out_only_in_the_indication() -> None:
    lines = parse(SAMPLES / "spine_normal.hl7").report_text.split("\n")

    assert lines[1] == (
        "INDICATION: Neck pain and intermittent bilateral arm tingling; r/o cord compression."
    )
    assert lines[-2:] == [
        "IMPRESSION:",
        "No acute abnormality. No disc herniation. No spinal canal stenosis. No cord compression.",
    ]


@pytest.mark.parametrize(
    ("stem", "lines"), TEXT_CARRIER_SAMPLES.items(), ids=list(TEXT_CARRIER_SAMPLES)
)
def test_report_text_is_read_from_its_carrier(stem: str, lines: list[str]) -> None:
    scan = parse(SAMPLES / f"{stem}.hl7")

    assert scan.report_text.split("\n") == lines


def test_text_carrier_samples_are_what_their_generator_writes() -> None:
    for name, text in sample_documents.hl7_samples().items():
        assert (SAMPLES / name).read_bytes() == text.encode(), name


@pytest.mark.parametrize(("stem", "expected"), BAD_SAMPLES.items(), ids=list(BAD_SAMPLES))
def test_bad_sample_is_rejected_with_location(
    stem: str, expected: tuple[type[InboundMessageError], str, str]
) -> None:
    error_type, location, ack_code = expected

    with pytest.raises(error_type) as caught:
        parse(SAMPLES / f"{stem}.hl7")

    assert (caught.value.location, caught.value.ack_code) == (location, ack_code)


def test_header_of_a_rejected_message_is_still_readable() -> None:
    header = message_header(parse_message(load(SAMPLES / "bad_wrong_type.hl7")))

    assert header == MessageHeader(
        message_type="ADT^A01",
        trigger="A01",
        control_id="DEMO-ADT-0001",
        processing_id="P",
        version="2.5.1",
        sending_application="DEMO_RIS",
        sending_facility="DEMO_SPINE_NEURO",
        receiving_application="FOLLOWUP",
        receiving_facility="DEMO_SPINE_NEURO",
        encoding_characters="|^~\\&",
    )


# ---------------------------------------------------------------------------------------------
# Public third-party samples (tests/thirdparty/hl7)

SR_REPORT_LINES = [
    "The right kidney is slightly enlarged, but otherwise normal",
    "There is a small mass in the left lung measuring approximately 3mmx2mm.",
    "4mmx6mm",
    "5mmx7mm",
    "Infiltrate probably representing bronchopneumonia in the rightlower lobe. Also pulmonary "
    "venous congestion cardiomegaly and cephalization, indicating early congestive heart failure.",
    "Follow-up with CT of the Abdomen without contrast is recommended in 6 months.",
    "Patricia R. Smith, MD, requests a consultation to review findings. Contact at "
    "1-732-123-4567 during normal business hours.",
    "Patricia R. Smith, MD, requests a feedback regarding whether or not recommended follow-up "
    "study was ordered. Contact at 1-414-123-4567 during normal business hours.",
    "Internal technical scan parameters: Organ Characteristic = Abdomen, Body Size = Adult, "
    "Body Region = Body, X-ray Modulation Type = NONE",
]
DCM4CHE_REQUESTER = ProviderRef(
    identifier="name:RequestingPhysicianFN^RequestingPhysicianGN",
    name=PersonName(family="RequestingPhysicianFN", given="RequestingPhysicianGN"),
    source_field="OBR-16",
)


def test_dcm4che_structured_report() -> None:
    scan = parse(DCM4CHE / "ORU^R01-SR.hl7")

    assert scan == ScanCompleted(
        accession="FillerOrderNumberImagingServiceRequest",  # a literal placeholder in OBR-3
        mrn="PID_1",
        patient_name=PersonName(family="Smith", given="Lucy"),
        result_status="F",
        report_text="\n".join(SR_REPORT_LINES),
        birth_date=date(2014, 10, 14),
        phone_e164=None,
        ordering_provider=DCM4CHE_REQUESTER,
        procedure_code="10637-7",
        procedure_text="Microscopic Observation",
        exam_time=local(2022, 3, 24, 19, 30, 57),
        result_time=None,
        control_id="1001129",
        sending_facility="XYZ_RADIOLOGY",
        coded_items=(
            CodedReportItem(system="SCT", code="300332007", display="Liver Mass"),
            CodedReportItem(system="SCT", code="309088003", display="Renal Mass"),
            CodedReportItem(
                system="ICD-10", code="C65.2", display="Malignant neoplasm of left renal pelvis"
            ),
            CodedReportItem(system="ACR", code="51.71", display="Congestive heartfailure"),
            CodedReportItem(system="C-110", code="CT10", display="CT of pelvis follow-up"),
        ),
    )


def test_dcm4che_cda_narrative_is_the_report_text_with_its_section_titles() -> None:
    scan = parse(DCM4CHE / "ORU^R01-CDA.hl7")  # ED ^Text^text/xml^ASCII^, "&amp;" unescaped
    lines = scan.report_text.split("\n")

    assert (scan.accession, scan.mrn, scan.result_status) == (
        "FillerOrderNumberImagingServiceRequest",
        "PID_1",
        "F",
    )
    assert lines[:5] == [
        "Clinical Information:",
        "Indications for Procedure:",
        "Suspected lung tumor",
        "History:",
        "History - Sore throat.",
    ]
    assert lines[-2:] == [
        "Impressions:",
        "Impression - No acute cardiopulmonary process. Round density in left superior hilus,"
        " further evaluation with CT is recommended as underlying malignancy is not excluded.",
    ]
    assert "Findings:" in lines
    assert "1.2.392" not in scan.report_text  # the UID observations are not report text


def test_dcm4che_pdf_with_a_line_break_inside_its_base64_is_refused() -> None:
    """The file breaks OBX-5 with a CR, which ends the segment: the Base64 is cut short."""
    with pytest.raises(InvalidField, match="line break inside the OBX") as caught:
        parse(DCM4CHE / "ORU^R01-PDF.hl7")

    assert (caught.value.location, caught.value.ack_code) == ("OBX", "AE")


def test_dcm4che_pdf_text_layer_is_the_report_text_once_its_base64_is_whole() -> None:
    text = load(DCM4CHE / "ORU^R01-PDF.hl7").replace("lZg0KMjcxN\rA0K", "lZg0KMjcxNA0K")

    lines = oru(text).report_text.split("\n")

    assert lines[:2] == ["A Simple PDF File", "This is a small demonstration .pdf file -"]
    assert lines[-1] == "Boring. More, a little more text. The end, and just as well."


def test_dcm4che_legacy_oru_with_status_in_obr24_is_missing_obr25() -> None:
    with pytest.raises(MissingField) as caught:
        parse(DCM4CHE / "legacy_ORU^R01.hl7")

    assert caught.value.location == "OBR-25"


def test_dcm4che_order_that_lies_about_its_charset_decodes_and_is_rejected() -> None:
    text = load(DCM4CHE / "OMI^O23-ImagingOrder.hl7")  # declares 8859/1, holds UTF-8

    assert "motor score from 12 –35." in text
    with pytest.raises(UnsupportedMessage) as caught:
        parse_oru(text, site_zone=ZONE)
    assert (caught.value.location, caught.value.ack_code) == ("MSH-9", "AR")


def test_dcm4che_general_order_named_orm_is_really_omi() -> None:
    with pytest.raises(UnsupportedMessage, match=r"OMI\^O23") as caught:
        parse(DCM4CHE / "ORM^O01-GeneralOrder.hl7")

    assert caught.value.location == "MSH-9"


NOT_RESULTS = sorted(
    [path for path in DCM4CHE.glob("*.hl7") if "ORU" not in path.name]
    + [path for path in FHIR_CONVERTER.glob("*.hl7") if "ORU" not in path.name]
)


@pytest.mark.parametrize("path", NOT_RESULTS, ids=[p.name for p in NOT_RESULTS])
def test_orders_schedules_and_adt_are_unsupported(path: Path) -> None:
    with pytest.raises(UnsupportedMessage) as caught:
        parse(path)

    assert caught.value.location == "MSH-9"


def test_the_shared_samples_are_all_found() -> None:
    assert len(NOT_RESULTS) == 33  # 12 dcm4che + 21 fhir-converter; a wrong path finds none


FHIR_CONVERTER_ORM = sorted(FHIR_CONVERTER.glob("ORM-O01-*.hl7"))


@pytest.mark.parametrize("path", FHIR_CONVERTER_ORM, ids=[p.name for p in FHIR_CONVERTER_ORM])
def test_fhir_converter_byte_order_mark_is_stripped(path: Path) -> None:
    raw = path.read_bytes()
    text = decode_message(raw)

    assert raw.startswith(b"\xef\xbb\xbfMSH|")
    assert text.startswith("MSH|^~\\&|ORDApp|")
    assert "\n" not in text
    assert message_header(parse_message(text)).message_type == "ORM^O01"


def test_fhir_converter_oru_falls_back_to_the_referring_doctor_in_pv1_8() -> None:
    scan = parse(FHIR_CONVERTER / "ORU-R01-01.hl7")

    assert (scan.accession, scan.mrn, scan.result_status) == ("986", "14", "F")
    assert scan.patient_name == PersonName(family="Finn", given="Huckleberry")
    assert scan.ordering_provider == ProviderRef(
        identifier="C006",
        name=PersonName(family="Woolfson", given="Kathleen"),
        source_field="PV1-8",
    )
    assert scan.exam_time == local(2002, 2, 15, 0, 15)  # 200202150730+0215
    assert scan.result_time == local(2002, 3, 15, 0, 15)
    assert scan.coded_items == (
        CodedReportItem(system="SCT", code="27268008", display="Salmonella"),
    )
    # NTE after the OBR, then NTE after the OBX (with a PRT between); the RP is a picture.
    assert scan.report_text.split("\n") == [
        "Enteric culture includes testing for Salmonella, Shigella, Campylobacter, Yersinia,"
        " E.coli O157:H7 & other STECs, and Aeromonas",
        "Allergy to peanuts observed.",
        "Submission of serum",
        "No Antibodies Detected",
    ]


def test_fhir_converter_glucose_result_without_report_text_is_refused() -> None:
    with pytest.raises(MissingField, match=r"no report text.*SN values") as caught:
        parse(FHIR_CONVERTER / "ORU-R01-RMGEAD.hl7")

    assert (caught.value.location, caught.value.ack_code) == ("OBX-5", "AE")


def test_fhir_converter_glucose_result_phone_offset_and_junk_code_system() -> None:
    text = load(FHIR_CONVERTER / "ORU-R01-RMGEAD.hl7").rstrip("\r")
    scan = oru(f"{text}\rOBX|2|TX|^Comment||Fasting sample.")

    assert (scan.accession, scan.mrn, scan.phone_e164) == ("1045813", "555-44-4444", "+12063345232")
    assert scan.ordering_provider == ProviderRef(
        identifier="555-55-5555",
        name=PersonName(family="PRIMARY", given="PATRICIA P"),
        source_field="OBR-16",
    )
    assert scan.exam_time == local(2002, 2, 14, 20, 30)  # 20020215073000+0600
    assert scan.coded_items == ()  # OBX-3 has a LOINC long name where its system belongs
    assert scan.report_text == "Fasting sample."


# ---------------------------------------------------------------------------------------------
# Edge cases on a minimal message


def set_field(text: str, segment: str, number: int, value: str) -> str:
    """Set field `number` (HL7 numbering) of the first `segment` in `text`."""
    segments = text.split("\r")
    index = next(i for i, seg in enumerate(segments) if seg.split("|")[0] == segment)
    fields = segments[index].split("|")
    position = number - 1 if segment == "MSH" else number  # "|" after MSH is MSH-1
    fields.extend([""] * (position + 1 - len(fields)))
    fields[position] = value
    segments[index] = "|".join(fields)
    return "\r".join(segments)


def minimal(**fields: str) -> str:
    """A valid ORU^R01; keyword names like OBR_25 override single fields."""
    text = "\r".join(
        [
            "MSH|^~\\&|RIS|DEMO|FOLLOWUP|DEMO|20261103120000||ORU^R01^ORU_R01|CTRL-1|P|2.5.1",
            "PID|1||MRN1^^^DEMO^MR||Doe^Jane||19800101|F|||||413-555-0111^PRN^CP",
            "OBR|1|PL1|ACC1|72148^MRI LUMBAR SPINE^C4|||202611031015",
            "OBX|1|TX|18782-3^Findings^LN|1|FINDINGS: Normal.||||||F",
        ]
    )
    text = set_field(text, "OBR", 16, "1000000001^Okafor^Adaeze")
    text = set_field(text, "OBR", 25, "F")
    for key, value in fields.items():
        segment, number = key.split("_")
        text = set_field(text, segment, int(number), value)
    return text


def oru(text: str) -> ScanCompleted:
    return parse_oru(text, site_zone=ZONE)


def test_minimal_message_parses() -> None:
    scan = oru(minimal())

    assert (scan.accession, scan.mrn, scan.result_status, scan.report_text) == (
        "ACC1",
        "MRN1",
        "F",
        "FINDINGS: Normal.",
    )
    assert scan.phone_e164 == "+14135550111"


def test_decode_strips_bom_and_normalises_line_ends() -> None:
    raw = b"\xef\xbb\xbfMSH|^~\\&|A\r\nPID|1\nOBR|1\rOBX|1"

    assert decode_message(raw) == "MSH|^~\\&|A\rPID|1\rOBR|1\rOBX|1"


@pytest.mark.parametrize(
    ("charset", "body", "expected"),
    [
        ("8859/1", "Dupré".encode("latin-1"), "Dupré"),
        ("8859/1", "Dupré".encode(), "Dupré"),  # the dcm4che lie: UTF-8 under an 8859/1 label
        ("ASCII", "Dupré".encode(), "Dupré"),
        ("UNICODE UTF-8", "Dupré".encode("latin-1"), "Dupré"),  # invalid UTF-8 → Latin-1
        ("", "Dupré".encode("latin-1"), "Dupré"),
        ("8859/15", "€".encode("iso8859-15"), "€"),
    ],
)
def test_decode_uses_msh18_with_fallbacks(charset: str, body: bytes, expected: str) -> None:
    raw = b"MSH|^~\\&|||||||ORU^R01|1|P|2.5.1||||||" + charset.encode() + b"\rPID|||1||" + body

    assert decode_message(raw).split("||")[-1] == expected


@pytest.mark.parametrize(
    "text", ["", "PID|1", "MSH", "MSH|", "MSH|^~", "MSH|^^\\&|A", "MSHa^~\\&|"]
)
def test_unreadable_text_is_malformed(text: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_oru(text, site_zone=ZONE)

    assert caught.value.location == "MSH"


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"MSH_9": "ORU^R30"}, "MSH-9"),
        ({"MSH_9": "ORU"}, "MSH-9"),
        ({"MSH_11": "X"}, "MSH-11"),
        ({"MSH_11": ""}, "MSH-11"),
        ({"MSH_12": "3.0"}, "MSH-12"),
    ],
)
def test_unsupported_headers_are_rejected(fields: dict[str, str], location: str) -> None:
    with pytest.raises(UnsupportedMessage) as caught:
        oru(minimal(**fields))

    assert caught.value.location == location


@pytest.mark.parametrize("processing_id", ["P", "T", "D", "T^I"])
def test_processing_ids_p_t_d_are_accepted(processing_id: str) -> None:
    assert oru(minimal(MSH_11=processing_id)).accession == "ACC1"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"OBR_3": "", "OBR_18": "ACC18"}, "ACC18"),
        ({"OBR_3": "", "OBR_2": "PL2"}, "PL2"),
        ({"OBR_3": "ACC3^RIS", "OBR_18": "ACC18"}, "ACC3"),
    ],
)
def test_accession_falls_back_from_obr3_to_obr18_to_obr2(
    fields: dict[str, str], expected: str
) -> None:
    assert oru(minimal(**fields)).accession == expected


@pytest.mark.parametrize(
    ("fields", "error_type", "location"),
    [
        ({"OBR_25": "Q"}, InvalidField, "OBR-25"),
        ({"OBR_25": ""}, MissingField, "OBR-25"),
        ({"OBR_24": "F", "OBR_25": ""}, MissingField, "OBR-25"),
        ({"PID_3": "^^^DEMO^MR"}, MissingField, "PID-3"),
        ({"PID_7": "1980"}, InvalidField, "PID-7"),
        ({"PID_7": "1980-01-01"}, InvalidField, "PID-7"),
        ({"OBR_7": "20261340"}, InvalidField, "OBR-7"),
        ({"OBR_7": "2026-11-03T10:15"}, InvalidField, "OBR-7"),
        ({"OBR_7": "202611031015+2500"}, InvalidField, "OBR-7"),
        ({"OBR_7": "202611031015+0175"}, InvalidField, "OBR-7"),
        ({"OBR_22": "99991231235959-2300"}, InvalidField, "OBR-22"),  # past year 9999 in UTC
    ],
)
def test_invalid_fields_are_located(
    fields: dict[str, str], error_type: type[InboundMessageError], location: str
) -> None:
    with pytest.raises(error_type) as caught:
        oru(minimal(**fields))

    assert caught.value.location == location


def test_missing_segments_are_located() -> None:
    no_obr = "\r".join(seg for seg in minimal().split("\r") if not seg.startswith("OBR"))
    no_pid = "\r".join(seg for seg in minimal().split("\r") if not seg.startswith("PID"))
    two_obr = minimal() + "\rOBR|2|PL2|ACC2"

    with pytest.raises(MissingField, match="no OBR") as missing_obr:
        oru(no_obr)
    with pytest.raises(MissingField, match="no PID") as missing_pid:
        oru(no_pid)
    with pytest.raises(UnsupportedMessage, match="2 OBR groups") as two_groups:
        oru(two_obr)

    assert (missing_obr.value.location, missing_pid.value.location) == ("OBR", "PID-3")
    assert two_groups.value.location == "OBR"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20261103", local(2026, 11, 3)),
        ("202611", local(2026, 11, 1)),
        ("20261103101512.1234", local(2026, 11, 3, 10, 15, 12, 123400)),
        ("20261103101512-0800", local(2026, 11, 3, 13, 15, 12)),
        ("202607011015", datetime(2026, 7, 1, 10, 15, tzinfo=timezone(timedelta(hours=-4)))),
    ],
)
def test_times_are_hl7_dtm_in_the_site_zone(value: str, expected: datetime) -> None:
    exam_time = oru(minimal(OBR_7=value)).exam_time

    assert exam_time == expected
    assert exam_time.tzinfo == ZONE  # type: ignore[union-attr]


def test_birth_date_takes_the_date_of_a_dtm() -> None:
    assert oru(minimal(PID_7="198001011230")).birth_date == date(1980, 1, 1)


@pytest.mark.parametrize(
    ("phone", "expected"),
    [
        ("^PRN^PH^^1^413^5550187~^PRN^CP^^1^413^5550123", "+14135550123"),
        ("(413)555-0187^PRN^PH~^ORN^CP^^^617^5550142", "+16175550142"),
        ("(413)555-0187^PRN^PH", "+14135550187"),
        ("not a phone^PRN^CP~413-555-0187^PRN^PH", "+14135550187"),
        ("not a phone^PRN^CP", None),
        ("555-0100^PRN^CP", None),
        ("", None),
    ],
)
def test_phone_prefers_a_valid_mobile(phone: str, expected: str | None) -> None:
    assert oru(minimal(PID_13=phone)).phone_e164 == expected


def test_phone_region_reads_national_numbers() -> None:
    text = minimal(PID_13="020 7946 0321^PRN^CP")

    assert parse_oru(text, site_zone=ZONE, phone_region="GB").phone_e164 == "+442079460321"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"OBR_16": "", "ORC_12": "2000000002^Vance^Ruth"},
            ProviderRef("2000000002", PersonName("Vance", "Ruth"), "ORC-12"),
        ),
        (
            {"OBR_16": "", "PV1_8": "^Stone^Ira", "PV1_7": "3000000003^Attend^Al"},
            ProviderRef("name:Stone^Ira", PersonName("Stone", "Ira"), "PV1-8"),
        ),
        (
            {"OBR_16": "", "PV1_7": "3000000003"},
            ProviderRef("3000000003", None, "PV1-7"),
        ),
        ({"OBR_16": ""}, None),
    ],
)
def test_ordering_provider_fallbacks(fields: dict[str, str], expected: ProviderRef | None) -> None:
    text = minimal()
    segments = text.split("\r")
    text = "\r".join([*segments[:2], "PV1|1|O", "ORC|RE", *segments[2:]])
    for key, value in fields.items():
        segment, number = key.split("_")
        text = set_field(text, segment, int(number), value)

    assert oru(text).ordering_provider == expected


def test_report_text_unescapes_and_splits_lines() -> None:
    value = (
        "A\\.br\\B \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\H\\bold\\N\\ \\X41\\ \\.sp2\\C"
        " \\.in+4\\x\\.sk2\\y\\.ti-2\\ ~D \\F"
    )
    scan = oru(minimal(OBX_2="FT", OBX_5=value))

    assert scan.report_text == "A\nB | ^ & ~ \\ bold A\nC x y\nD \\F"


def test_report_text_keeps_obx_order_and_skips_uids_pictures_and_numbers() -> None:
    text = "\r".join(
        [
            minimal(),
            "OBX|2|ED|18748-4^Key image^LN||^IM^JPEG^Base64^/9j/4AAQ",
            "OBX|3|RP|18748-4^Key image^LN||http://pacs/image.jpg^^IM^JPEG",
            "OBX|3|ED|18748-4^Key image^LN||^AP^PNG^Base64^iVBORw0K",
            "OBX|4|ST|113014^DICOM Study^DCM||1.2.3.4.5",
            "OBX|5|ST|^SOP Instance UID||1.2.3.4.5.6",
            "OBX|6|NM|21889-1^Size^LN||12|mm",
            "OBX|7|TX|19005-8^Impression^LN|2|IMPRESSION:",
            "OBX|8|TX|19005-8^Impression^LN|2|1. No acute abnormality.   ",
            "OBX|9|TX|19005-8^Impression^LN|2|",
        ]
    )

    assert oru(text).report_text == "FINDINGS: Normal.\nIMPRESSION:\n1. No acute abnormality.\n"


def with_segments(*segments: str, **fields: str) -> str:
    """The minimal message with its OBX replaced by `segments`."""
    kept = [seg for seg in minimal(**fields).split("\r") if not seg.startswith("OBX")]
    return "\r".join([*kept, *segments])


def ed(value_type: str, subtype: str, encoding: str, data: str | bytes) -> str:
    if isinstance(data, bytes):
        data = base64.b64encode(data).decode() if encoding == "Base64" else data.hex()
    return (
        f"OBX|1|ED|18748-4^Diagnostic Imaging Report^LN||^{value_type}^{subtype}^{encoding}^{data}"
    )


def test_notes_after_the_obr_and_after_an_obx_are_read_in_message_order() -> None:
    text = with_segments(
        "NTE|1|L|FINDINGS: L5-S1 extrusion.~Second line of the note.",
        "OBX|1|TX|19005-8^Impression^LN||IMPRESSION:",
        "PRT|1|AD||RO^Responsible Observer^HL70443",
        "NTE|1|L|1. Extrusion compressing the S1 root.",
        "SPM|1|S1||SER^Serum",
        "NTE|1|L|specimen note, not the report",
    )

    assert oru(text).report_text.split("\n") == [
        "FINDINGS: L5-S1 extrusion.",
        "Second line of the note.",
        "IMPRESSION:",
        "1. Extrusion compressing the S1 root.",
    ]


@pytest.mark.parametrize("line_end", ["\r", "\n", "\r\n"])
def test_a_line_break_inside_report_text_is_refused_not_cut(line_end: str) -> None:
    obx = (
        f"OBX|1|TX|19005-8^Impression^LN||IMPRESSION: no cord{line_end}compression at C5-6.||||||F"
    )
    text = decode_message(with_segments(obx).encode())

    with pytest.raises(InvalidField, match="line break inside the OBX") as caught:
        oru(text)

    assert caught.value.location == "OBX"


def test_blank_lines_between_segments_are_harmless() -> None:
    text = decode_message(with_segments("", "NTE|1||IMPRESSION: Normal.", "  ").encode())

    assert oru(text).report_text == "IMPRESSION: Normal."


def test_observations_marked_wrong_or_deleted_are_not_read_nor_their_notes() -> None:
    text = with_segments(
        "OBX|1|TX|19005-8^Impression^LN||IMPRESSION:||||||F",
        "OBX|2|TX|19005-8^Impression^LN||Cord compression at C5-6.||||||W",
        "NTE|1||note on the wrong line",
        "OBX|3|TX|19005-8^Impression^LN||Left L5-S1 extrusion.||||||D",
        "OBX|4|TX|19005-8^Impression^LN||Right L5-S1 extrusion.||||||C",
    )

    assert oru(text).report_text.split("\n") == ["IMPRESSION:", "Right L5-S1 extrusion."]


def test_a_result_whose_only_observations_are_withdrawn_has_no_report_text() -> None:
    with pytest.raises(MissingField, match="marked wrong or deleted in OBX-11"):
        oru(with_segments("OBX|1|TX|19005-8^Impression^LN||Cord compression.||||||W"))


def test_coded_values_without_a_code_are_read_as_text() -> None:
    text = with_segments(
        "OBX|1|CWE|19005-8^Impression^LN||^Grade 1 anterolisthesis of L4 on L5",
        "OBX|2|CWE|19005-8^Impression^LN||^^^^^^^^Disc extrusion at L5-S1",
        "OBX|3|CWE|19005-8^Impression^LN||274152003^Spondylolisthesis^SCT",
    )
    scan = oru(text)

    assert scan.report_text.split("\n") == [
        "Grade 1 anterolisthesis of L4 on L5",
        "Disc extrusion at L5-S1",
    ]
    assert scan.coded_items == (
        CodedReportItem(system="SCT", code="274152003", display="Spondylolisthesis"),
    )


ONE_LINE_EACH = ["FINDINGS: Disc extrusion.", "IMPRESSION: Extrusion."]


@pytest.mark.parametrize(
    ("value_type", "subtype", "encoding", "data", "lines"),
    [
        (
            "TEXT",
            "plain",
            "Base64",
            b"FINDINGS: Disc extrusion.\r\nIMPRESSION: Extrusion.",
            ONE_LINE_EACH,
        ),
        ("TEXT", "", "Hex", b"FINDINGS: Disc extrusion.\nIMPRESSION: Extrusion.", ONE_LINE_EACH),
        ("TEXT", "", "A", "FINDINGS: Disc extrusion.\\.br\\IMPRESSION: Extrusion.", ONE_LINE_EACH),
        (
            "AP",
            "RTF",
            "Base64",
            rb"{\rtf1\ansi\ansicpg1252{\fonttbl{\f0 Arial;}}{\*\generator Riched20;}\f0\fs20 "
            rb"FINDINGS: Disc \'e9xtrusion \u8211? L5\_S1.\par IMPRESSION: Extrusion.\par}",
            ["FINDINGS: Disc éxtrusion – L5-S1.", "IMPRESSION: Extrusion."],
        ),
        (
            "Text",
            "text/xml",
            "Base64",
            sample_documents.cda_with_sections(
                [("FINDINGS", ["Disc extrusion."]), ("IMPRESSION", ["Extrusion."])]
            ).encode(),
            ["FINDINGS:", "Disc extrusion.", "IMPRESSION:", "Extrusion."],
        ),
        ("AP", "PDF", "Hex", sample_documents.pdf_with_lines(ONE_LINE_EACH), ONE_LINE_EACH),
        (
            "TEXT",
            "HTML",
            "A",
            "<html><head><style>p {}</style></head><body><h2>FINDINGS:</h2><p>Disc \\T\\amp;"
            " extrusion<br>at L5-S1.</p><table><tr><td>L4-5</td><td>bulge</td></tr></table>"
            "<script>x()</script><pre>IMPRESSION:\\.br\\1.  Extrusion.</pre></body></html>",
            [
                "FINDINGS:",
                "Disc & extrusion",
                "at L5-S1.",
                "L4-5; bulge;",
                "IMPRESSION:",
                "1. Extrusion.",
            ],
        ),
    ],
    ids=["plain-base64", "plain-hex", "plain-unencoded", "rtf", "cda", "pdf-hex", "html"],
)
def test_attachments_are_read_as_report_text(
    value_type: str, subtype: str, encoding: str, data: str | bytes, lines: list[str]
) -> None:
    scan = oru(with_segments(ed(value_type, subtype, encoding, data)))

    assert scan.report_text.split("\n") == lines


def test_rtf_unicode_and_byte_escapes_become_storable_text() -> None:
    """A surrogate pair in \\uN is joined, a lone surrogate replaced, a NUL byte dropped:
    UTF-8 and PostgreSQL text can hold neither lone surrogates nor NUL."""
    rtf = rb"{\rtf1 IMPRESSION: \u-10179?\u-8704? lone \u55357? byte \'00done.\par}"

    scan = oru(with_segments(ed("AP", "RTF", "Base64", rtf)))

    assert scan.report_text == "IMPRESSION: \U0001f600 lone \ufffd byte done."


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    "<ClinicalDocument><title>&lol2;</title></ClinicalDocument>"
)
DEEP_CDA = (
    "<ClinicalDocument><component><structuredBody><component><section><text>"
    + "<content>" * 5000
    + "FINDINGS"
    + "</content>" * 5000
    + "</text></section></component></structuredBody></component></ClinicalDocument>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<ClinicalDocument><component><structuredBody><component><section><text>&x;</text>"
    "</section></component></structuredBody></component></ClinicalDocument>"
)


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        (ed("AP", "PDF", "Base64", "JVBERi0xLjQK%%%"), "not valid Base64"),
        (ed("AP", "PDF", "Hex", "25504446zz"), "not valid Hex"),
        (ed("AP", "PDF", "Base64", b"%PDF-1.4 not a PDF"), r"PDF cannot be read \(\w+\)"),
        (ed("AP", "PDF", "A", "%PDF-1.4"), "must be Base64 or Hex"),
        (ed("AP", "PDF", "UU", "begin 644"), "encoding 'UU' is not A, Hex or Base64"),
        (ed("AP", "msword", "Base64", b"\xd0\xcf"), "type application/msword is not read"),
        (ed("AP", "DOCX", "Base64", b"PK\x03\x04"), "type application/docx is not read"),
        (ed("TEXT", "XML", "Base64", BILLION_LAUGHS.encode()), "DOCTYPE"),
        (ed("TEXT", "XML", "Base64", EXTERNAL_ENTITY.encode()), "DOCTYPE"),
        (ed("TEXT", "XML", "A", "<ClinicalDocument><title>x"), "not well-formed"),
        (ed("TEXT", "XML", "A", "<report>FINDINGS: x</report>"), "not a CDA document"),
        (ed("TEXT", "XML", "Base64", DEEP_CDA.encode()), "nested too deeply"),
        (ed("TEXT", "plain", "Base64", b"\xff\xfe"), "not readable as utf-8"),
        (ed("TEXT", "plain", "Base64", b"   "), "holds no text"),
        ("OBX|1|RP|18748-4^Report^LN||http://pacs/report.pdf^^AP", "reference \\(RP\\)"),
    ],
    ids=[
        "bad-base64", "bad-hex", "corrupt-pdf", "unencoded-pdf", "unknown-encoding", "msword",
        "docx", "billion-laughs", "external-entity", "broken-xml", "not-cda", "deep-cda",
        "bad-utf8",
        "blank", "rp-document",
    ],
)  # fmt: skip
def test_an_unreadable_carrier_is_refused_with_the_reason(segment: str, reason: str) -> None:
    with pytest.raises(InvalidField, match=reason) as caught:
        oru(with_segments("OBX|1|TX|18782-3^Findings^LN||FINDINGS: see attached.", segment))

    assert (caught.value.location, caught.value.ack_code) == ("OBX-5", "AE")
    assert caught.value.reason.startswith("OBX #2 after the OBR: ")


def test_cda_level_one_body_is_read_as_the_attachment_it_wraps() -> None:
    wrapped = base64.b64encode(sample_documents.pdf_with_lines(["IMPRESSION: Extrusion."]))
    cda = (
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><component><nonXMLBody>'
        f'<text mediaType="application/pdf" representation="B64">{wrapped.decode()}</text>'
        "</nonXMLBody></component></ClinicalDocument>"
    )

    scan = oru(with_segments(ed("TEXT", "XML", "A", cda)))

    assert scan.report_text == "IMPRESSION: Extrusion."


def test_cda_narrative_keeps_lists_tables_and_captions_apart_and_drops_deletions() -> None:
    cda = (
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody><component>'
        "<section><title>Findings</title><text><paragraph><caption>History</caption>"
        "Back pain.<content revised='delete'> No cord compression.</content></paragraph>"
        "<list><item>L4-5: bulge.</item><item>L5-S1:<br/>extrusion"
        "</item></list><table><tr><th>Level</th><th>Canal</th></tr><tr><td>L4-5</td>"
        "<td>patent</td></tr></table><footnoteRef IDREF='f1'/></text></section>"
        "</component></structuredBody></component></ClinicalDocument>"
    )

    lines = oru(with_segments(ed("TEXT", "XML", "A", cda))).report_text.split("\n")

    assert lines == [
        "Findings:",
        "History - Back pain.",
        "L4-5: bulge.",
        "L5-S1:",
        "extrusion",
        "Level; Canal;",
        "L4-5; patent;",
    ]


def test_pictures_beside_the_text_are_skipped_but_are_no_report_alone() -> None:
    picture = ed("IM", "JPEG", "Base64", b"\xff\xd8\xff")

    with pytest.raises(MissingField, match="a picture or empty attachment") as caught:
        oru(with_segments(picture))

    assert caught.value.location == "OBX-5"
    assert oru(with_segments(picture, "NTE|1||IMPRESSION: Normal.")).report_text == (
        "IMPRESSION: Normal."
    )


@pytest.mark.parametrize(
    "segments",
    [(), ("OBX|1|TX|18782-3^Findings^LN||",), ("NTE|1||   ",), ("OBX|1|NM|21889-1^Size^LN||12",)],
    ids=["nothing", "empty-tx", "blank-note", "number-only"],
)
def test_a_final_result_without_report_text_is_refused(segments: tuple[str, ...]) -> None:
    with pytest.raises(MissingField, match="no report text") as caught:
        oru(with_segments(*segments))

    assert (caught.value.location, caught.value.ack_code) == ("OBX-5", "AE")


@pytest.mark.parametrize("status", ["P", "X"])
def test_a_preliminary_or_cancelled_result_may_have_no_text(status: str) -> None:
    assert oru(with_segments(OBR_25=status)).report_text == ""


def test_a_cancellation_is_not_refused_for_an_unreadable_attachment() -> None:
    reference = "OBX|1|RP|18748-4^Report^LN||http://pacs/report.pdf^^AP"

    assert oru(with_segments(reference, OBR_25="X")).report_text == ""
    with pytest.raises(InvalidField):
        oru(with_segments(reference, OBR_25="P"))  # the flow reads a preliminary for criticals


@pytest.mark.parametrize("control_id", ["", "  "])
def test_an_empty_control_id_is_refused(control_id: str) -> None:
    with pytest.raises(MissingField) as caught:
        oru(minimal(MSH_10=control_id))

    assert (caught.value.location, caught.value.ack_code) == ("MSH-10", "AE")


def test_observations_before_the_obr_are_not_part_of_the_report() -> None:
    segments = minimal().split("\r")
    text = "\r".join([*segments[:2], "OBX|1|TX|8302-2^Height^LN||not the report", *segments[2:]])

    assert oru(text).report_text == "FINDINGS: Normal."


def test_coded_items_from_values_and_finding_identifiers() -> None:
    text = "\r".join(
        [
            minimal(),
            "OBX|2|CWE|19005-8^Impression^LN|2|L-SPON^Spondylolisthesis^99LOCAL^274152003"
            "^Spondylolisthesis^SCT",
            "OBX|3|TX|73589001^Disc herniation^SCT|1|L4-5 protrusion",
            "OBX|4|CE|18782-3^Findings^LN|1|G35.A^Relapsing-remitting MS^I10~^no code^I10",
            "OBX|5|TX|18782-3^Findings^LN|1|L5-S1 protrusion",
            "OBX|6|TX|73589001^Disc herniation^SCT|2|L5-S1 protrusion",
        ]
    )

    assert oru(text).coded_items == (
        CodedReportItem(system="99LOCAL", code="L-SPON", display="Spondylolisthesis"),
        CodedReportItem(system="SCT", code="274152003", display="Spondylolisthesis"),
        CodedReportItem(system="SCT", code="73589001", display="Disc herniation"),
        CodedReportItem(system="I10", code="G35.A", display="Relapsing-remitting MS"),
    )


def test_header_is_read_without_judging_the_content() -> None:
    text = minimal(MSH_9="ORU", MSH_11="", MSH_12="")

    assert message_header(parse_message(text)) == MessageHeader(
        message_type="ORU",
        trigger="",
        control_id="CTRL-1",
        processing_id="",
        version="",
        sending_application="RIS",
        sending_facility="DEMO",
        receiving_application="FOLLOWUP",
        receiving_facility="DEMO",
        encoding_characters="|^~\\&",
    )


# ---------------------------------------------------------------------------------------------
# Properties: decoding never raises; parsing raises only InboundMessageError

ORU_SOURCES = [
    DCM4CHE / "ORU^R01-SR.hl7",
    DCM4CHE / "ORU^R01-PDF.hl7",
    DCM4CHE / "legacy_ORU^R01.hl7",
    FHIR_CONVERTER / "ORU-R01-01.hl7",
    FHIR_CONVERTER / "ORU-R01-RMGEAD.hl7",
    *(SAMPLES / f"{stem}.hl7" for stem in GOOD_SAMPLES),
    *(SAMPLES / f"{stem}.hl7" for stem in TEXT_CARRIER_SAMPLES),
]
ORU_TEXTS = [load(path) for path in ORU_SOURCES]
FRAGMENTS = st.text(alphabet="|^~\\&\r\n0123456789.+-TFPCXMSH AZé–", max_size=16)


@st.composite
def mutated_messages(draw: st.DrawFn) -> str:
    """A real ORU with a few fields replaced and text spliced in, delimiters favoured."""
    segments = [seg.split("|") for seg in draw(st.sampled_from(ORU_TEXTS)).split("\r")]
    for _ in range(draw(st.integers(1, 4))):
        fields = segments[draw(st.integers(0, len(segments) - 1))]
        fields[draw(st.integers(0, len(fields) - 1))] = draw(FRAGMENTS)
    text = "\r".join("|".join(fields) for fields in segments)
    cut = draw(st.integers(0, len(text)))
    return text[:cut] + draw(FRAGMENTS) + text[cut + draw(st.integers(0, 8)) :]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512) | st.sampled_from(ORU_SOURCES).map(Path.read_bytes))
def test_decode_never_raises(raw: bytes) -> None:
    text = decode_message(raw)

    assert "\n" not in text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages() | st.text(max_size=200))
def test_parse_oru_raises_only_inbound_message_errors(text: str) -> None:
    try:
        scan = parse_oru(text, site_zone=ZONE)
    except InboundMessageError:
        return
    assert scan.accession and scan.mrn and scan.result_status


def _python_hl7_fields(text: str) -> list[tuple[str, ...]]:
    """Each segment's fields as python-hl7's parse tree joins them back."""
    return [tuple(str(field) for field in segment) for segment in hl7.parse(text.strip())]


@pytest.mark.parametrize("path", ORU_SOURCES, ids=lambda path: path.name)
def test_segments_and_fields_match_python_hl7(path: Path) -> None:
    text = load(path)

    message = parse_message(text)

    assert [segment.fields for segment in message.segments] == _python_hl7_fields(text)
    assert message.segments[0].name == "MSH"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_fields_match_python_hl7_on_mutated_messages(text: str) -> None:
    try:
        message = parse_message(text)
    except MalformedMessage:
        return
    # python-hl7 reads any later segment starting MSH/BHS/FHS as a header; only the first is.
    headers = {"MSH", "BHS", "FHS"}
    assume(not any(segment.fields[0][:3] in headers for segment in message.segments[1:]))

    assert [segment.fields for segment in message.segments] == _python_hl7_fields(text)


def _spine(old: str, new: str) -> str:
    text = load(SAMPLES / "spine_pain_degenerative.hl7")
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "location"),
    [
        ("|DEMO-ORU-0003|", "|DEMO\x00ORU|", "MSH-10"),
        ("|DEMO_RIS|", "|DEMO\x00RIS|", "MSH-3"),
        ("Whitaker", "Whit\x00aker", "PID-5"),
        ("Paraspinal", "Para\x00spinal", "OBX-5"),
        ("Paraspinal", "Para\\X00\\spinal", "OBX-5"),  # escaped: a NUL only once unescaped
        ("OBX|4|", "O\x00X|4|", "O?X"),
    ],
)
def test_a_nul_anywhere_is_refused_naming_its_field(old: str, new: str, location: str) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_oru(_spine(old, new), site_zone=ZONE)

    assert caught.value.location == location


@pytest.mark.parametrize(
    ("old", "new", "location"),
    [
        ("|DM100103^", "|" + "M" * 65 + "^", "PID-3"),
        ("Whitaker", "W" * 129, "PID-5"),
        ("^Thomas^", "^" + "T" * 129 + "^", "PID-5"),
        ("|72148^", "|" + "7" * 65 + "^", "OBR-4"),
        ("^MRI LUMBAR SPINE WITHOUT CONTRAST^", "^" + "P" * 256 + "^", "OBR-4"),
        ("OBR|1|ORD2026000103^DEMO_EHR|ACC", "OBR|1|ORD2026000103^DEMO_EHR|" + "A" * 65, "OBR-3"),
        ("1000000003^Ramanathan^Priya^^^Dr^MD^^NPI||ACC", "9" * 256 + "||ACC", "OBR-16"),
    ],
)
def test_a_value_longer_than_its_column_is_refused_naming_its_field(
    old: str, new: str, location: str
) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_oru(_spine(old, new), site_zone=ZONE)

    assert caught.value.location == location


def test_values_as_long_as_their_columns_are_accepted() -> None:
    text = _spine("|DM100103^", "|" + "M" * 64 + "^")
    text = text.replace("Whitaker^Thomas", "W" * 128 + "^" + "T" * 128)
    text = text.replace("|72148^MRI LUMBAR SPINE WITHOUT CONTRAST^", f"|{'7' * 64}^{'P' * 255}^")

    scan = parse_oru(text, site_zone=ZONE)

    assert (len(scan.mrn), len(scan.patient_name.family), len(scan.patient_name.given)) == (
        64,
        128,
        128,
    )
    assert (len(scan.procedure_code), len(scan.procedure_text)) == (64, 255)


@pytest.mark.parametrize("width", [42, 58, 62])
def test_a_report_wrapped_over_obx_segments_is_read_whole(width: int) -> None:
    """A RIS that wraps the report at a fixed width, one TX OBX per wrapped line: the cord
    compression cut over two segments still escalates."""
    from followup.core.rules import load_rules
    from followup.nlp import classify_report
    from followup.settings import PROJECT_ROOT

    message = load(SAMPLES / "spine_critical_cord_compression.hl7")
    header = [s for s in message.split("\r") if s and not s.startswith("OBX|")]
    prose = (
        "There is a large central disc osteophyte complex at C5-6 causing severe spinal canal"
        " stenosis with compression of the spinal cord and intramedullary T2 signal. Mild"
        " degenerative change elsewhere."
    )
    lines = ["IMPRESSION:", *textwrap.wrap(prose, width)]
    obx = [f"OBX|{n}|TX|19005-8^Impression^LN|1|{line}||||||F" for n, line in enumerate(lines, 1)]
    scan = parse_oru("\r".join([*header, *obx]), site_zone=ZONE)
    rules = load_rules(PROJECT_ROOT / "rules" / "routing.yaml")

    assert scan.report_text.split("\n") == lines
    assert not any("compression of the spinal cord" in line for line in lines)
    assert classify_report(scan.report_text, rules).critical
