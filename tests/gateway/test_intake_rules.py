"""Intake rules beyond the ORU basics: result statuses, orders and ADT, FHIR, cut-off frames."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from followup.ris.scan import PersonName, ScanCompleted, language_code
from followup.services import intake
from followup.services.intake import Receipt
from followup.settings import get_settings
from models import inbox_queries, queries
from models.db import session_scope
from models.tables import (
    AuditEvent,
    ImagingStudy,
    InboxMessage,
    InboxStatus,
    Patient,
    Provider,
)
from models.types import utcnow
from tests.conftest import SAMPLES, THIRD_PARTY

HL7 = SAMPLES / "hl7"
FHIR = SAMPLES / "fhir"
NEURO = HL7 / "spine_neurology_root_compression.hl7"  # ACC2026000101, MRN DM100101


def receive(database_url: str, raw: bytes) -> Receipt:
    settings = get_settings(database_url=database_url)
    with session_scope(database_url) as session:
        return intake.receive_message(session=session, raw=raw, source="test", settings=settings)


def receive_fhir(database_url: str, raw: bytes) -> Receipt:
    settings = get_settings(database_url=database_url)
    with session_scope(database_url) as session:
        return intake.receive_fhir(session=session, raw=raw, source="test", settings=settings)


def with_status(raw: bytes, status: bytes, control_id: bytes) -> bytes:
    """The neuro report with another OBR-25 and MSH-10 (the text is unchanged)."""
    return raw.replace(b"|MR|F|", b"|MR|" + status + b"|").replace(b"DEMO-ORU-0001", control_id)


def add_study(session: Session, *, accession: str, status: str) -> ImagingStudy:
    patient = Patient(mrn="DM100101")
    session.add(patient)
    session.flush()
    inbox = InboxMessage(raw=b"x", source="test", content_type="hl7v2")
    session.add(inbox)
    session.flush()
    assert patient.id is not None and inbox.id is not None
    study = ImagingStudy(
        accession=accession,
        patient_id=patient.id,
        report_status=status,
        report_text="",
        inbox_id=inbox.id,
    )
    session.add(study)
    session.flush()
    return study


def test_preliminary_after_a_final_is_kept_without_a_run(database_url: str) -> None:
    with session_scope(database_url) as session:
        add_study(session, accession="ACC2026000101", status="F")

    receipt = receive(database_url, with_status(NEURO.read_bytes(), b"P", b"LATE-P"))

    assert (receipt.ack_code, receipt.status) == ("AA", InboxStatus.PROCESSED)
    assert not receipt.should_process
    with session_scope(database_url) as session:
        row = session.get(InboxMessage, receipt.inbox_id)
        assert row is not None and row.summary is not None
        assert "preliminary after a F report" in row.summary["note"]
        [audited] = session.exec(
            select(AuditEvent).where(AuditEvent.action == "report.not_routed")
        ).all()
        assert (audited.entity, audited.entity_id) == ("inbox_message", receipt.inbox_id)
        assert audited.detail["result_status"] == "P"


AN_HOUR_AGO = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
NOW = AN_HOUR_AGO + timedelta(hours=1)


@pytest.mark.parametrize(
    ("status", "result_time", "current_status", "current_time", "older"),
    [
        ("F", AN_HOUR_AGO, "C", NOW, True),  # the final delivered after its correction
        ("F", NOW, "C", NOW, True),  # a correction that kept the final's OBR-22
        ("F", NOW, "C", AN_HOUR_AGO, False),  # written after the correction: new content
        ("F", None, "C", NOW, False),  # no OBR-22: its age is unknown, arrival order decides
        ("F", AN_HOUR_AGO, "C", None, False),
        # Stamps alone never drop a correction (date-only OBR-22, clock changes):
        ("C", AN_HOUR_AGO, "C", NOW, False),
        ("C", AN_HOUR_AGO, "F", NOW, False),
        ("F", AN_HOUR_AGO, "F", NOW, False),
        ("F", AN_HOUR_AGO, "P", NOW, False),  # a final always replaces a preliminary
        ("X", AN_HOUR_AGO, "C", NOW, False),  # a cancellation is never outdated by its stamp
    ],
)
def test_only_a_final_written_before_the_current_correction_is_outdated_by_its_stamp(
    status: str,
    result_time: datetime | None,
    current_status: str,
    current_time: datetime | None,
    older: bool,
) -> None:
    scan = ScanCompleted(
        accession="ACC1",
        mrn="M1",
        patient_name=PersonName("Doe"),
        result_status=status,
        report_text="IMPRESSION: normal.",
        result_time=result_time,
        exam_time=AN_HOUR_AGO - timedelta(hours=2),
    )

    assert (
        queries.final_after_its_correction(
            scan, current_status=current_status, current_time=current_time
        )
        is older
    )


def test_preliminary_before_any_final_runs(database_url: str) -> None:
    receipt = receive(database_url, (HL7 / "spine_preliminary.hl7").read_bytes())

    assert receipt.should_process


def test_corrected_report_runs_again(database_url: str) -> None:
    first = receive(database_url, NEURO.read_bytes())
    corrected = receive(database_url, (HL7 / "spine_corrected.hl7").read_bytes())
    same_text_as_c = receive(database_url, with_status(NEURO.read_bytes(), b"C", b"AS-C"))

    assert [r.should_process for r in (first, corrected, same_text_as_c)] == [True, True, True]
    assert corrected.accession == first.accession


def test_cancelled_result_is_kept_without_a_run(database_url: str) -> None:
    receipt = receive(database_url, with_status(NEURO.read_bytes(), b"X", b"CANCEL-1"))

    assert (receipt.ack_code, receipt.status) == ("AA", InboxStatus.PROCESSED)


def test_order_updates_the_study_ordering_provider(database_url: str) -> None:
    with session_scope(database_url) as session:
        study = add_study(session, accession="B103Z", status="F")
        session.add(
            Provider(
                npi="7101", family_name="Estrada", practice="ortho", timezone="America/New_York"
            )
        )
        study_id = study.id
    order = (THIRD_PARTY / "hl7" / "dcm4che" / "legacy_ORM^O01.hl7").read_bytes()

    receipt = receive(database_url, order)

    assert (receipt.ack_code, receipt.status, receipt.accession) == (
        "AA",
        InboxStatus.PROCESSED,
        "B103Z",
    )
    with session_scope(database_url) as session:
        study_row = session.get_one(ImagingStudy, study_id)
        provider = session.exec(select(Provider).where(Provider.npi == "7101")).one()
        assert (study_row.ordering_provider_key, study_row.ordering_provider_id) == (
            "7101",
            provider.id,
        )
        assert inbox_queries.ordered_by(session=session, accession="B103Z") == "7101"


def test_order_before_its_result_is_remembered_for_the_result(database_url: str) -> None:
    order = (THIRD_PARTY / "hl7" / "dcm4che" / "OMI^O23-ImagingOrder.hl7").read_bytes()

    receipt = receive(database_url, order)

    assert receipt.accession == "FillerOrderNumberImagingServiceRequest"
    with session_scope(database_url) as session:
        # OBR-16 (^RequestingPhysicianFN...) has no id: the name is the key, as for results.
        assert inbox_queries.ordered_by(session=session, accession=receipt.accession) == (
            "name:RequestingPhysicianFN^RequestingPhysicianGN"
        )
        patient = session.exec(select(Patient).where(Patient.mrn == "PID_1")).one()
        assert (patient.family_name, patient.given_name) == ("Smith", "Lucy")


def test_adt_without_pid_is_an_error(database_url: str) -> None:
    raw = b"MSH|^~\\&|ADT|H|FU|H|20261104||ADT^A04|ADT-9|P|2.5.1\rEVN|A04|20261104\r"

    receipt = receive(database_url, raw)

    assert (receipt.ack_code, receipt.location, receipt.error_kind) == ("AE", "PID", "MissingField")


def test_adt_keeps_stored_values_it_does_not_carry(database_url: str) -> None:
    with session_scope(database_url) as session:
        session.add(Patient(mrn="M1", phone_e164="+14135550100", language="es"))
    raw = b"MSH|^~\\&|ADT|H|FU|H|20261104||ADT^A31|ADT-10|P|2.5.1\rPID|1||M1||Doe^Jane\r"

    receive(database_url, raw)

    with session_scope(database_url) as session:
        patient = session.exec(select(Patient).where(Patient.mrn == "M1")).one()
        assert (patient.family_name, patient.phone_e164, patient.language) == (
            "Doe",
            "+14135550100",
            "es",
        )


@pytest.mark.parametrize(
    ("value", "code"),
    [("en", "en"), ("en-US", "en"), ("SPA", "es"), ("spa", "es"), ("eng", "en"), ("xx-1", "xx")],
)
def test_language_codes(value: str, code: str) -> None:
    assert language_code(value) == code


@pytest.mark.parametrize("value", ["", "Spanish", "123", "zzz"])
def test_unknown_language_is_none(value: str) -> None:
    assert language_code(value) is None


def test_accession_longer_than_the_column_is_refused(database_url: str) -> None:
    long = b"A" * 70
    raw = NEURO.read_bytes().replace(b"ACC2026000101", long)

    receipt = receive(database_url, raw)

    assert (receipt.ack_code, receipt.location) == ("AE", "OBR-3")


def test_unterminated_frame_is_an_error_without_control_id(database_url: str) -> None:
    with session_scope(database_url) as session:
        receipt = intake.receive_unterminated(session=session, raw=NEURO.read_bytes(), source="t")

    assert (receipt.ack_code, receipt.status, receipt.error_kind) == (
        "AE",
        InboxStatus.ERROR,
        "MalformedMessage",
    )
    assert receipt.header is not None and receipt.header.control_id == "DEMO-ORU-0001"
    assert receive(database_url, NEURO.read_bytes()).should_process


def test_fhir_then_hl7_of_the_same_report_is_a_duplicate(database_url: str) -> None:
    fhir_first = receive_fhir(database_url, (FHIR / "diagnosticreport_contained.json").read_bytes())
    hl7_twin = (
        (HL7 / "spine_pain_degenerative.hl7")
        .read_bytes()
        .replace(b"ACC2026000103", b"ACC2026200103")
    )

    second = receive(database_url, hl7_twin)

    assert fhir_first.should_process
    assert (second.status, second.duplicate_of) == (InboxStatus.DUPLICATE, fhir_first.inbox_id)


def test_parse_stored_reads_either_protocol(database_url: str) -> None:
    settings = get_settings(database_url=database_url)
    fhir_receipt = receive_fhir(
        database_url, (FHIR / "diagnosticreport_contained.json").read_bytes()
    )
    hl7_receipt = receive(database_url, NEURO.read_bytes())

    with session_scope(database_url) as session:
        fhir_row = session.get(InboxMessage, fhir_receipt.inbox_id)
        hl7_row = session.get(InboxMessage, hl7_receipt.inbox_id)
        assert fhir_row is not None and hl7_row is not None
        assert intake.parse_stored(fhir_row, settings).accession == "ACC2026200103"
        assert intake.parse_stored(hl7_row, settings).accession == "ACC2026000101"


def test_unclaimed_messages_are_the_old_received_ones(database_url: str) -> None:
    old = receive(database_url, NEURO.read_bytes())
    receive(database_url, (HL7 / "bad_no_mrn.hl7").read_bytes())
    with session_scope(database_url) as session:
        row = session.get(InboxMessage, old.inbox_id)
        assert row is not None
        row.received_at = utcnow() - timedelta(minutes=5)
        session.add(row)
    new = receive(database_url, (HL7 / "spine_normal.hl7").read_bytes())

    with session_scope(database_url) as session:
        found = inbox_queries.unclaimed_messages(
            session=session, received_before=utcnow() - timedelta(minutes=2), limit=10
        )
        assert [r.id for r in found] == [old.inbox_id]
        everything = inbox_queries.unclaimed_messages(
            session=session, received_before=utcnow(), limit=10
        )
        assert [r.id for r in everything] == [old.inbox_id, new.inbox_id]
