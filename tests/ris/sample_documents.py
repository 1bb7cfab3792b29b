"""Builds the text-carrier samples in tests/samples (NTE, FT escapes, ED PDF/CDA, RP).

Run `.venv/bin/python -m tests.ris.sample_documents` from the checkout to write them again;
the output is deterministic, so a rerun changes nothing unless this file changed. The PDFs
are written here by hand (one page, the standard Helvetica font, no compression) because
pypdf reads text but cannot lay it out; `pdf_with_lines` is also used by the tests.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

SAMPLES = Path(__file__).parents[1] / "samples"

_MSH = (
    "MSH|^~\\&|DEMO_RIS|DEMO_SPINE_NEURO|FOLLOWUP|DEMO_SPINE_NEURO|{sent}||ORU^R01^ORU_R01"
    "|{control_id}|P|2.5.1|||AL|NE|USA|UNICODE UTF-8"
)


def pdf_with_lines(lines: list[str]) -> bytes:
    """A one-page PDF whose text layer holds `lines`; with no lines, a page holding only a
    drawn frame: what a scanned report without OCR looks like to a text extractor."""
    if lines:
        shown = " T* ".join(f"({_pdf_string(line)}) Tj" for line in lines)
        content = f"BT /F1 10 Tf 13 TL 56 760 Td {shown} ET"
    else:
        content = "0.5 w 56 56 500 700 re S"
    stream = content.encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def cda_with_sections(sections: list[tuple[str, list[str]]]) -> str:
    """A minimal CDA R2 document: a structuredBody with one titled section per entry."""
    body = "".join(
        "<component><section><title>{}</title><text>{}</text></section></component>".format(
            title, "".join(f"<paragraph>{paragraph}</paragraph>" for paragraph in paragraphs)
        )
        for title, paragraphs in sections
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ClinicalDocument xmlns="urn:hl7-org:v3">'
        '<typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>'
        '<code code="18748-4" codeSystem="2.16.840.1.113883.6.1"'
        ' displayName="Diagnostic Imaging Report"/>'
        "<title>MRI BRAIN WITH AND WITHOUT CONTRAST</title>"
        f"<component><structuredBody>{body}</structuredBody></component>"
        "</ClinicalDocument>"
    )


def _oru(
    *,
    control_id: str,
    accession: str,
    mrn: str,
    patient: str,
    birth_date: str,
    phone: str,
    procedure: str,
    provider: str,
    exam: str,
    result: str,
    body: list[str],
) -> str:
    segments = [
        _MSH.format(sent=result + "05", control_id=control_id),
        f"PID|1||{mrn}^^^DEMO^MR||{patient}||{birth_date}||||||{phone}^PRN^CP",
        f"PV1|1|O|MRI1^^^DEMO_SPINE_NEURO|||||{provider}^^^Dr^MD^^NPI",
        f"ORC|RE|ORD{accession[3:]}^DEMO_EHR|{accession}^DEMO_RIS||CM|||||||"
        f"{provider}^^^Dr^MD^^NPI",
        f"OBR|1|ORD{accession[3:]}^DEMO_EHR|{accession}^DEMO_RIS|{procedure}|||{exam}"
        f"|||||||||{provider}^^^Dr^MD^^NPI||{accession}||||{result}||MR|F",
        *body,
    ]
    return "\r".join(segments) + "\r"


def _obx(number: int, value_type: str, identifier: str, value: str) -> str:
    return f"OBX|{number}|{value_type}|{identifier}||{value}||||||F"


def _nte(number: int, text: str) -> str:
    return f"NTE|{number}|L|{text}"


FINDINGS = "18782-3^Findings^LN"
IMPRESSION = "19005-8^Impression^LN"
REPORT = "18748-4^Diagnostic Imaging Report^LN"

NTE_AFTER_OBR_REPORT = [
    "EXAM: MRI LUMBAR SPINE WITHOUT CONTRAST",
    "CLINICAL HISTORY: Right leg pain and numbness of the lateral right foot for 8 weeks.",
    "FINDINGS:",
    "L4-5: Mild disc bulge. No spinal canal stenosis.",
    "L5-S1: Right paracentral disc extrusion contacting and compressing the descending right"
    " S1 nerve root.",
    "IMPRESSION:",
    "1. Right paracentral L5-S1 disc extrusion compressing the descending right S1 nerve root.",
]
NTE_AFTER_OBX_FINDINGS = [
    "Alignment: Grade 1 anterolisthesis of L4 on L5 with bilateral L4 pars defects.",
    "L4-5: Severe bilateral neural foraminal stenosis. Moderate spinal canal stenosis.",
]
NTE_AFTER_OBX_IMPRESSION = [
    "1. Grade 1 anterolisthesis of L4 on L5.",
    "2. Severe bilateral neural foraminal stenosis at L4-5.",
]
FT_REPORT = (
    "EXAM: MRI LUMBAR SPINE WITHOUT CONTRAST\\.br\\"
    "TECHNIQUE: Sagittal T1, T2 \\T\\ STIR; axial T1 and T2.\\.sp\\"
    "\\H\\FINDINGS:\\N\\\\.br\\"
    "\\.in+2\\L4-5: Broad-based disc protrusion with annular fissure, without nerve root"
    " contact.\\.br\\"
    "\\.in+2\\L5-S1: Degenerative disc disease with Modic type 2 endplate changes"
    " (T1 \\S\\ T2 hyperintense).\\.br\\"
    "\\.in+2\\Facets: Multilevel facet arthropathy, most pronounced at L4-5 \\E\\ L5-S1.\\.br\\"
    "\\H\\IMPRESSION:\\N\\\\.br\\"
    "1. Broad-based L4-5 disc protrusion without nerve root contact.\\.br\\"
    "2. Lower lumbar facet arthropathy.\\.br\\"
    "3. Degenerative disc disease at L5-S1, Modic type 2, reviewed by Dr. M\\XC3BC\\ller."
)
PDF_REPORT = [
    "EXAM: MRI SACROILIAC JOINTS WITHOUT CONTRAST",
    "CLINICAL HISTORY: Inflammatory low back pain and morning stiffness for 6 months.",
    "FINDINGS:",
    "Subchondral bone marrow edema at both sacroiliac joints, iliac and sacral sides.",
    "No erosions. No ankylosis.",
    "IMPRESSION:",
    "Active bilateral sacroiliitis with subchondral marrow edema.",
]
CDA_SECTIONS = [
    ("Clinical History", ["Intermittent numbness of the left hand for 3 months."]),
    (
        "Findings",
        [
            "Multiple periventricular and juxtacortical T2 hyperintense lesions.",
            "No enhancing lesion. No restricted diffusion.",
        ],
    ),
    ("Impression", ["Periventricular and juxtacortical T2 lesions suggestive of demyelination."]),
]


def hl7_samples() -> dict[str, str]:
    """File name → message text, for tests/samples/hl7."""
    patient = {
        "mrn": "DM400201",
        "patient": "Lindgren^Petra",
        "birth_date": "19810605",
        "phone": "(413) 555-0142",
        "procedure": "72148^MRI LUMBAR SPINE WITHOUT CONTRAST^C4",
        "provider": "1000000001^Okafor^Adaeze",
        "exam": "202611091010",
        "result": "202611091342",
    }

    def oru(control: str, accession: str, body: list[str], **changes: str) -> str:
        fields = {**patient, **changes}
        return _oru(control_id=control, accession=accession, body=body, **fields)

    return {
        "text_nte_after_obr.hl7": oru(
            "TEXT-ORU-0001",
            "ACC2026400201",
            [_nte(1, line) for line in NTE_AFTER_OBR_REPORT],
        ),
        "text_nte_after_obx.hl7": oru(
            "TEXT-ORU-0002",
            "ACC2026400202",
            [
                _obx(1, "TX", FINDINGS, "FINDINGS:"),
                *(_nte(n, line) for n, line in enumerate(NTE_AFTER_OBX_FINDINGS, start=1)),
                _obx(2, "TX", IMPRESSION, "IMPRESSION:"),
                *(_nte(n, line) for n, line in enumerate(NTE_AFTER_OBX_IMPRESSION, start=1)),
            ],
            mrn="DM400202",
            provider="1000000002^Lindqvist^Erik",
        ),
        "text_ft_escapes.hl7": oru(
            "TEXT-ORU-0003",
            "ACC2026400203",
            [_obx(1, "FT", REPORT, FT_REPORT)],
            mrn="DM400203",
            provider="1000000003^Ramanathan^Priya",
        ),
        "text_ed_pdf.hl7": oru(
            "TEXT-ORU-0004",
            "ACC2026400204",
            [_obx(1, "ED", REPORT, "^Application^PDF^Base64^" + _b64(pdf_with_lines(PDF_REPORT)))],
            mrn="DM400204",
            procedure="72195^MRI SACROILIAC JOINTS WITHOUT CONTRAST^C4",
            provider="1000000004^Castillo^Mateo",
        ),
        "text_ed_cda.hl7": oru(
            "TEXT-ORU-0005",
            "ACC2026400205",
            [
                _obx(
                    1,
                    "ED",
                    REPORT,
                    "^Text^x-hl7-cda-level-one+xml^Base64^"
                    + _b64(cda_with_sections(CDA_SECTIONS).encode()),
                )
            ],
            mrn="DM400205",
            procedure="70553^MRI BRAIN WITH AND WITHOUT CONTRAST^C4",
        ),
        "bad_ed_pdf_no_text_layer.hl7": oru(
            "TEXT-ORU-0006",
            "ACC2026400206",
            [_obx(1, "ED", REPORT, "^Application^PDF^Base64^" + _b64(pdf_with_lines([])))],
            mrn="DM400206",
        ),
        "bad_rp_reference.hl7": oru(
            "TEXT-ORU-0007",
            "ACC2026400207",
            [_obx(1, "RP", REPORT, "https://ris.example.org/reports/ACC2026400207.pdf^RIS^AP^PDF")],
            mrn="DM400207",
        ),
    }


def fhir_pdf_sample() -> str:
    """diagnosticreport_contained.json with its report only as a PDF presentedForm."""
    document = json.loads((SAMPLES / "fhir" / "diagnosticreport_contained.json").read_text())
    document["identifier"][0]["value"] = "ACC2026400208"
    document.pop("conclusion")
    document["presentedForm"] = [
        {"contentType": "application/pdf", "data": _b64(pdf_with_lines(PDF_REPORT))}
    ]
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def main() -> None:
    for name, text in hl7_samples().items():
        (SAMPLES / "hl7" / name).write_bytes(text.encode())
    (SAMPLES / "fhir" / "diagnosticreport_pdf.json").write_text(fhir_pdf_sample())


if __name__ == "__main__":
    main()
