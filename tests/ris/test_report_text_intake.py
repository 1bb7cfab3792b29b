"""Report text in NTE, FT and attachments, end to end: intake, then the scan-completed flow.

A report whose text is only in notes is answered AA and routed on that text; one whose text
cannot be read is answered AE with the reason and the field, and starts no run.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from followup.core.demo import restamp_for_today
from followup.services import intake
from followup.services.intake import Receipt
from followup.settings import Settings, get_settings
from models.db import session_scope
from models.tables import ImagingStudy, InboxStatus
from tests.conftest import SAMPLES, run_scan, seed_clinic
from tests.ris import sample_documents

HL7 = SAMPLES / "hl7"


@pytest.fixture
def settings(flow_database_url: str) -> Settings:
    seed_clinic(flow_database_url)
    return get_settings()


def receive(settings: Settings, name: str) -> Receipt:
    raw = restamp_for_today((HL7 / name).read_bytes(), now=datetime.now(settings.site_zone))
    with session_scope(settings.database_url) as session:
        return intake.receive_message(session=session, raw=raw, source="test", settings=settings)


@pytest.mark.parametrize(
    ("name", "referral"),
    [("text_nte_after_obr.hl7", "neurology"), ("text_ed_pdf.hl7", "rheumatology")],
)
def test_a_report_in_notes_or_a_pdf_is_routed_on_its_text(
    settings: Settings, name: str, referral: str
) -> None:
    receipt = receive(settings, name)
    assert (receipt.ack_code, receipt.should_process) == ("AA", True)

    summary = run_scan(receipt.inbox_id)

    assert summary["status"] == InboxStatus.PROCESSED
    assert summary["decision"]["referrals"] == [referral]
    assert summary["decision"]["needs_review"] is False
    assert summary["appointment"] is not None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad_ed_pdf_no_text_layer.hl7", "the PDF has no text layer"),
        ("bad_rp_reference.hl7", "reference (RP) to a document elsewhere"),
    ],
)
def test_an_unreadable_report_is_answered_ae_and_starts_no_run(
    settings: Settings, name: str, reason: str
) -> None:
    receipt = receive(settings, name)

    assert (receipt.ack_code, receipt.location, receipt.error_kind) == (
        "AE",
        "OBX-5",
        "InvalidField",
    )
    assert reason in receipt.reason
    assert not receipt.should_process
    with session_scope(settings.database_url) as session:
        assert session.exec(select(ImagingStudy)).all() == []


def test_a_message_without_control_id_is_answered_ae_naming_msh_10(settings: Settings) -> None:
    raw = (HL7 / "text_nte_after_obr.hl7").read_bytes().replace(b"|TEXT-ORU-0001|", b"||", 1)
    with session_scope(settings.database_url) as session:
        receipt = intake.receive_message(session=session, raw=raw, source="test", settings=settings)

    assert (receipt.ack_code, receipt.location, receipt.status) == (
        "AE",
        "MSH-10",
        InboxStatus.ERROR,
    )
    assert not receipt.should_process


def receive_fhir(settings: Settings, document: dict[str, Any]) -> Receipt:
    raw = json.dumps(document).encode()
    with session_scope(settings.database_url) as session:
        return intake.receive_fhir(session=session, raw=raw, source="test", settings=settings)


def fhir_pdf_report(settings: Settings, pdf: bytes) -> dict[str, Any]:
    document = json.loads((SAMPLES / "fhir" / "diagnosticreport_pdf.json").read_text())
    document["issued"] = (datetime.now(settings.site_zone) - timedelta(minutes=30)).isoformat()
    document["presentedForm"][0]["data"] = base64.b64encode(pdf).decode()
    return document


def test_a_fhir_report_only_in_a_pdf_is_routed_on_its_text(settings: Settings) -> None:
    pdf = sample_documents.pdf_with_lines(sample_documents.PDF_REPORT)
    receipt = receive_fhir(settings, fhir_pdf_report(settings, pdf))
    assert (receipt.ack_code, receipt.should_process) == ("AA", True)

    summary = run_scan(receipt.inbox_id)

    assert summary["decision"]["referrals"] == ["rheumatology"]


def test_a_fhir_pdf_without_text_layer_is_refused_and_starts_no_run(settings: Settings) -> None:
    receipt = receive_fhir(settings, fhir_pdf_report(settings, sample_documents.pdf_with_lines([])))

    # The HTTP gateway answers InvalidField with 422 and an OperationOutcome (gateway/http.py).
    assert (receipt.ack_code, receipt.error_kind, receipt.location) == (
        "AE",
        "InvalidField",
        "DiagnosticReport.presentedForm[0].data",
    )
    assert "no text layer" in receipt.reason
    assert not receipt.should_process
