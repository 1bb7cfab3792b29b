"""Corrected (C), cancelled (X) and late preliminary (P) reports through the flow's steps.

Each case feeds real messages through intake and the pipeline steps the scan-completed flow
sequences (same functions, same one-transaction-per-step), on SQLite and PostgreSQL, with the
demo clinic's calendars: a correction supersedes the decision, reconciles referrals through
their state machine and moves, keeps or cancels the follow-up and its texts; a cancellation
withdraws all of it; a stale report changes nothing; replays and re-runs do nothing twice.
Also: the patient's language from a FHIR report reaches the patient and their texts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, col, select

from followup.core.demo import restamp_for_today
from followup.services import intake
from followup.services.intake import Receipt
from followup.settings import Settings, get_settings
from models import queries, referral_queries
from models.db import session_scope
from models.tables import (
    Appointment,
    AuditEvent,
    Decision,
    Escalation,
    ImagingStudy,
    InboxStatus,
    OutboundMessage,
    OutboundStatus,
    Patient,
    Referral,
)
from models.types import utcnow
from tests.conftest import SAMPLES, days_after_result, run_scan, seed_clinic

HL7 = SAMPLES / "hl7"
NEURO = HL7 / "spine_neurology_root_compression.hl7"  # ACC2026000101, routine, neurology
CORRECTED = HL7 / "spine_corrected.hl7"  # its correction: still routine neurology
IMPRESSION_2 = b"2. Mild L4-5 disc bulge without stenosis."
IMPRESSION_1 = (
    b"1. Right paracentral L5-S1 disc extrusion with caudal migration compressing the"
    b" descending right S1 nerve root."
)
ADDENDUM = (
    b"ADDENDUM: Laterality corrected on 2026-11-05. The L5-S1 disc extrusion is right"
    b" paracentral and compresses the descending right S1 nerve root; the original report"
    b" stated left in error. No other change."
)


@pytest.fixture
def settings(flow_database_url: str) -> Settings:
    seed_clinic(flow_database_url)
    return get_settings()


def message(settings: Settings, raw: bytes) -> bytes:
    return restamp_for_today(raw, now=datetime.now(settings.site_zone))


def corrected_to_urgent(settings: Settings) -> bytes:
    raw = CORRECTED.read_bytes().replace(
        IMPRESSION_2,
        b"2. Marrow-replacing lesion in the L3 vertebral body, concerning for metastasis.",
    )
    return message(settings, raw.replace(b"DEMO-ORU-0010", b"CORR-URGENT"))


def corrected_to_emergent(settings: Settings) -> bytes:
    raw = CORRECTED.read_bytes().replace(
        IMPRESSION_2, b"2. Large L4-5 extrusion compressing the cauda equina."
    )
    return message(settings, raw.replace(b"DEMO-ORU-0010", b"CORR-EMERGENT"))


def corrected_to_no_referral(settings: Settings) -> bytes:
    raw = (
        CORRECTED.read_bytes()
        .replace(IMPRESSION_1, b"1. No disc herniation and no nerve root compression.")
        .replace(ADDENDUM, b"ADDENDUM: Corrected on 2026-11-05: the L5-S1 disc is normal.")
    )
    return message(settings, raw.replace(b"DEMO-ORU-0010", b"CORR-NONE"))


def with_status(raw: bytes, status: bytes, control_id: bytes) -> bytes:
    return raw.replace(b"|MR|F|", b"|MR|" + status + b"|").replace(b"DEMO-ORU-0001", control_id)


def receive(settings: Settings, raw: bytes) -> Receipt:
    with session_scope(settings.database_url) as session:
        return intake.receive_message(session=session, raw=raw, source="test", settings=settings)


def ingest(settings: Settings, raw: bytes) -> dict[str, Any]:
    receipt = receive(settings, raw)
    assert receipt.should_process, receipt
    return run_scan(receipt.inbox_id)


def all_rows(session: Session, table: Any) -> list[Any]:
    return list(session.exec(select(table).order_by(col(table.id))))


def actions(session: Session) -> list[str]:
    return [event.action for event in all_rows(session, AuditEvent)]


def messages_of(session: Session, appointment_id: int) -> list[tuple[str, str]]:
    return [
        (m.kind, m.status)
        for m in queries.messages_for_appointment(session=session, appointment_id=appointment_id)
    ]


def test_routine_corrected_to_urgent_moves_the_visit_and_replaces_its_texts(
    settings: Settings,
) -> None:
    first = ingest(settings, message(settings, NEURO.read_bytes()))
    routine_id = first["appointment"]["id"]
    assert 7 <= days_after_result(settings, first) <= 14
    with session_scope(settings.database_url) as session:
        # Its confirmation went out (dry run): the patient knows the routine time.
        [confirmation] = [
            m
            for m in queries.messages_for_appointment(session=session, appointment_id=routine_id)
            if m.kind == "confirmation"
        ]
        confirmation.status = OutboundStatus.DRY_RUN

    corrected = ingest(settings, corrected_to_urgent(settings))

    assert corrected["decision"]["urgency"] == "urgent"
    urgent = corrected["appointment"]
    assert urgent["id"] != routine_id
    assert 1 <= days_after_result(settings, corrected) <= 5  # 3 business days
    assert [(r["specialty"], r["status"]) for r in corrected["referrals"]] == [
        ("neurology", "initiated"),
        ("orthopedics", "initiated"),
    ]
    kinds = {m["kind"] for m in corrected["scheduled_messages"]}
    assert "reschedule" in kinds and "confirmation" not in kinds
    reschedule = next(m for m in corrected["scheduled_messages"] if m["kind"] == "reschedule")
    assert "is now" in reschedule["body"] and "metasta" not in reschedule["body"].lower()
    with session_scope(settings.database_url) as session:
        old = session.get(Appointment, routine_id)
        assert old is not None
        assert (old.status, old.replaced_by_id) == ("cancelled", urgent["id"])
        assert {status for _, status in messages_of(session, routine_id)} == {
            "cancelled",
            "dry_run",
        }
        decisions = all_rows(session, Decision)
        assert [d.urgency for d in decisions] == ["routine", "urgent"]
        assert decisions[0].superseded_at is not None and decisions[1].superseded_at is None
        referrals = all_rows(session, Referral)
        assert {r.decision_id for r in referrals} == {decisions[1].id}  # both follow it now
        done = actions(session)
        assert {"appointment.moved", "appointment.cancelled", "referral.initiated"} <= set(done)
        recorded = [
            e.detail for e in all_rows(session, AuditEvent) if e.action == "decision.recorded"
        ]
        assert recorded[-1]["supersedes"] == decisions[0].id


def test_replayed_or_rerun_correction_changes_nothing(settings: Settings) -> None:
    ingest(settings, message(settings, NEURO.read_bytes()))
    raw = corrected_to_urgent(settings)
    receipt = receive(settings, raw)
    corrected = run_scan(receipt.inbox_id)
    with session_scope(settings.database_url) as session:
        before = {
            table: len(all_rows(session, table))
            for table in (Appointment, OutboundMessage, Decision, Referral, Escalation, AuditEvent)
        }

    replayed = receive(settings, raw)
    # a re-submitted run of the same row
    again = run_scan(receipt.inbox_id)

    assert (replayed.status, replayed.duplicate_of) == (InboxStatus.DUPLICATE, receipt.inbox_id)
    assert again["appointment"] == corrected["appointment"]
    assert again["scheduled_messages"] == corrected["scheduled_messages"]
    with session_scope(settings.database_url) as session:
        after = {table: len(all_rows(session, table)) for table in before}
    assert after == before


def test_correction_in_the_same_tier_keeps_the_visit_and_its_texts(settings: Settings) -> None:
    first = ingest(settings, message(settings, NEURO.read_bytes()))

    corrected = ingest(settings, message(settings, CORRECTED.read_bytes()))

    assert corrected["decision"]["urgency"] == "routine"
    assert corrected["appointment"] == first["appointment"]
    assert corrected["scheduled_messages"] == first["scheduled_messages"]
    with session_scope(settings.database_url) as session:
        assert len(all_rows(session, Appointment)) == 1
        [referral] = all_rows(session, Referral)
        assert referral.status == "initiated"
        assert len(all_rows(session, Decision)) == 2


def test_correction_dropping_a_referral_cancels_it_through_its_state_machine(
    settings: Settings,
) -> None:
    first = ingest(settings, message(settings, NEURO.read_bytes()))

    corrected = ingest(settings, corrected_to_no_referral(settings))

    assert corrected["decision"]["referrals"] == []
    assert corrected["referrals"] == []
    assert corrected["appointment"] == first["appointment"]  # still a routine follow-up
    with session_scope(settings.database_url) as session:
        [referral] = all_rows(session, Referral)
        assert referral.status == "cancelled"
        [change] = referral_queries.referral_history(session=session, referral_id=referral.id)
        assert (change.from_status, change.to_status, change.actor) == (
            "initiated",
            "cancelled",
            "engine",
        )
        assert "referral.cancelled" in actions(session)


def test_correction_to_emergent_cancels_the_visit_and_escalates(settings: Settings) -> None:
    first = ingest(settings, message(settings, NEURO.read_bytes()))

    corrected = ingest(settings, corrected_to_emergent(settings))

    assert (corrected["decision"]["urgency"], corrected["decision"]["critical"]) == (
        "emergent",
        True,
    )
    assert corrected["appointment"] is None
    assert corrected["scheduled_messages"] == []
    assert [(e["kind"], e["status"], e["target"]) for e in corrected["escalations"]] == [
        ("critical_finding", "open", "1000000001"),
        ("visit_cancelled", "open", "scheduler-queue"),
    ]
    with session_scope(settings.database_url) as session:
        old = session.get(Appointment, first["appointment"]["id"])
        assert old is not None and old.status == "cancelled"
        assert "emergent" in (old.cancel_reason or "")
        assert {s for _, s in messages_of(session, first["appointment"]["id"])} == {"cancelled"}


def test_cancelled_result_withdraws_decision_referrals_and_follow_up(settings: Settings) -> None:
    first = ingest(settings, message(settings, NEURO.read_bytes()))
    cancel = receive(settings, with_status(message(settings, NEURO.read_bytes()), b"X", b"X-1"))
    assert cancel.should_process  # the study was routed: there is something to undo

    withdrawn = run_scan(cancel.inbox_id)
    again = run_scan(cancel.inbox_id)

    assert withdrawn["status"] == "processed"
    assert (withdrawn["decision"], withdrawn["appointment"], withdrawn["referrals"]) == (
        None,
        None,
        [],
    )
    assert [e["kind"] for e in withdrawn["escalations"]] == ["visit_cancelled"]
    assert again == withdrawn
    with session_scope(settings.database_url) as session:
        appointment_id = first["appointment"]["id"]
        appointment = session.get(Appointment, appointment_id)
        assert appointment is not None and appointment.status == "cancelled"
        assert {s for _, s in messages_of(session, appointment_id)} == {"cancelled"}
        [referral] = all_rows(session, Referral)
        assert referral.status == "cancelled"
        assert referral_queries.referral_history(session=session, referral_id=referral.id)[
            0
        ].reason == ("the result was cancelled by the RIS (OBR-25 X)")
        assert [d.superseded_at is not None for d in all_rows(session, Decision)] == [True]
        study = queries.study_by_accession(session=session, accession="ACC2026000101")
        assert study is not None and study.report_status == "X"
        assert study.report_text.startswith("EXAM:")  # the cancelled report stays readable
        done = actions(session)
        assert done.count("decision.withdrawn") == 1
        assert done.count("appointment.cancelled") == 1


def test_cancellation_run_before_its_result_leaves_that_result_stale(
    settings: Settings,
) -> None:
    final = receive(settings, message(settings, NEURO.read_bytes()))
    cancel = receive(settings, with_status(message(settings, NEURO.read_bytes()), b"X", b"X-2"))
    assert cancel.should_process  # its result is still waiting for a run

    run_scan(cancel.inbox_id)
    late = run_scan(final.inbox_id)

    assert late["status"] == InboxStatus.HELD
    assert (late["decision"], late["appointment"]) == (None, None)
    with session_scope(settings.database_url) as session:
        assert all_rows(session, Decision) == []
        assert all_rows(session, Appointment) == []


def test_late_preliminary_does_not_replace_the_final_report(settings: Settings) -> None:
    raw = message(settings, NEURO.read_bytes())
    final = receive(settings, raw)
    preliminary = raw.replace(IMPRESSION_1, b"1. PRELIMINARY: possible cord compression.")
    # Received before the final was routed, so intake lets it through; its run comes last.
    late = receive(settings, with_status(preliminary, b"P", b"LATE-P"))
    assert late.should_process
    routed = run_scan(final.inbox_id)

    held = run_scan(late.inbox_id)

    assert held["status"] == InboxStatus.HELD
    assert held["decision"] == routed["decision"]
    assert held["appointment"] == routed["appointment"]
    assert held["escalations"] == []  # its critical-sounding text is not the report of record
    with session_scope(settings.database_url) as session:
        study = queries.study_by_accession(session=session, accession="ACC2026000101")
        assert study is not None
        assert (study.report_status, study.inbox_id) == ("F", final.inbox_id)
        assert "PRELIMINARY" not in study.report_text
        assert len(all_rows(session, Decision)) == 1
        assert "report.stale" in actions(session)


def test_final_delivered_after_its_correction_is_held_not_routed(settings: Settings) -> None:
    now = datetime.now(settings.site_zone)
    # The RIS queue hands over the correction (reported 30 min ago) before the final it
    # corrects (reported an hour ago): the uncorrected text must not become the report again.
    correction = receive(settings, restamp_for_today(CORRECTED.read_bytes(), now=now))
    routed = run_scan(correction.inbox_id)
    late_final = receive(
        settings, restamp_for_today(NEURO.read_bytes(), now=now - timedelta(minutes=30))
    )
    assert late_final.ack_code == "AA"

    held = run_scan(late_final.inbox_id)

    assert held["status"] == InboxStatus.HELD
    assert (held["decision"], held["appointment"]) == (routed["decision"], routed["appointment"])
    with session_scope(settings.database_url) as session:
        study = queries.study_by_accession(session=session, accession="ACC2026000101")
        assert study is not None
        assert (study.report_status, study.inbox_id) == ("C", correction.inbox_id)
        assert ADDENDUM.decode() in study.report_text
        assert len(all_rows(session, Decision)) == 1
        [stale] = session.exec(select(AuditEvent).where(AuditEvent.action == "report.stale")).all()
        assert stale.detail == {"inbox_id": late_final.inbox_id, "result_status": "F"}


def test_final_reported_after_a_correction_is_new_content_and_replaces_it(
    settings: Settings,
) -> None:
    now = datetime.now(settings.site_zone)
    correction = receive(settings, restamp_for_today(CORRECTED.read_bytes(), now=now))
    run_scan(correction.inbox_id)

    newer_final = receive(
        settings, restamp_for_today(NEURO.read_bytes(), now=now + timedelta(minutes=5))
    )
    assert newer_final.should_process
    summary = run_scan(newer_final.inbox_id)

    assert summary["status"] == InboxStatus.PROCESSED
    with session_scope(settings.database_url) as session:
        study = queries.study_by_accession(session=session, accession="ACC2026000101")
        assert study is not None
        assert (study.report_status, study.inbox_id) == ("F", newer_final.inbox_id)
        assert ADDENDUM.decode() not in study.report_text


def test_upsert_study_keeps_the_final_report_against_a_late_preliminary(
    settings: Settings,
) -> None:
    final_raw = message(settings, NEURO.read_bytes())
    final = receive(settings, final_raw)
    late = receive(settings, with_status(final_raw, b"P", b"LATE-P2"))
    with session_scope(settings.database_url) as session:
        final_scan = intake.parse_stored(
            queries.get_inbox_message(session=session, inbox_id=final.inbox_id), settings
        )
        preliminary = intake.parse_stored(
            queries.get_inbox_message(session=session, inbox_id=late.inbox_id), settings
        )
        patient = queries.upsert_patient(session=session, scan=final_scan)
        queries.upsert_study(
            session=session,
            scan=final_scan,
            patient=patient,
            provider=None,
            inbox_id=final.inbox_id,
        )
        # A later inbox row, so only the status makes it stale.
        kept = queries.upsert_study(
            session=session,
            scan=preliminary,
            patient=patient,
            provider=None,
            inbox_id=late.inbox_id,
        )
        assert (kept.report_status, kept.inbox_id) == ("F", final.inbox_id)
        assert kept.report_text == final_scan.report_text

    with session_scope(settings.database_url) as session:
        [study] = all_rows(session, ImagingStudy)
        assert (study.report_status, study.report_text) == ("F", final_scan.report_text)


def test_new_critical_finding_after_acknowledgement_opens_a_new_escalation(
    settings: Settings,
) -> None:
    ingest(settings, message(settings, NEURO.read_bytes()))
    with session_scope(settings.database_url) as session:
        study = queries.study_by_accession(session=session, accession="ACC2026000101")
        assert study is not None and study.id is not None
        first = queries.record_escalation(
            session=session, study_id=study.id, kind="critical_finding", reason="a", target="x"
        )
        repeat = queries.record_escalation(
            session=session, study_id=study.id, kind="critical_finding", reason="b", target="x"
        )
        assert repeat.id == first.id  # unacknowledged: the same one
        first.status, first.acknowledged_at = "acknowledged", utcnow() - timedelta(minutes=5)
        session.add(first)
        session.flush()
        second = queries.record_escalation(
            session=session, study_id=study.id, kind="critical_finding", reason="c", target="x"
        )
        assert second.id != first.id
        assert [(e.status, e.reason) for e in all_rows(session, Escalation)] == [
            ("acknowledged", "a"),
            ("open", "c"),
        ]


def test_database_allows_one_open_escalation_per_study_and_kind(settings: Settings) -> None:
    from sqlalchemy.exc import IntegrityError

    ingest(settings, message(settings, NEURO.read_bytes()))
    with pytest.raises(IntegrityError), session_scope(settings.database_url) as session:
        study = queries.study_by_accession(session=session, accession="ACC2026000101")
        assert study is not None
        session.add(Escalation(study_id=study.id, kind="unbookable", reason="a"))
        session.add(Escalation(study_id=study.id, kind="unbookable", reason="b"))


def test_corrected_critical_after_acknowledgement_escalates_again(settings: Settings) -> None:
    ingest(settings, message(settings, NEURO.read_bytes()))
    ingest(settings, corrected_to_emergent(settings))
    with session_scope(settings.database_url) as session:
        [critical] = [e for e in all_rows(session, Escalation) if e.kind == "critical_finding"]
        critical.status, critical.acknowledged_at = "acknowledged", utcnow()
        session.add(critical)
    again = corrected_to_emergent(settings).replace(b"CORR-EMERGENT", b"CORR-EMERGENT-2")
    again = again.replace(b"cauda equina.", b"cauda equina, now larger.")

    summary = ingest(settings, again)

    critical_escalations = [
        (e["status"]) for e in summary["escalations"] if e["kind"] == "critical_finding"
    ]
    assert critical_escalations == ["acknowledged", "open"]


def test_fhir_patient_language_reaches_the_patient_and_the_texts(settings: Settings) -> None:
    import json

    report = json.loads((SAMPLES / "fhir" / "diagnosticreport_contained.json").read_text())
    report["contained"][0]["communication"] = [
        {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-US"}]}}
    ]
    now = datetime.now(settings.site_zone)
    report["effectiveDateTime"] = (now - timedelta(hours=2)).isoformat(timespec="seconds")
    report["issued"] = (now - timedelta(minutes=30)).isoformat(timespec="seconds")
    with session_scope(settings.database_url) as session:
        receipt = intake.receive_fhir(
            session=session, raw=json.dumps(report).encode(), source="test", settings=settings
        )

    summary = run_scan(receipt.inbox_id)

    assert {m["kind"] for m in summary["scheduled_messages"]} >= {"confirmation"}
    with session_scope(settings.database_url) as session:
        patient = session.exec(select(Patient).where(Patient.mrn == "DM200103")).one()
        assert patient.language == "es"
        languages = {
            m.language
            for m in queries.messages_for_appointment(
                session=session, appointment_id=summary["appointment"]["id"]
            )
        }
        assert languages == {"es"}


def test_a_correction_closes_the_review_asked_about_the_superseded_text(
    settings: Settings,
) -> None:
    unclear = NEURO.read_bytes().replace(
        IMPRESSION_2, b"2. Indeterminate 2 cm mass in the left psoas muscle."
    )
    first = ingest(settings, message(settings, unclear))
    corrected = ingest(settings, message(settings, CORRECTED.read_bytes()))

    assert [(e["kind"], e["status"]) for e in first["escalations"]] == [("needs_review", "open")]
    assert corrected["decision"]["needs_review"] is False
    assert [(e["kind"], e["status"]) for e in corrected["escalations"]] == [
        ("needs_review", "superseded")
    ]
    with session_scope(settings.database_url) as session:
        assert "escalation.superseded" in actions(session)


def test_a_correction_that_still_needs_review_leaves_one_open_review(settings: Settings) -> None:
    unclear = b"2. Indeterminate 2 cm mass in the left psoas muscle."
    ingest(settings, message(settings, NEURO.read_bytes().replace(IMPRESSION_2, unclear)))
    corrected = ingest(
        settings, message(settings, CORRECTED.read_bytes().replace(IMPRESSION_2, unclear))
    )

    assert [(e["kind"], e["status"]) for e in corrected["escalations"]] == [
        ("needs_review", "superseded"),
        ("needs_review", "open"),
    ]
