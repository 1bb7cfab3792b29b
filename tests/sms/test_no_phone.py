"""A booked visit of a patient with no number to text becomes a call for a scheduler:
no outbox rows with an empty recipient, which could only fail at send time unseen."""

from __future__ import annotations

from datetime import timedelta

from followup.services import visits
from followup.settings import get_settings
from models.db import session_scope
from tests.sms.conftest import NOW, World


def test_a_visit_without_a_phone_is_a_call_task_not_texts(world: World) -> None:
    patient = world.patient(phone=None)
    appointment = world.visit(patient, NOW + timedelta(days=9))
    settings = get_settings(database_url=world.database_url)

    with session_scope(world.database_url) as session:
        texts = visits.plan_visit_texts(
            session=session, appointment_id=appointment, settings=settings, now=NOW
        )

    assert texts == visits.Texts()
    assert world.messages() == []
    [task] = world.escalations()
    assert (task.kind, task.status, task.target) == ("no_phone", "open", "scheduler-queue")
    assert f"appointment {appointment} is booked" in task.reason
    assert "call the patient" in task.reason


def test_a_visit_with_a_phone_is_texted_and_no_task_opens(world: World) -> None:
    patient = world.patient()
    appointment = world.visit(patient, NOW + timedelta(days=9))
    settings = get_settings(database_url=world.database_url)

    with session_scope(world.database_url) as session:
        texts = visits.plan_visit_texts(
            session=session, appointment_id=appointment, settings=settings, now=NOW
        )

    assert texts.notice is not None and texts.reminders
    assert world.escalations() == []
