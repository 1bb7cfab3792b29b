"""The EHR outbox end to end on real sockets: a scan books a visit and opens a referral, the
dispatcher sends SIU and REF over MLLP to test EHRs (tools/fake_ehr.py), and what they
hold is parsed back with python-hl7."""

from __future__ import annotations

import socket
from datetime import timedelta

from sqlmodel import Session, col, select

from followup.core.referrals import ReferralStatus
from followup.services import moves
from followup.settings import Settings
from models import booking, ehr_outbox, queries, worklist
from models.db import session_scope
from models.tables import Appointment, EhrOutboxStatus, Escalation, Referral
from models.types import utcnow
from tests.ehr.conftest import (
    ACCESSION,
    MRN,
    POLICY,
    Clock,
    dispatch,
    ingest,
    outbox,
    settings_for,
    the_referral,
    the_visit,
    visit_id,
)
from tools.fake_ehr import FakeEhr, fake_ehr


def triggers(ehr: FakeEhr) -> list[str]:
    return [str(message.segment("MSH")(9)) for message in ehr.kept()]


def test_a_scan_sends_one_s12_to_the_ehr_and_one_i12_to_neurology(
    clinic: str, clock: Clock
) -> None:
    with fake_ehr() as ehr, fake_ehr() as neurology:
        settings = settings_for(clinic, ehr_mllp=ehr.address, referrals_mllp=neurology.address)
        ingest(settings)
        report = dispatch(settings, clock)
        visit, referral = the_visit(clinic), the_referral(clinic)

    assert report.outcomes == {"done": 2}
    assert triggers(ehr) == ["SIU^S12^SIU_S12"]
    [siu] = ehr.kept()
    assert str(siu["SCH.F2.R1.C1"]) == f"VISIT{visit.id}"
    assert str(siu["PID.F3.R1.C1"]) == MRN
    assert str(siu["TQ1.F7"]) == visit.start.astimezone(settings.site_zone).strftime(
        "%Y%m%d%H%M%S%z"
    )
    assert triggers(neurology) == ["REF^I12^REF_I12"]
    [ref] = neurology.kept()
    assert str(ref["RF1.F6.R1.C1"]) == f"REF{referral.id}"
    assert str(ref["OBR.F3.R1.C1"]) == ACCESSION
    assert str(ref["PRD.F1.R1.C1"]) == "RP"
    report_lines = [str(segment(5)) for segment in ref.segments("OBX")]
    assert any("IMPRESSION" in line for line in report_lines)
    assert referral.status == ReferralStatus.SENT
    assert [row.status for row in outbox(clinic)] == ["done", "done"]


def test_a_reschedule_sends_s13_and_a_cancel_sends_s15_and_i14(clinic: str, clock: Clock) -> None:
    with fake_ehr() as ehr, fake_ehr() as neurology:
        settings = settings_for(clinic, ehr_mllp=ehr.address, referrals_mllp=neurology.address)
        ingest(settings)
        dispatch(settings, clock)
        first_id = visit_id(clinic)
        with session_scope(clinic) as session:
            move(session, first_id, "patient asked", settings)
        dispatch(settings, clock)
        with session_scope(clinic) as session:
            booking.cancel_appointment(
                session=session,
                timing=settings.offer_timing,
                appointment_id=visit_id(clinic),
                reason="test",
            )
            queries.cancel_referrals(
                session=session,
                referrals=list(session.exec(select(Referral))),
                actor="test",
                reason="no longer needed",
            )
        dispatch(settings, clock)

    assert triggers(ehr) == ["SIU^S12^SIU_S12", "SIU^S13^SIU_S12", "SIU^S15^SIU_S12"]
    s12, s13, s15 = ehr.kept()
    # One visit for the EHR: the reschedule keeps the first appointment's id.
    assert {str(m["SCH.F2.R1.C1"]) for m in (s12, s13, s15)} == {f"VISIT{first_id}"}
    assert str(s13["TQ1.F7"]) != str(s12["TQ1.F7"])
    assert str(s15["SCH.F25.R1.C1"]) == "Cancelled"
    assert triggers(neurology) == ["REF^I12^REF_I12", "REF^I14^REF_I12"]


