"""Fixtures for the SMS tests: Twilio stand-ins, settings, a clock and a small data builder."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from followup.core.scheduling import BookingWindow
from followup.messaging.sender import OutgoingSms, SendReceipt, SmsSender, TwilioSender
from followup.messaging.sender import build_twilio_client as build_client
from followup.services.dispatch import Dispatcher, DispatchPolicy
from followup.settings import Settings, get_settings
from models import booking
from models.db import session_scope
from models.tables import (
    Appointment,
    Escalation,
    OutboundMessage,
    OutboundStatus,
    Patient,
    Provider,
    Slot,
)
from tests.sms.twilio_mock import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    MockUnavailable,
    ScriptedTwilio,
    running_prism,
    scripted_twilio,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
# Tue Dec 8 2026, 19:00 UTC: 14:00 in New York and 09:00 in Honolulu, so inside 08:00-20:00
# for a known zone and for the strict all-US window of an unknown one.
NOW = datetime(2026, 12, 8, 19, 0, tzinfo=UTC)
PHONE = "+15555550123"
CLINIC_FROM = "+15555550100"


@pytest.fixture(scope="session")
def prism_url() -> Iterator[str]:
    """Prism serving Twilio's OpenAPI spec on a free 127.0.0.1 port, for the whole session."""
    try:
        with running_prism() as url:
            yield url
    except MockUnavailable as missing:
        if os.environ.get("CI") == "true":  # CI must run the contract tests, not skip them
            pytest.fail(str(missing))
        pytest.skip(str(missing))


@pytest.fixture
def twilio_fake() -> Iterator[ScriptedTwilio]:
    with scripted_twilio() as fake:
        yield fake


def twilio_settings(api_base: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_from": CLINIC_FROM,
        "twilio_api_base": api_base,
        "templates_dir": TEMPLATES,
    }
    return get_settings(**{**values, **overrides})


def twilio_sender(api_base: str) -> TwilioSender:
    """The production sender and official client, pointed at a local stand-in."""
    return TwilioSender(build_client(twilio_settings(api_base)), from_number=CLINIC_FROM)


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class RecordingSender:
    """Accepts everything and remembers what it was asked to send."""

    sent: list[OutgoingSms] = field(default_factory=list)

    def send(self, sms: OutgoingSms) -> SendReceipt:
        self.sent.append(sms)
        return SendReceipt(sid="SM" + secrets.token_hex(16))


FAST = DispatchPolicy(rate_per_second=1000.0, retry_base_seconds=0.0)


def dispatcher(
    database_url: str,
    sender: SmsSender,
    clock: Clock,
    policy: DispatchPolicy = FAST,
    workers: int = 2,
) -> Dispatcher:
    return Dispatcher(
        database_url=database_url, sender=sender, policy=policy, now=clock, workers=workers
    )


@dataclass
class World:
    """Builds patients, visits and outbox rows; reads them back."""

    database_url: str
    provider_id: int | None = None

    def patient(
        self,
        *,
        phone: str | None = PHONE,
        timezone: str | None = "America/New_York",
        language: str = "en",
        mrn: str | None = None,
    ) -> int:
        with session_scope(self.database_url) as session:
            count = len(session.exec(select(Patient.id)).all())
            patient = Patient(
                mrn=mrn or f"MRN{count + 1:05d}",
                family_name="Doe",
                given_name="Pat",
                phone_e164=phone,
                timezone=timezone,
                language=language,
            )
            session.add(patient)
            session.flush()
            assert patient.id is not None
            return patient.id

    def visit(self, patient_id: int, start: datetime) -> int:
        with session_scope(self.database_url) as session:
            if self.provider_id is None:
                provider = Provider(
                    npi="1234567890",
                    family_name="Okafor",
                    practice="Riverside",
                    timezone="America/New_York",
                )
                session.add(provider)
                session.flush()
                self.provider_id = provider.id
            assert self.provider_id is not None
            slot = Slot(
                provider_id=self.provider_id,
                start=start,
                end=start + timedelta(minutes=30),
                status="booked",
            )
            session.add(slot)
            session.flush()
            assert slot.id is not None
            appointment = Appointment(
                patient_id=patient_id, provider_id=self.provider_id, slot_id=slot.id, start=start
            )
            session.add(appointment)
            session.flush()
            assert appointment.id is not None
            return appointment.id

    def waitlist(
        self,
        patient_id: int,
        *,
        since: datetime = NOW - timedelta(days=1),
        window_start: datetime = NOW,
    ) -> int:
        """Put the patient on the waitlist of the visits' doctor, for two weeks from
        `window_start`."""
        assert self.provider_id is not None, "make a visit first: it makes the doctor"
        with session_scope(self.database_url) as session:
            entry = booking.add_to_waitlist(
                session=session,
                patient_id=patient_id,
                study_id=None,
                provider_id=self.provider_id,
                window=BookingWindow(window_start, window_start + timedelta(days=14), "routine"),
                reason="no slot",
            )
            entry.created_at = since
            session.add(entry)
            assert entry.id is not None
            return entry.id

    def message(
        self,
        patient_id: int,
        *,
        scheduled_for: datetime = NOW,
        kind: str = "reminder",
        appointment_id: int | None = None,
        key: str | None = None,
        to_phone: str | None = PHONE,
        sent_at: datetime | None = None,
        status: str = OutboundStatus.SCHEDULED,
    ) -> int:
        with session_scope(self.database_url) as session:
            count = len(session.exec(select(OutboundMessage.id)).all())
            message = OutboundMessage(
                idempotency_key=key or f"test:{count + 1}",
                patient_id=patient_id,
                appointment_id=appointment_id,
                kind=kind,
                template=f"sms/en/{kind}.j2",
                body=f"Riverside Clinic: test message {count + 1}. Reply STOP to opt out.",
                encoding="GSM-7",
                segments=1,
                to_phone=to_phone,
                scheduled_for=scheduled_for,
                sent_at=sent_at,
                status=status,
            )
            session.add(message)
            session.flush()
            assert message.id is not None
            return message.id

    def get(self, message_id: int) -> OutboundMessage:
        with session_scope(self.database_url) as session:
            message = session.get(OutboundMessage, message_id)
            assert message is not None
            return message

    def get_patient(self, patient_id: int) -> Patient:
        with session_scope(self.database_url) as session:
            patient = session.get(Patient, patient_id)
            assert patient is not None
            return patient

    def get_appointment(self, appointment_id: int) -> Appointment:
        with session_scope(self.database_url) as session:
            appointment = session.get(Appointment, appointment_id)
            assert appointment is not None
            return appointment

    def messages(self) -> list[OutboundMessage]:
        with session_scope(self.database_url) as session:
            return list(session.exec(select(OutboundMessage).order_by(col(OutboundMessage.id))))

    def escalations(self) -> list[Escalation]:
        with session_scope(self.database_url) as session:
            return list(session.exec(select(Escalation).order_by(col(Escalation.id))))


@pytest.fixture
def world(database_url: str) -> World:
    return World(database_url)


@pytest.fixture
def clock() -> Clock:
    return Clock()
