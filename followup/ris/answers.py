"""The specialists' answers to the engine's referrals → SpecialistAnswer: pure parsing.

What is read, and why:

* RRI^I12 (return referral information): RF1-1 (HL7 table 0283) A accepted, R rejected
  (declined); the referral is the one RF1-6 names (the originating referral identifier the
  engine sent in its REF^I12, echoed back). The reason of a decline is RF1-10's text (original
  text, else the coded text), else the NTE notes. Any other RF1-1 (P pending, E expired) is
  not an answer the referral can take: refused (AE at RF1-1) so the sender sees it.
* SIU^S12 / S13 from the specialist's scheduling system: the referral's appointment, booked
  (scheduled) or moved, with its start from TQ1-7, else SCH-11.4. The referral is the one
  SCH-26 (placer order number) names: the specialist's system places the visit against the
  engine's order, as a filler does.
* SIU^S14 / S26 with SCH-25 (filler status, HL7 table 0278) Complete or Completed: the visit
  took place, the loop is closed. Other statuses on these triggers are refused (AE at SCH-25):
  a moved visit comes as S12/S13, a no-show is for a person to follow up, not a state.
* FHIR: a Task (the one the engine created with the referral's ServiceRequest, updated by the
  specialist's system) posted to the HTTP gateway: accepted, rejected (statusReason), in-progress
  (booked: executionPeriod.start) or completed.
* An identifier that is not the engine's (`REF<n>`) is kept as sent in the answer, so intake
  can refuse it naming what it got.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from followup.core.referrals import ReferralStatus
from followup.errors import InvalidField, MalformedMessage, MissingField, UnsupportedMessage
from followup.ris.hl7v2 import (
    Delimiters,
    Segment,
    check_header,
    check_no_nul,
    component_value,
    field_value,
    first_repetition,
    message_header,
    parse_dtm,
    parse_message,
    repetitions,
    segment_named,
    unescape,
)
from followup.ris.outbound import referral_id_from

RRI = "RRI^I12"
SIU_BOOKED = frozenset({"SIU^S12", "SIU^S13"})
SIU_COMPLETED = frozenset({"SIU^S14", "SIU^S26"})
ANSWER_TYPES = frozenset({RRI}) | SIU_BOOKED | SIU_COMPLETED

_RRI_STATUS = {"A": ReferralStatus.ACCEPTED, "R": ReferralStatus.DECLINED}
_COMPLETED = {"COMPLETE", "COMPLETED"}


@dataclass(frozen=True, slots=True)
class SpecialistAnswer:
    message_type: str
    identifier: str  # the referral identifier as the answer carries it
    location: str  # where it was read (RF1-6, SCH-26): what an AE names
    status: ReferralStatus
    reason: str = ""
    scheduled_for: datetime | None = None

    @property
    def referral_id(self) -> int | None:
        """The engine's referral id, or None when the identifier is not one of ours."""
        return referral_id_from(self.identifier)


def parse_answer(text: str, *, site_zone: ZoneInfo) -> SpecialistAnswer:
    """Validate one specialist answer; an InboundMessageError subclass when it cannot be used."""
    check_no_nul(text)
    msg = parse_message(text)
    header = message_header(msg)
    check_header(header, accepted_types=ANSWER_TYPES)
    delims, segments = msg.delimiters, msg.segments
    if header.message_type == RRI:
        return _return_referral(segments, delims)
    sch = segment_named(segments, "SCH")
    if sch is None:
        raise MissingField("no SCH segment", location="SCH")
    identifier = field_value(sch, 26, 1, delims)
    if not identifier:
        raise MissingField("SCH-26 (placer order number) names no referral", location="SCH-26")
    if header.message_type in SIU_COMPLETED:
        status = field_value(sch, 25, 1, delims)
        if status.upper() not in _COMPLETED:
            raise InvalidField(
                f"filler status {status or '(empty)'} is not Complete: only a completed visit "
                f"is read from {header.message_type}",
                location="SCH-25",
            )
        return SpecialistAnswer(
            header.message_type, identifier, "SCH-26", ReferralStatus.COMPLETED, "visit completed"
        )
    start, at = _visit_start(segments, sch, delims)
    try:
        scheduled_for = parse_dtm(start, site_zone)
    except (ValueError, OverflowError) as exc:
        raise InvalidField(f"time {start!r}: {exc}", location=at) from exc
    return SpecialistAnswer(
        header.message_type,
        identifier,
        "SCH-26",
        ReferralStatus.SCHEDULED,
        "appointment booked by the specialist",
        scheduled_for,
    )


