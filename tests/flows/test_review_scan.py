"""A scan that needs a person waits in its review run's form, suspended, and carries on when
the form is answered: it books the chosen slot, audited as the person."""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import select

from followup.services import review
from followup.settings import Settings
from models import worklist
from models.db import session_scope
from models.tables import Appointment, AuditEvent, EhrOutboxMessage, Escalation, OutboundMessage
from tests.flows.conftest import UNKNOWN_PROVIDER, run_sample
from tests.flows.review_runs import create_review_run, execute, form_of, state_of

pytestmark = pytest.mark.prefect


def test_a_review_run_suspends_with_its_form_and_books_the_chosen_slot_when_resumed(
    settings: Settings,
) -> None:
    from prefect import get_client

    summary = run_sample(settings, "spine_inconclusive.hl7", replacing=UNKNOWN_PROVIDER)
    accession = summary["accession"]
    assert review.tasks_for_a_person(summary)
    assert summary["appointment"] is None

    async def scenario() -> str:
        flow_run = await create_review_run(accession)
        assert await execute(flow_run.id) is None
        state = await state_of(flow_run.id)
        assert (state.type.value, state.name) == ("PAUSED", "Suspended")
        with session_scope(settings.database_url) as session:
            # Unanswered (or timed out), the task stays on the worklist, pointing at the form.
            [waiting] = worklist.open_escalations(session=session, kinds=review.REVIEW_KINDS)
        assert (
            waiting["what to do"]
            == f"answer the form of run review-{accession}, or call the patient"
        )

        schema, description = await form_of(flow_run.id)
        assert f"Scan {accession} (" in description
        assert "Dr. Okafor (NPI 1000000001)" in description
        assert " EST · " in description or " EDT · " in description
        assert "1999999999 not in the directory" in description
        fields = schema["properties"]
        assert fields["action"]["enum"] == list(review.ACTIONS)
        chosen = fields["slot"]["enum"][1]
        assert chosen.endswith(f"slot {review.slot_id_of(chosen)}")
        assert set(schema["required"]) >= {"by"}

        async with get_client() as client:
            await client.resume_flow_run(
                flow_run.id,
                run_input={
                    "action": review.BOOK,
                    "slot": chosen,
                    "urgency": "urgent",
                    "referrals": ["orthopedics"],
                    "by": "sam.lee",
                    "note": "",
                },
            )
        final = await execute(flow_run.id)
        assert final is not None and final.is_completed(), final
        said = await final.result()  # type: ignore[misc]
        assert said.startswith(f"{accession}: {review.BOOK} by sam.lee (appointment ")
        return str(chosen)

    chosen = asyncio.run(scenario())

    with session_scope(settings.database_url) as session:
        tasks = session.exec(select(Escalation)).all()
        assert [(t.kind, t.status, t.acknowledged_by) for t in tasks] == [
            ("unbookable", "acknowledged", "sam.lee")
        ]
        active = session.exec(select(Appointment).where(Appointment.status == "booked")).all()
        [visit] = active
        assert (visit.slot_id, visit.tier) == (review.slot_id_of(chosen), "urgent")
        [answered] = session.exec(
            select(AuditEvent).where(AuditEvent.action == "review.answered")
        ).all()
        assert answered.actor == "sam.lee"
        assert answered.detail["decision_changed"] is True
        notices = session.exec(
            select(OutboundMessage.kind).where(OutboundMessage.appointment_id == visit.id)
        ).all()
        assert notices[0] == "confirmation"


def test_a_review_that_picks_another_slot_moves_the_booked_visit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan booked with the on-call provider (its own was unknown) and held for a person:
    picking another offered slot moves the visit through the one move path, so the old visit
    is cancelled and linked, the patient is told, and the EHR hears of one visit."""
    monkeypatch.setenv("FOLLOWUP_ON_CALL_PROVIDER_NPI", "1000000001")
    summary = run_sample(
        settings,
        "spine_neurology_root_compression.hl7",
        replacing=(b"1000000001^Okafor^Adaeze", b"1999999999^Vance^Iris"),
    )
    first = summary["appointment"]["id"]
    accession = summary["accession"]
    with session_scope(settings.database_url) as session:
        case = review.open_review(session=session, accession=accession, settings=settings)
        assert case is not None and case.booked is not None
        booked_slot = session.get_one(Appointment, first).slot_id
        other = next(slot for slot in case.offered if slot.slot_id != booked_slot)
        outcome = review.apply_review(
            session=session,
            accession=accession,
            answer=review.ReviewAnswer(
                action=review.BOOK,
                by="sam.lee",
                urgency=case.urgency,
                referrals=case.referrals,
                slot=other.label(settings.site_zone),
            ),
            settings=settings,
        )
    with session_scope(settings.database_url) as session:
        old = session.get_one(Appointment, first)
        new = session.get_one(Appointment, outcome.appointment_id)
        outbox = session.exec(select(EhrOutboxMessage)).all()
    assert (old.status, old.replaced_by_id) == ("cancelled", new.id)
    assert (new.slot_id, new.status) == (other.slot_id, "booked")
    # Unsent, the booking and the move fold into one S12 with the new time.
    assert [
        (row.subject, row.trigger, row.appointment_id) for row in outbox if row.subject == "visit"
    ] == [("visit", "S12", new.id)]
