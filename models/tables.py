"""The application's tables (first cut of DESIGN.md "Data").

Families follow the `XBase` (fields a caller supplies) / `X` (the table) pattern. Times are
aware UTC (`UTCDateTime`). Nothing is deleted: rows are superseded or change status, and
every foreign input is kept raw in `InboxMessage`.
"""

from __future__ import annotations

from datetime import date, datetime, time
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from followup.core.referrals import ReferralStatus
from followup.core.scheduling import SlotStatus
from followup.ris.scan import (
    ACCESSION_LENGTH,
    MRN_LENGTH,
    NAME_LENGTH,
    PROCEDURE_CODE_LENGTH,
    PROCEDURE_TEXT_LENGTH,
    PROVIDER_KEY_LENGTH,
)
from models.types import UTCDateTime, utcnow


def _utc_column(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _created_at() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class InboxStatus(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    PROCESSED = "processed"
    HELD = "held"  # preliminary report, waits for the final one
    DUPLICATE = "duplicate"
    ERROR = "error"  # refused at intake with AE: the sender was told and must resend
    REJECTED = "rejected"  # wrong type / version / processing id (AR)
    # Accepted (AA) and then failed: taken again by sweep-inbox after `next_attempt_at`
    # (followup/core/inbox_lifecycle.py), or on the worklist until a person re-runs it.
    RETRY = "retry"
    NEEDS_ACTION = "needs_action"


class InboxMessageBase(SQLModel):
    source: str = Field(max_length=16)  # mllp | http | cli
    peer: str | None = Field(default=None, max_length=255)
    content_type: str = Field(max_length=16)  # hl7v2 | fhir | unknown
    sender: str | None = Field(default=None, max_length=255)
    control_id: str | None = Field(default=None, max_length=199, index=True)
    message_type: str | None = Field(default=None, max_length=32)
    accession: str | None = Field(default=None, max_length=ACCESSION_LENGTH, index=True)


class InboxMessage(InboxMessageBase, table=True):
    __tablename__ = "inbox_message"
    # The HL7 idempotency key (MSH-10 per sender) is looked up on every message received,
    # before its ACK; it also serves the sender-only prefix, so sender has no index of its own.
    __table_args__ = (Index("ix_inbox_message_sender_control_id", "sender", "control_id"),)

    id: int | None = Field(default=None, primary_key=True)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    received_at: datetime = _created_at()
    status: str = Field(default=InboxStatus.RECEIVED, max_length=16, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text))
    error_location: str | None = Field(default=None, max_length=32)
    duplicate_of_id: int | None = Field(default=None, foreign_key="inbox_message.id")
    content_hash: str | None = Field(default=None, max_length=64, index=True)
    summary: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    processed_at: datetime | None = _utc_column()
    # When a flow run last took the row (status processing). A claim older than the lease
    # belongs to a run that died: the sweep gives the row back. Kept after that, so the
    # re-submission's event id can be derived from the claim it replaces.
    claimed_at: datetime | None = _utc_column()
    # Failed processing attempts so far, and when sweep-inbox takes a `retry` row again.
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_attempt_at: datetime | None = _utc_column()
    # SHA-256 of the HL7 message without MSH-7: a resend under the same MSH-10 has the same
    # digest, a reused MSH-10 (a sender whose counter reset) has another.
    content_digest: str | None = Field(default=None, max_length=64)


class PatientBase(SQLModel):
    mrn: str = Field(max_length=MRN_LENGTH, unique=True)
    family_name: str = Field(default="", max_length=NAME_LENGTH)
    given_name: str = Field(default="", max_length=NAME_LENGTH)
    birth_date: date | None = None
    phone_e164: str | None = Field(default=None, max_length=20)
    language: str = Field(default="en", max_length=8)
    timezone: str | None = Field(default=None, max_length=64)
    sms_opt_out: bool = False
    # Scheduling preferences when the patient stated them: "morning" | "afternoon", and
    # weekdays (0 = Monday). None means no preference.
    preferred_day_part: str | None = Field(default=None, max_length=16)
    preferred_weekdays: list[int] | None = Field(default=None, sa_column=Column(JSON))


class Patient(PatientBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()


class ProviderBase(SQLModel):
    npi: str = Field(max_length=64, unique=True)
    family_name: str = Field(max_length=128)
    given_name: str = Field(default="", max_length=128)
    practice: str = Field(max_length=128, index=True)
    timezone: str = Field(max_length=64)
    covering_provider_id: int | None = Field(default=None, foreign_key="provider.id")
    active: bool = True
    slot_minutes: int = Field(default=30, sa_column_kwargs={"server_default": "30"})

    @property
    def display_name(self) -> str:
        return f"Dr. {self.family_name}"


class Provider(ProviderBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class WorkingHours(SQLModel, table=True):
    """One weekly session of a provider's clinic hours; replaced hours are superseded."""

    __tablename__ = "working_hours"

    id: int | None = Field(default=None, primary_key=True)
    provider_id: int = Field(foreign_key="provider.id", index=True)
    weekday: int  # 0 = Monday
    start: time
    end: time
    created_at: datetime = _created_at()
    superseded_at: datetime | None = _utc_column()


class BlockedPeriod(SQLModel, table=True):
    """Time a provider cannot see patients: vacation, or busy in another system's calendar."""

    __tablename__ = "blocked_period"

    id: int | None = Field(default=None, primary_key=True)
    provider_id: int = Field(foreign_key="provider.id", index=True)
    start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    end: datetime = Field(sa_type=UTCDateTime, nullable=False)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    source: str = Field(default="manual", max_length=64)  # manual | csv | fhir:Slot/<id>
    created_at: datetime = _created_at()


class SiteClosure(SQLModel, table=True):
    """A day the whole site is closed on top of the public holidays (snow day, training day)."""

    __tablename__ = "site_closure"

    id: int | None = Field(default=None, primary_key=True)
    day: date = Field(unique=True)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: datetime = _created_at()


class SlotSource(StrEnum):
    CALENDAR = "calendar"  # laid from the provider's weekly hours
    IMPORT = "import"  # an imported FHIR Slot / CSV row


class SlotBase(SQLModel):
    provider_id: int = Field(foreign_key="provider.id", index=True)
    start: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    end: datetime = Field(sa_type=UTCDateTime, nullable=False)
    status: str = Field(default=SlotStatus.FREE, max_length=16, index=True)
    source: str = Field(
        default=SlotSource.CALENDAR, max_length=16, sa_column_kwargs={"server_default": "calendar"}
    )

    @property
    def generated(self) -> bool:
        return self.source == SlotSource.CALENDAR


class Slot(SlotBase, table=True):
    __table_args__ = (
        # One open slot per provider and start; blocked slots stay as history beside it.
        Index(
            "uq_slot_provider_start_open",
            "provider_id",
            "start",
            unique=True,
            sqlite_where=text("status != 'blocked'"),
            postgresql_where=text("status != 'blocked'"),
        ),
        # The booking query: one provider's free slots in a time range.
        Index("ix_slot_provider_status_start", "provider_id", "status", "start"),
    )

    id: int | None = Field(default=None, primary_key=True)


class ImagingStudyBase(SQLModel):
    accession: str = Field(max_length=ACCESSION_LENGTH, unique=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    ordering_provider_id: int | None = Field(default=None, foreign_key="provider.id")
    ordering_provider_key: str | None = Field(default=None, max_length=PROVIDER_KEY_LENGTH)
    procedure_code: str = Field(default="", max_length=PROCEDURE_CODE_LENGTH)
    procedure_text: str = Field(default="", max_length=PROCEDURE_TEXT_LENGTH)
    performed_at: datetime | None = _utc_column()
    final_at: datetime | None = _utc_column()
    report_status: str = Field(max_length=1)
    report_text: str = Field(sa_column=Column(Text, nullable=False))


class ImagingStudy(ImagingStudyBase, table=True):
    __tablename__ = "imaging_study"

    id: int | None = Field(default=None, primary_key=True)
    inbox_id: int = Field(foreign_key="inbox_message.id")
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()


class Urgency(StrEnum):
    EMERGENT = "emergent"
    URGENT = "urgent"
    ROUTINE = "routine"


class DecisionBase(SQLModel):
    study_id: int = Field(foreign_key="imaging_study.id", index=True)
    inbox_id: int = Field(foreign_key="inbox_message.id")
    urgency: str = Field(max_length=16)
    critical: bool
    needs_review: bool
    referrals: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    additional_testing: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    rules_version: str = Field(max_length=64)
    explanation: str = Field(default="", sa_column=Column(Text, nullable=False))


class Decision(DecisionBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _created_at()
    superseded_at: datetime | None = _utc_column()


class FindingBase(SQLModel):
    study_id: int = Field(foreign_key="imaging_study.id", index=True)
    decision_id: int = Field(foreign_key="decision.id", index=True)
    label: str = Field(max_length=64)
    text: str = Field(sa_column=Column(Text, nullable=False))
    negated: bool = False
    uncertain: bool = False
    section: str = Field(default="", max_length=32)
    code: str | None = Field(default=None, max_length=64)


class Finding(FindingBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class AppointmentKind(StrEnum):
    FOLLOW_UP = "follow_up"
    SPECIALIST = "specialist"


class AppointmentStatus(StrEnum):
    BOOKED = "booked"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


# Statuses that hold a slot; the partial unique index below lets only one of them per slot.
ACTIVE_APPOINTMENT_STATUSES = (AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED)


class AppointmentBase(SQLModel):
    patient_id: int = Field(foreign_key="patient.id", index=True)
    provider_id: int = Field(foreign_key="provider.id", index=True)
    slot_id: int = Field(foreign_key="slot.id")
    study_id: int | None = Field(default=None, foreign_key="imaging_study.id", index=True)
    kind: str = Field(default=AppointmentKind.FOLLOW_UP, max_length=16)
    start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    status: str = Field(default=AppointmentStatus.BOOKED, max_length=16)
    # The window the appointment had to start in; a reschedule looks for a slot in it.
    tier: str | None = Field(default=None, max_length=16)
    window_start: datetime | None = _utc_column()
    window_end: datetime | None = _utc_column()


class Appointment(AppointmentBase, table=True):
    __table_args__ = (
        # The database, not the application, guarantees no double booking of a slot.
        Index(
            "uq_appointment_active_slot",
            "slot_id",
            unique=True,
            sqlite_where=text("status IN ('booked', 'confirmed')"),
            postgresql_where=text("status IN ('booked', 'confirmed')"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    booked_at: datetime = _created_at()
    cancelled_at: datetime | None = _utc_column()
    cancel_reason: str | None = Field(default=None, sa_column=Column(Text))
    replaced_by_id: int | None = Field(default=None, foreign_key="appointment.id")


class ReferralBase(SQLModel):
    study_id: int = Field(foreign_key="imaging_study.id", index=True)
    decision_id: int = Field(foreign_key="decision.id")
    specialty: str = Field(max_length=32)
    status: str = Field(default=ReferralStatus.INITIATED, max_length=16)
    uncertain: bool = False
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class Referral(ReferralBase, table=True):
    __table_args__ = (
        Index(
            "uq_referral_open_specialty",
            "study_id",
            "specialty",
            unique=True,
            sqlite_where=text("status != 'cancelled'"),
            postgresql_where=text("status != 'cancelled'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _created_at()
    status_changed_at: datetime = _created_at()
    scheduled_for: datetime | None = _utc_column()


class ReferralStatusChange(SQLModel, table=True):
    """One move of a referral through its states, with when, who and why."""

    __tablename__ = "referral_status_change"

    id: int | None = Field(default=None, primary_key=True)
    referral_id: int = Field(foreign_key="referral.id", index=True)
    from_status: str = Field(max_length=16)
    to_status: str = Field(max_length=16)
    at: datetime = _created_at()
    actor: str = Field(max_length=64)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class WaitlistStatus(StrEnum):
    WAITING = "waiting"
    OFFERED = "offered"  # a freed slot is on offer to this patient
    BOOKED = "booked"
    LAPSED = "lapsed"  # the window closed before a slot came free
    CANCELLED = "cancelled"


OPEN_WAITLIST_STATUSES = (WaitlistStatus.WAITING, WaitlistStatus.OFFERED)


class WaitlistEntry(SQLModel, table=True):
    """A patient the fallback chain could not book, waiting for a slot to come free."""

    __tablename__ = "waitlist_entry"
    __table_args__ = (
        Index(
            "uq_waitlist_open_study",
            "study_id",
            unique=True,
            sqlite_where=text("status IN ('waiting', 'offered')"),
            postgresql_where=text("status IN ('waiting', 'offered')"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    study_id: int | None = Field(default=None, foreign_key="imaging_study.id")
    provider_id: int = Field(foreign_key="provider.id")  # the ordering provider
    practice: str = Field(max_length=128)
    kind: str = Field(default=AppointmentKind.FOLLOW_UP, max_length=16)
    urgency: str = Field(max_length=16)
    window_start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    window_end: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    status: str = Field(default=WaitlistStatus.WAITING, max_length=16, index=True)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: datetime = _created_at()
    resolved_at: datetime | None = _utc_column()
    appointment_id: int | None = Field(default=None, foreign_key="appointment.id")


class OfferStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"


class WaitlistOffer(SQLModel, table=True):
    """A freed slot held for one waitlisted patient until they answer or the offer lapses."""

    __tablename__ = "waitlist_offer"
    __table_args__ = (
        # A slot is on offer to one patient at a time, and a patient holds one offer at a time.
        Index(
            "uq_waitlist_offer_pending_slot",
            "slot_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "uq_waitlist_offer_pending_entry",
            "entry_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    entry_id: int = Field(foreign_key="waitlist_entry.id", index=True)
    slot_id: int = Field(foreign_key="slot.id", index=True)
    status: str = Field(default=OfferStatus.PENDING, max_length=16, index=True)
    offered_at: datetime = _created_at()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    responded_at: datetime | None = _utc_column()
    appointment_id: int | None = Field(default=None, foreign_key="appointment.id")


class HoldStatus(StrEnum):
    HELD = "held"  # on offer to the patient who asked to reschedule
    TAKEN = "taken"  # the patient chose it: the visit moved there
    RELEASED = "released"  # the patient chose another, or the visit changed
    EXPIRED = "expired"  # nobody answered in time


class RescheduleHold(SQLModel, table=True):
    """A free slot on another day held for a patient who replied R, offered as a numbered
    choice ("reply 1, 2 or 3") until they answer or the hold lapses."""

    __tablename__ = "reschedule_hold"
    __table_args__ = (
        # A slot is held for one patient at a time.
        Index(
            "uq_reschedule_hold_held_slot",
            "slot_id",
            unique=True,
            sqlite_where=text("status = 'held'"),
            postgresql_where=text("status = 'held'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    appointment_id: int = Field(foreign_key="appointment.id", index=True)  # the visit to move
    slot_id: int = Field(foreign_key="slot.id", index=True)
    choice: int  # the number the patient replies with
    status: str = Field(default=HoldStatus.HELD, max_length=16, index=True)
    inbound_sid: str = Field(max_length=64)  # the patient's R
    held_at: datetime = _created_at()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    resolved_at: datetime | None = _utc_column()


class OutboundStatus(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"


class OutboundMessageBase(SQLModel):
    idempotency_key: str = Field(max_length=128, unique=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    appointment_id: int | None = Field(default=None, foreign_key="appointment.id", index=True)
    kind: str = Field(max_length=32)
    language: str = Field(default="en", max_length=8)
    template: str = Field(max_length=128)
    body: str = Field(sa_column=Column(Text, nullable=False))
    encoding: str = Field(max_length=8)
    segments: int
    to_phone: str | None = Field(default=None, max_length=20)
    scheduled_for: datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class OutboundMessage(OutboundMessageBase, table=True):
    __tablename__ = "outbound_message"
    # The dispatcher's claim query: scheduled rows in send-time order.
    __table_args__ = (Index("ix_outbound_message_due", "status", "scheduled_for"),)

    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(default=OutboundStatus.SCHEDULED, max_length=16, index=True)
    twilio_sid: str | None = Field(default=None, max_length=64, unique=True)
    error_code: str | None = Field(default=None, max_length=16)
    attempts: int = 0
    created_at: datetime = _created_at()
    sent_at: datetime | None = _utc_column()
    # When a dispatcher took the row (status scheduled → sending); a claim that never got a
    # Twilio sid is released after a timeout, so a crashed worker does not strand it.
    claimed_at: datetime | None = _utc_column()


class EscalationStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    # Closed by the engine: the report text it was about was replaced by a correction.
    SUPERSEDED = "superseded"


class EscalationBase(SQLModel):
    study_id: int | None = Field(default=None, foreign_key="imaging_study.id", index=True)
    kind: str = Field(max_length=32)  # critical_finding | unbookable | needs_review | no_provider
    reason: str = Field(sa_column=Column(Text, nullable=False))
    target: str = Field(
        default="", max_length=PROVIDER_KEY_LENGTH
    )  # who must act (provider key or queue)


class Escalation(EscalationBase, table=True):
    __table_args__ = (
        # One open escalation per study and kind; once acknowledged, new news opens a new one.
        Index(
            "uq_escalation_open_study_kind",
            "study_id",
            "kind",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(default=EscalationStatus.OPEN, max_length=16, index=True)
    created_at: datetime = _created_at()
    acknowledged_at: datetime | None = _utc_column()
    acknowledged_by: str | None = Field(default=None, max_length=128)
    # Re-notices of an unacknowledged one (renotify-escalations): the last one sent and how
    # many; None and 0 until the first, which falls due N minutes after `created_at`.
    notified_at: datetime | None = _utc_column()
    notify_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _created_at()
    actor: str = Field(max_length=64)  # "engine", "flow:scan-completed", a user name
    action: str = Field(max_length=64)
    entity: str = Field(max_length=32)
    entity_id: int | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class TwilioEventKind(StrEnum):
    STATUS = "status"  # a status callback for one of our messages
    INBOUND = "inbound"  # a patient's text to us


class TwilioEvent(SQLModel, table=True):
    """Every signed Twilio webhook, kept raw before it is acted on.

    (message_sid, message_status) is unique: Twilio repeats callbacks, and a repeat must
    change nothing. An inbound text has the status "received".
    """

    __tablename__ = "twilio_event"
    __table_args__ = (
        UniqueConstraint("message_sid", "message_status", name="uq_twilio_event_sid_status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)
    message_sid: str = Field(max_length=64)
    message_status: str = Field(max_length=16)
    error_code: str | None = Field(default=None, max_length=16)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    outbound_id: int | None = Field(default=None, foreign_key="outbound_message.id", index=True)
    patient_id: int | None = Field(default=None, foreign_key="patient.id", index=True)
    intents: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The task an inbound text was shown with (the most pressing one it opened or joined), so
    # every text reaches a person however many arrive while the task is open.
    escalation_id: int | None = Field(default=None, foreign_key="escalation.id", index=True)
    received_at: datetime = _created_at()


class SmsSuppression(SQLModel, table=True):
    """The engine's own opt-out list, per phone number (a carrier blocks numbers, not people).

    Kept beside `Patient.sms_opt_out` so a number that opts out before it is linked to a
    patient, or is later given by another patient, stays suppressed.
    """

    __tablename__ = "sms_suppression"

    id: int | None = Field(default=None, primary_key=True)
    phone_e164: str = Field(max_length=20, unique=True)
    active: bool = True
    source: str = Field(max_length=32)  # keyword | free_text | twilio_21610 | manual
    created_at: datetime = _created_at()
    changed_at: datetime = _created_at()


class EhrOutboxStatus(StrEnum):
    PENDING = "pending"  # waiting for its turn (first send, or a retry after next_attempt_at)
    SENDING = "sending"  # claimed by a dispatcher
    DONE = "done"  # the receiver accepted it (AA, or a 2xx from a FHIR server)
    HELD = "held"  # refused (AE) or out of retries: a person must act (the worklist says what)
    DRY_RUN = "dry_run"  # built and stored; no destination configured, so not sent
    SUPERSEDED = "superseded"  # a later change made it moot before it was ever sent


# Rows whose subject (visit or referral) may send its next message.
EHR_OUTBOX_FINISHED = (
    EhrOutboxStatus.DONE,
    EhrOutboxStatus.DRY_RUN,
    EhrOutboxStatus.SUPERSEDED,
)


class EhrOutboxMessage(SQLModel, table=True):
    """One message to the EHR's schedule (SIU) or a specialty's referral inbox (REF), written
    in the transaction of the change it reports and sent in order per visit or referral.

    The message is built at its first send and kept (`payload`, `control_id`): a resend
    after a lost ACK is byte for byte the same message under the same MSH-10.
    """

    __tablename__ = "ehr_outbox_message"
    __table_args__ = (
        Index("ix_ehr_outbox_message_due", "status", "next_attempt_at"),
        Index("ix_ehr_outbox_message_subject", "subject", "subject_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subject: str = Field(max_length=16)  # visit | referral
    # The visit's first appointment (stable through reschedules), or the referral's id.
    subject_id: int
    appointment_id: int | None = Field(default=None, foreign_key="appointment.id")
    referral_id: int | None = Field(default=None, foreign_key="referral.id")
    study_id: int | None = Field(default=None, foreign_key="imaging_study.id")
    trigger: str = Field(max_length=8)  # S12 S13 S14 S15 | I12 I14
    destination: str = Field(max_length=64)  # ehr | referrals:<specialty>
    status: str = Field(default=EhrOutboxStatus.PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _created_at()
    protocol: str | None = Field(default=None, max_length=8)  # hl7v2 | fhir, set when built
    control_id: str | None = Field(default=None, max_length=64)
    payload: str | None = Field(default=None, sa_column=Column(Text))
    ack_code: str | None = Field(default=None, max_length=8)
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _created_at()
    claimed_at: datetime | None = _utc_column()
    finished_at: datetime | None = _utc_column()