def _return_referral(segments: tuple[Segment, ...], delims: Delimiters) -> SpecialistAnswer:
    rf1 = segment_named(segments, "RF1")
    if rf1 is None:
        raise MissingField("no RF1 segment", location="RF1")
    identifier = field_value(rf1, 6, 1, delims)
    if not identifier:
        raise MissingField("RF1-6 (originating referral identifier) is empty", location="RF1-6")
    code = field_value(rf1, 1, 1, delims).upper()
    status = _RRI_STATUS.get(code)
    if status is None:
        raise InvalidField(
            f"referral status {code or '(empty)'} is neither A (accepted) nor R (rejected)",
            location="RF1-1",
        )
    reason_field = first_repetition(rf1.field(10), delims)
    reason = component_value(reason_field, 9, delims) or component_value(reason_field, 2, delims)
    if not reason:
        notes = [seg for seg in segments if seg.name == "NTE"]
        reason = " ".join(
            unescape(line, delims).strip()
            for note in notes
            for line in repetitions(note.field(3), delims)
        ).strip()
    return SpecialistAnswer(RRI, identifier, "RF1-6", status, reason)


def _visit_start(
    segments: tuple[Segment, ...], sch: Segment, delims: Delimiters
) -> tuple[str, str]:
    tq1 = segment_named(segments, "TQ1")
    if tq1 is not None and field_value(tq1, 7, 1, delims):
        return field_value(tq1, 7, 1, delims), "TQ1-7"
    start = component_value(first_repetition(sch.field(11), delims), 4, delims)
    if not start:
        raise MissingField("no appointment start in TQ1-7 or SCH-11.4", location="TQ1-7")
    return start, "SCH-11"


# --- FHIR Task updates ---------------------------------------------------------------------------

TASK = "Task"
# Task.status (FHIR R4 task-status) → the referral's state. `in-progress` means the specialist
# has booked the visit; its time is the Task's executionPeriod.start.
_TASK_STATUS = {
    "accepted": ReferralStatus.ACCEPTED,
    "rejected": ReferralStatus.DECLINED,
    "in-progress": ReferralStatus.SCHEDULED,
    "completed": ReferralStatus.COMPLETED,
}


def parse_task(raw: bytes, *, site_zone: ZoneInfo) -> SpecialistAnswer:
    """A FHIR R4 Task the specialist's system updated: which referral (its identifier or its
    focus's identifier, `REF<n>` as the engine sent it), and the state it reports."""
    try:
        task = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"not JSON: {type(exc).__name__}") from exc
    if not isinstance(task, dict) or task.get("resourceType") != TASK:
        raise UnsupportedMessage("not a FHIR Task", location="Task")
    identifier = _our_identifier(task)
    if identifier is None:
        raise MissingField("no identifier of a referral in Task.identifier or Task.focus",
                           location="Task.identifier")  # fmt: skip
    status = str(task.get("status", ""))
    target = _TASK_STATUS.get(status)
    if target is None:
        raise InvalidField(
            f"Task.status {status or '(empty)'} is not accepted, rejected, in-progress or "
            "completed",
            location="Task.status",
        )
    reason = str((task.get("statusReason") or {}).get("text", "")) if target else ""
    scheduled_for = None
    if target == ReferralStatus.SCHEDULED:
        start = (task.get("executionPeriod") or {}).get("start")
        if not start:
            raise MissingField("an in-progress Task needs executionPeriod.start",
                               location="Task.executionPeriod.start")  # fmt: skip
        try:
            scheduled_for = datetime.fromisoformat(str(start)).astimezone(site_zone)
        except ValueError as exc:
            raise InvalidField(f"executionPeriod.start {start!r}: {exc}",
                               location="Task.executionPeriod.start") from exc  # fmt: skip
    return SpecialistAnswer(TASK, identifier, "Task.identifier", target, reason, scheduled_for)


def _our_identifier(task: dict[str, Any]) -> str | None:
    candidates = list(task.get("identifier") or [])
    focus = task.get("focus") or {}
    if isinstance(focus, dict) and isinstance(focus.get("identifier"), dict):
        candidates.append(focus["identifier"])
    for candidate in candidates:
        value = candidate.get("value") if isinstance(candidate, dict) else None
        if isinstance(value, str) and referral_id_from(value) is not None:
            return value
    return None