def test_a_visit_booked_and_moved_before_sending_goes_as_one_s12(clinic: str, clock: Clock) -> None:
    with fake_ehr() as ehr:
        settings = settings_for(clinic, ehr_mllp=ehr.address)
        ingest(settings)
        with session_scope(clinic) as session:
            move(session, visit_id(clinic), "patient asked", settings)
        dispatch(settings, clock)
        moved = the_visit(clinic)

    assert triggers(ehr) == ["SIU^S12^SIU_S12"]
    [s12] = ehr.kept()
    local_start = moved.start.astimezone(settings.site_zone).strftime("%Y%m%d%H%M")
    assert str(s12["TQ1.F7"]).startswith(local_start)


def test_a_visit_booked_and_cancelled_before_sending_sends_nothing(
    clinic: str, clock: Clock
) -> None:
    with fake_ehr() as ehr:
        settings = settings_for(clinic, ehr_mllp=ehr.address)
        ingest(settings)
        with session_scope(clinic) as session:
            booking.cancel_appointment(
                session=session,
                timing=settings.offer_timing,
                appointment_id=visit_id(clinic),
                reason="test",
            )
        report = dispatch(settings, clock)

    assert ehr.received == []
    visit_rows = [row for row in outbox(clinic) if row.subject == ehr_outbox.VISIT]
    assert [row.status for row in visit_rows] == [EhrOutboxStatus.SUPERSEDED]
    assert report.outcomes["done"] == 0


def test_a_lost_ack_is_resent_once_under_the_same_control_id(clinic: str, clock: Clock) -> None:
    with fake_ehr("drop") as ehr:
        settings = settings_for(clinic, ehr_mllp=ehr.address)
        ingest(settings)
        first = dispatch(settings, clock)
        clock.advance(POLICY.retry_base_seconds)
        second = dispatch(settings, clock)

    assert first.outcomes["retry"] == 1 and second.outcomes["done"] == 1
    control_ids = [text.split("\r")[0].split("|")[9] for text in ehr.received]
    assert len(control_ids) == 2 and control_ids[0] == control_ids[1]
    assert ehr.received[0] == ehr.received[1]  # byte for byte the same message
    assert len(ehr.accepted) == 1


def test_no_ack_in_time_is_retried_and_the_resend_is_not_kept_twice(
    clinic: str, clock: Clock
) -> None:
    with fake_ehr("silent") as ehr:
        settings = settings_for(clinic, ehr_mllp=ehr.address)
        ingest(settings)
        first = dispatch(settings, clock)
        clock.advance(POLICY.retry_base_seconds)
        second = dispatch(settings, clock)

    assert (first.outcomes["retry"], second.outcomes["done"]) == (1, 1)
    assert (len(ehr.received), len(ehr.accepted)) == (2, 1)


def test_an_ae_is_held_on_the_worklist_and_later_changes_wait_behind_it(
    clinic: str, clock: Clock
) -> None:
    with fake_ehr("AE") as ehr:
        settings = settings_for(clinic, ehr_mllp=ehr.address)
        ingest(settings)
        report = dispatch(settings, clock)
        with session_scope(clinic) as session:
            move(session, visit_id(clinic), "patient asked", settings)
        clock.advance(3600)
        later = dispatch(settings, clock)

    assert report.outcomes["held"] == 1 and later.outcomes["done"] == 0
    visit_rows = [row for row in outbox(clinic) if row.subject == ehr_outbox.VISIT]
    assert [(row.trigger, row.status) for row in visit_rows] == [
        ("S12", EhrOutboxStatus.HELD),
        ("S13", EhrOutboxStatus.PENDING),
    ]
    assert visit_rows[0].error == "PID-3 unknown to this EHR"
    with session_scope(clinic) as session:
        [task] = session.exec(
            select(Escalation).where(col(Escalation.kind) == "ehr_message_held")
        ).all()
        shown = worklist.open_escalations(session=session)
    assert f"followup ehr release {visit_rows[0].id}" in task.reason
    assert task.id in {row["id"] for row in shown}


