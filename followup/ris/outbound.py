"""HL7 v2.5.1 messages the engine sends: SIU (its bookings, to the EHR's schedule) and REF
(its referrals, to each specialty's inbox). Pure text building, no I/O.

Choices, and why:

* The structure is built from python-hl7's containers (Message, Segment, Field, Repetition,
  Component), so `str(message)` is python-hl7's own serialisation and the tests parse every
  message back with `hl7.parse`. Values are escaped here rather than with python-hl7's
  `escape`: that one writes a line feed as the malformed hex escape ``\\X a\\`` and every
  non-ASCII character as a one-byte hex escape whose meaning depends on the receiver's
  charset; this module sends UTF-8 (MSH-18) and escapes only the five delimiters, with line
  breaks as ``\\.br\\`` in formatted text and a space elsewhere.
* Minimal PHI: PID carries the MRN, name and birth date, which the receiver needs to match
  its patient; no phone, address or SSN. The SIU carries no finding or diagnosis (the EHR's
  schedule is read by front-desk staff); the REF carries the report, which the specialist
  needs to triage the referral.
* MSH-10 is chosen by the caller (derived from the outbox row), so a resend is the same
  message under the same control id and the receiver can drop the copy.
* SIU (v2.5.1 chapter 10): SCH with the engine's visit id as filler appointment id (SCH-2,
  stable across reschedules), event reason (SCH-6), filler contact and entered-by person
  (SCH-16, SCH-20, both required), filler status (SCH-25); TQ1 with the start and end, and
  SCH-11 with the same for receivers still on the deprecated TQ; PID; one RGS resource group
  with AIL (the practice) and AIP (the provider).
* REF (chapter 11): RF1 with status, priority, type, disposition, category, the engine's
  referral id as originating referral identifier (RF1-6, which the specialist's answer echoes)
  and the reason (RF1-10, with the decision's explanation as original text); PRD for the
  referring (RP) and referred-to (RT) providers; PID; OBR for the imaging study and one OBX
  (TX) per report line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

import hl7

VERSION = "2.5.1"
APPLICATION = "FOLLOWUP"
CHARSET = "UNICODE UTF-8"
# python-hl7's separators: segment, field, repetition, component, subcomponent.
_SEPARATORS = "\r|~^&"
_ESCAPE = "\\"
ENGINE_PERSON = ("FOLLOWUP", "Follow-up engine")
# The namespace (EI-2) of the engine's identifiers: SCH-2 of its SIU, RF1-6 of its REF (which a
# specialist's SIU names again in SCH-26).
ID_NAMESPACE = "FOLLOWUP"
REFERRAL_ID_PREFIX = "REF"
VISIT_ID_PREFIX = "VISIT"


class VisitTrigger(StrEnum):
    NEW = "S12"
    RESCHEDULED = "S13"
    MODIFIED = "S14"
    CANCELLED = "S15"


class ReferralTrigger(StrEnum):
    NEW = "I12"
    CANCELLED = "I14"


@dataclass(frozen=True, slots=True)
class Envelope:
    """MSH: who sends to whom, the control id and when."""

    control_id: str
    sent_at: datetime
    sending_facility: str
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    mrn: str
    family_name: str
    given_name: str = ""
    birth_date: date | None = None


@dataclass(frozen=True, slots=True)
class ProviderIdentity:
    npi: str
    family_name: str
    given_name: str = ""


@dataclass(frozen=True, slots=True)
class VisitMessage:
    trigger: VisitTrigger
    visit_id: int  # the first appointment of the visit: stable through reschedules
    start: datetime
    minutes: int
    patient: PatientIdentity
    provider: ProviderIdentity
    location: str  # the practice
    reason: str = "Follow-up of an MRI result"


@dataclass(frozen=True, slots=True)
class ReferralMessage:
    trigger: ReferralTrigger
    referral_id: int
    specialty: str
    urgency: str  # emergent | urgent | routine
    reason: str
    uncertain: bool
    patient: PatientIdentity
    referring: ProviderIdentity | None
    accession: str
    procedure_code: str
    procedure_text: str
    exam_time: datetime | None
    result_status: str
    report_text: str
    opened_at: datetime


def visit_identifier(visit_id: int) -> str:
    return f"{VISIT_ID_PREFIX}{visit_id}"


def referral_identifier(referral_id: int) -> str:
    return f"{REFERRAL_ID_PREFIX}{referral_id}"


def referral_id_from(identifier: str) -> int | None:
    """The referral id in one of the engine's referral identifiers (RF1-6, SCH-26); None when
    the identifier is not one of ours."""
    number = identifier.removeprefix(REFERRAL_ID_PREFIX)
    if number == identifier or not number.isdigit():
        return None
    return int(number)


# --- escaping and containers --------------------------------------------------------------------


def escape(value: str, *, formatted: bool = False) -> str:
    """HL7 escaping with the default delimiters; line breaks become ``\\.br\\`` in formatted
    text (FT) and a space elsewhere, so no value can end its segment early."""
    escaped = (
        value.replace(_ESCAPE, "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("~", "\\R\\")
        .replace("&", "\\T\\")
    )
    line_break = "\\.br\\" if formatted else " "
    return escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", line_break)


# A field value: one text, or components (each a text, or subcomponents).
Value = str | Sequence[str | Sequence[str]]


def _field(value: Value) -> hl7.Field:
    """One field of one repetition; texts are escaped here (see `escape`)."""
    components = [value] if isinstance(value, str) else list(value)
    built = []
    for component in components:
        parts = [component] if isinstance(component, str) else list(component)
        built.append(hl7.Component("&", [escape(part) for part in parts]))
    return hl7.Field("~", [hl7.Repetition("^", built)])


def _raw_field(text: str) -> hl7.Field:
    """A field written as is (already escaped, or made of delimiters such as MSH-2)."""
    return hl7.Field("~", [text])


def _segment(name: str, *values: Value) -> hl7.Segment:
    return hl7.Segment("|", [_raw_field(name), *(_field(value) for value in values)])


def _message(segments: Sequence[hl7.Segment]) -> str:
    message = hl7.Message("\r", list(segments), esc=_ESCAPE, separators=_SEPARATORS)
    return str(message)


def _dtm(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S%z")


def _msh(envelope: Envelope, message_type: tuple[str, str, str]) -> hl7.Segment:
    fields = [
        _raw_field("MSH"),
        _raw_field("|"),
        _raw_field("^~\\&"),
        _field(APPLICATION),
        _field(envelope.sending_facility),
        _field(envelope.receiving_application),
        _field(envelope.receiving_facility),
        _field(_dtm(envelope.sent_at)),
        _field(""),
        _field(list(message_type)),
        _field(envelope.control_id),
        _field(envelope.processing_id),
        _field(VERSION),
        _field(""),
        _field(""),
        _field("AL"),  # MSH-15 accept acknowledgment: always (original mode answers every one)
        _field("NE"),  # MSH-16 application acknowledgment: none beyond the ACK
        _field(""),
        _field(CHARSET),
    ]
    return hl7.Segment("|", fields)


def _pid(patient: PatientIdentity) -> hl7.Segment:
    return _segment(
        "PID",
        "1",
        "",
        [patient.mrn, "", "", "", "MR"],
        "",
        [patient.family_name, patient.given_name],
        "",
        patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "",
    )


def _xcn(provider: ProviderIdentity) -> list[str | Sequence[str]]:
    return [provider.npi, provider.family_name, provider.given_name, "", "", "", "", "", "NPI"]


# --- SIU ---------------------------------------------------------------------------------------

# SCH-25 filler status (HL7 table 0278) and SCH-6 event reason per trigger.
_VISIT_STATUS = {
    VisitTrigger.NEW: "Booked",
    VisitTrigger.RESCHEDULED: "Booked",
    VisitTrigger.MODIFIED: "Booked",
    VisitTrigger.CANCELLED: "Cancelled",
}
_VISIT_EVENT = {
    VisitTrigger.NEW: "Booked by the follow-up engine",
    VisitTrigger.RESCHEDULED: "Rescheduled",
    VisitTrigger.MODIFIED: "Modified",
    VisitTrigger.CANCELLED: "Cancelled",
}
# RGS-2 / AIx-2 segment action code (HL7 table 0206) for each trigger.
_ACTION = {
    VisitTrigger.NEW: "A",
    VisitTrigger.RESCHEDULED: "U",
    VisitTrigger.MODIFIED: "U",
    VisitTrigger.CANCELLED: "D",
}


def build_siu(visit: VisitMessage, envelope: Envelope) -> str:
    """SIU^S12/S13/S14/S15 for one visit (segments joined by \\r, no MLLP framing)."""
    start = _dtm(visit.start)
    end = _dtm(visit.start + timedelta(minutes=visit.minutes))
    status = _VISIT_STATUS[visit.trigger]
    action = _ACTION[visit.trigger]
    engine = list(ENGINE_PERSON)
    sch = _segment(
        "SCH",
        "",
        [visit_identifier(visit.visit_id), ID_NAMESPACE],
        "",
        "",
        "",
        ["", _VISIT_EVENT[visit.trigger]],
        ["", visit.reason],
        ["FOLLOWUP", "Follow-up", "HL70277"],
        str(visit.minutes),
        ["min", "minutes", "ANS+"],
        ["", "", "", start, end],
        "",
        "",
        "",
        "",
        engine,
        "",
        "",
        "",
        engine,
        "",
        "",
        "",
        "",
        [status, status, "HL70278"],
    )
    tq1 = _segment("TQ1", "1", "", "", "", "", "", start, end)
    rgs = _segment("RGS", "1", action, "1")
    ail = _segment(
        "AIL", "1", action, ["", "", "", visit.location], "", "", start, "", "", str(visit.minutes),
        "min", "", [status, status, "HL70278"],
    )  # fmt: skip
    aip = _segment(
        "AIP", "1", action, _xcn(visit.provider), ["D", "Physician", "HL70182"], "", start, "",
        "", str(visit.minutes), "min", "", [status, status, "HL70278"],
    )  # fmt: skip
    msh = _msh(envelope, ("SIU", visit.trigger.value, "SIU_S12"))
    return _message([msh, sch, tq1, _pid(visit.patient), rgs, ail, aip])


# --- REF ---------------------------------------------------------------------------------------

# RF1-2 referral priority (HL7 table 0280): S stat, A asap, R routine.
_PRIORITY = {"emergent": "S", "urgent": "A", "routine": "R"}
_SPECIALTY_NAMES = {
    "neurology": "Neurology",
    "orthopedics": "Orthopedics (spine)",
    "pain_management": "Pain management",
    "rheumatology": "Rheumatology",
}


def specialty_name(specialty: str) -> str:
    return _SPECIALTY_NAMES.get(specialty, specialty.replace("_", " ").capitalize())


def build_ref(referral: ReferralMessage, envelope: Envelope) -> str:
    """REF^I12 (new referral) or REF^I14 (cancellation) (segments joined by \\r)."""
    cancelled = referral.trigger == ReferralTrigger.CANCELLED
    # RF1-1 (user-defined table 0283): the trigger says cancelled; C is this site's code for it.
    status = ["C", "Cancelled"] if cancelled else ["P", "Pending"]
    reason_text = referral.reason or f"Referral to {specialty_name(referral.specialty)}"
    if referral.uncertain:
        reason_text += " (finding reported as uncertain)"
    rf1 = _segment(
        "RF1",
        [*status, "HL70283"],
        [_PRIORITY.get(referral.urgency, "R"), referral.urgency.capitalize(), "HL70280"],
        ["Med", "Medical", "HL70281"],
        ["WR", "Send written report", "HL70282"],
        ["O", "Outpatient", "HL70284"],
        [referral_identifier(referral.referral_id), ID_NAMESPACE],
        _dtm(referral.opened_at),
        "",
        "",
        ["O", "Provider ordered", "HL70336", "", "", "", "", "", reason_text],
    )
    segments = [_msh(envelope, ("REF", referral.trigger.value, "REF_I12")), rf1]
    if referral.referring is not None:
        segments.append(
            _segment(
                "PRD",
                ["RP", "Referring provider", "HL70286"],
                [referral.referring.family_name, referral.referring.given_name],
                "",
                "",
                "",
                "",
                [referral.referring.npi, "NPI"],
            )
        )
    segments.append(
        _segment(
            "PRD",
            ["RT", "Referred to provider", "HL70286"],
            # The specialty's clinic as a whole: the receiving system assigns the doctor.
            [specialty_name(referral.specialty)],
        )
    )
    segments.append(_pid(referral.patient))
    segments.append(
        _segment(
            "OBR",
            "1",
            "",
            [referral.accession, "RIS"],
            [referral.procedure_code, referral.procedure_text],
            "",
            "",
            _dtm(referral.exam_time) if referral.exam_time else "",
            *[""] * 17,
            referral.result_status,
        )
    )
    lines = [line for line in referral.report_text.splitlines() if line.strip()]
    for number, line in enumerate(lines, start=1):
        segments.append(
            _segment(
                "OBX",
                str(number),
                "TX",
                ["18782-3", "Radiology Study observation (narrative)", "LN"],
                "",
                line,
                "",
                "",
                "",
                "",
                "",
                referral.result_status,
            )
        )
    return _message(segments)
