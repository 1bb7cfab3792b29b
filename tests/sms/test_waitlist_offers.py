"""Waitlist offers by SMS: a freed slot's offer and its text written together, in the waiting
patient's language and zone, withdrawn when the offer lapses; and the outbox state query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import col, select

from followup.services import visits
from followup.settings import Settings, get_settings
from models import booking
from models import messaging_queries as mq
from models.db import session_scope
from models.tables import OutboundMessage, OutboundStatus, WaitlistEntry, WaitlistOffer
from tests.booking.conftest import OFFER_TIMING
from tests.sms.conftest import NOW, TEMPLATES, Clock, World, dispatcher, twilio_sender

OTHER_PHONE = "+15555550177"
VISIT = NOW + timedelta(days=2)  # Thu Dec 10, 14:00 New York


@pytest.fixture
def settings() -> Settings:
    return get_settings(templates_dir=TEMPLATES)


def cancel(
    world: World, visit: int, settings: Settings, *, now: datetime = NOW
) -> visits.Changed[booking.CancelResult]:
    with session_scope(world.database_url) as session:
        return visits.cancel_visit(
            session=session,
            appointment_id=visit,
            reason="patient called",
            settings=settings,
            now=now,
            actor="test",
        )


def offers(world: World) -> list[WaitlistOffer]:
    with session_scope(world.database_url) as session:
        return list(session.exec(select(WaitlistOffer).order_by(col(WaitlistOffer.id))))


def test_a_freed_slot_is_offered_by_text_in_the_waiting_patients_language_and_zone(
    world: World, settings: Settings
) -> None:
    told = world.patient()
    visit = world.visit(told, VISIT)
    world.message(told, kind="confirmation", appointment_id=visit, status=OutboundStatus.SENT)
    waiting = world.patient(phone=OTHER_PHONE, timezone="America/Chicago", language="es")
    entry = world.waitlist(waiting)

    cancelled = cancel(world, visit, settings)

    offer = cancelled.result.offer
    assert offer is not None and offer.entry_id == entry
    [text] = [world.get(message_id) for message_id in cancelled.texts.offers]
    assert (text.idempotency_key, text.kind, text.language, text.appointment_id) == (
        f"offer:{offer.id}:waitlist_offer",
        "waitlist_offer",
        "es",
        None,
    )
    assert (text.patient_id, text.to_phone, text.scheduled_for) == (waiting, OTHER_PHONE, NOW)
    # The slot and the deadline (four hours on) on the clinic's clock, its zone named for a
    # patient in Chicago; nothing about why.
    assert text.body == (
        "Riverside Health Clinic: El Dr. Okafor puede atenderle el jueves 10 de diciembre a las "
        "14:00, hora de Nueva York. Para reservar, responda C antes del martes 8 de diciembre a "
        "las 18:00, hora de Nueva York. Preguntas: (555) 555-0100. "
        "Responda STOP para darse de baja."
    )
    assert cancelled.texts.notice is not None
    notice = world.get(cancelled.texts.notice)
    assert (notice.kind, notice.appointment_id, notice.status) == (
        "cancellation",
        visit,
        "scheduled",
    )


def test_the_offer_and_its_text_commit_together_or_not_at_all(
    world: World, settings: Settings
) -> None:
    visit = world.visit(world.patient(), VISIT)
    world.waitlist(world.patient(phone=OTHER_PHONE))

    with pytest.raises(RuntimeError), session_scope(world.database_url) as session:
        visits.cancel_visit(
            session=session,
            appointment_id=visit,
            reason="patient called",
            settings=settings,
            now=NOW,
            actor="test",
        )
        raise RuntimeError("the caller fails after the cancel")

    assert offers(world) == [] and world.messages() == []
    assert world.get_appointment(visit).status == "booked"


def test_an_offer_made_at_night_is_texted_at_eight_and_runs_four_hours_from_then(
    world: World, settings: Settings
) -> None:
    visit = world.visit(world.patient(), VISIT)
    world.waitlist(world.patient(phone=OTHER_PHONE))
    night = datetime(2026, 12, 9, 3, tzinfo=UTC)  # 22:00 in New York

    cancelled = cancel(world, visit, settings, now=night)

    eight = datetime(2026, 12, 9, 13, tzinfo=UTC)
    assert cancelled.result.offer is not None
    assert cancelled.result.offer.expires_at == eight + timedelta(hours=4)
    [text] = [world.get(message_id) for message_id in cancelled.texts.offers]
    assert text.scheduled_for == eight
    assert "Wed Dec 9 at 12:00 PM" in text.body


def test_expiry_withdraws_an_unsent_offer_text_and_texts_the_next_patient(
    world: World, settings: Settings
) -> None:
    visit = world.visit(world.patient(), VISIT)
    first = world.waitlist(world.patient(phone=OTHER_PHONE), since=NOW - timedelta(days=3))
    second_patient = world.patient(phone="+15555550188")
    second = world.waitlist(second_patient)
    cancelled = cancel(world, visit, settings)
    [unsent] = cancelled.texts.offers  # held back, say by the daily cap
    assert cancelled.result.offer is not None
    deadline = cancelled.result.offer.expires_at

    with session_scope(world.database_url) as session:
        expired = visits.expire_waitlist_offers(
            session=session, settings=settings, now=deadline, actor="test"
        )

    [next_offer] = expired.result
    assert next_offer.entry_id == second
    assert world.get(unsent).status == "cancelled"
    [text] = [world.get(message_id) for message_id in expired.texts.offers]
    assert (text.idempotency_key, text.patient_id) == (
        f"offer:{next_offer.id}:waitlist_offer",
        second_patient,
    )
    assert (text.scheduled_for, text.status) == (deadline, "scheduled")
    with session_scope(world.database_url) as session:
        assert session.get_one(WaitlistEntry, first).status == "waiting"
    assert [o.status for o in offers(world)] == ["expired", "pending"]


def test_an_offer_made_without_its_text_gets_it_from_the_next_expiry_run(
    world: World, settings: Settings
) -> None:
    visit = world.visit(world.patient(), VISIT)
    world.waitlist(world.patient(phone=OTHER_PHONE))
    with session_scope(world.database_url) as session:
        offer = booking.cancel_appointment(
            session=session,
            timing=OFFER_TIMING,
            appointment_id=visit,
            reason="report cancelled",
            now=NOW,
        ).offer
    assert offer is not None and world.messages() == []
    a_minute_later = NOW + timedelta(minutes=1)

    runs = []
    for _ in range(2):
        with session_scope(world.database_url) as session:
            runs.append(
                visits.expire_waitlist_offers(
                    session=session, settings=settings, now=a_minute_later, actor="test"
                )
            )

    [text] = [world.get(message_id) for message_id in runs[0].texts.offers]
    assert (text.idempotency_key, text.scheduled_for) == (
        f"offer:{offer.id}:waitlist_offer",
        a_minute_later,
    )
    assert runs[1].texts.offers == ()


def test_the_offer_text_passes_twilios_contract(
    world: World, settings: Settings, clock: Clock, prism_url: str
) -> None:
    visit = world.visit(world.patient(), VISIT)
    world.waitlist(world.patient(phone=OTHER_PHONE))
    [offer_text] = cancel(world, visit, settings).texts.offers

    dispatcher(world.database_url, twilio_sender(prism_url), clock).run()

    sent = world.get(offer_text)
    assert sent.status == "sent"  # Twilio accepted it; its callbacks move it on
    assert sent.twilio_sid and sent.twilio_sid[:2] in ("SM", "MM")


def test_message_states_filter_by_state_and_appointment_in_due_order(world: World) -> None:
    patient = world.patient()
    visit = world.visit(patient, VISIT)
    later = world.message(patient, appointment_id=visit, scheduled_for=NOW + timedelta(hours=1))
    sent = world.message(patient, appointment_id=visit, scheduled_for=NOW - timedelta(hours=1))
    unrelated = world.message(patient, kind="help", scheduled_for=NOW)
    with session_scope(world.database_url) as session:
        row = session.get_one(OutboundMessage, sent)
        row.status, row.twilio_sid, row.attempts, row.error_code = (
            "sent",
            "SM" + "c" * 32,
            2,
            "30003",
        )
        session.add(row)

    with session_scope(world.database_url) as session:
        every = mq.message_states(session=session)
        of_visit = mq.message_states(session=session, appointment_id=visit)
        only_sent = mq.message_states(session=session, statuses={"sent"})

    assert [m.id for m in every] == [sent, unrelated, later]
    assert [m.id for m in of_visit] == [sent, later]
    assert only_sent == [
        mq.MessageState(
            sent, visit, "reminder", NOW - timedelta(hours=1), "sent", 2, "30003", "SM" + "c" * 32
        )
    ]