def test_an_ar_is_retried_and_a_refused_connection_ends_held(clinic: str, clock: Clock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the probe is closed
    with fake_ehr("AR") as ehr:
        settings = settings_for(
            clinic, ehr_mllp=ehr.address, referrals_mllp=f"127.0.0.1:{closed_port}"
        )
        ingest(settings)
        outcomes = []
        for _ in range(POLICY.max_attempts):
            outcomes.append(dict(dispatch(settings, clock).outcomes))
            clock.advance(POLICY.retry_max_seconds)

    assert outcomes[0] == {"retry": 2}
    assert outcomes[1] == {"done": 1, "retry": 1}
    assert outcomes[2] == {"held": 1}
    assert len(ehr.accepted) == 1
    referral_row = next(row for row in outbox(clinic) if row.subject == ehr_outbox.REFERRAL)
    assert referral_row.status == EhrOutboxStatus.HELD
    assert "cannot connect" in (referral_row.error or "")
    assert the_referral(clinic).status == ReferralStatus.INITIATED


def test_without_destinations_messages_are_built_and_stored_as_dry_run(
    clinic: str, clock: Clock
) -> None:
    settings = settings_for(clinic)
    ingest(settings)
    report = dispatch(settings, clock)

    assert report.outcomes == {"dry_run": 2}
    rows = outbox(clinic)
    assert [row.status for row in rows] == ["dry_run", "dry_run"]
    assert all(row.payload and row.payload.startswith("MSH|") for row in rows)
    assert the_referral(clinic).status == ReferralStatus.INITIATED
    with session_scope(clinic) as session:
        assert session.exec(select(Appointment)).one().status == "booked"


def test_a_referral_sent_and_unanswered_for_n_days_is_on_the_worklist(
    clinic: str, clock: Clock
) -> None:
    with fake_ehr() as neurology:
        settings = settings_for(clinic, referrals_mllp=neurology.address, referral_answer_days=5)
        ingest(settings)
        dispatch(settings, clock)
    referral = the_referral(clinic)
    within = timedelta(days=settings.referral_answer_days)
    sent_at = referral.status_changed_at

    with session_scope(clinic) as session:
        before = worklist.overdue_referral_rows(
            session=session, now=sent_at + within - timedelta(minutes=1), answer_within=within
        )
        after = worklist.overdue_referral_rows(
            session=session, now=sent_at + within + timedelta(minutes=1), answer_within=within
        )

    unanswered = [row for row in after if row["why"].startswith("sent, no answer")]
    assert [row["referral id"] for row in unanswered] == [referral.id]
    assert not [row for row in before if row["why"].startswith("sent, no answer")]


def test_a_held_message_released_goes_again_and_its_visits_next_message_follows(
    clinic: str, clock: Clock
) -> None:
    with fake_ehr("AE") as ehr:
        settings = settings_for(clinic, ehr_mllp=ehr.address)
        ingest(settings)
        dispatch(settings, clock)
        with session_scope(clinic) as session:
            move(session, visit_id(clinic), "patient asked", settings)
        [held] = [row for row in outbox(clinic) if row.status == EhrOutboxStatus.HELD]
        assert held.id is not None
        with session_scope(clinic) as session:
            ehr_outbox.release_held(session=session, row_id=held.id, by="interface analyst")
        report = dispatch(settings, clock)

    assert report.outcomes["done"] == 2
    assert triggers(ehr) == ["SIU^S12^SIU_S12", "SIU^S13^SIU_S12"]
    # The released message is the one refused, byte for byte (same MSH-10).
    assert ehr.received[0] == ehr.received[1]


def move(session: Session, appointment_id: int, reason: str, settings: Settings) -> None:
    """The one visit move, as a scheduler's reschedule asks for it."""
    now = utcnow()
    moves.move_appointment(
        session=session,
        appointment_id=appointment_id,
        reason=reason,
        policy=moves.NothingFits.KEEP,
        settings=settings,
        now=now,
        actor="test",
        after=now,
    )
