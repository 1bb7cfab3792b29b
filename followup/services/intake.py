"""Intake: what every receiving edge (MLLP, HTTP, CLI) does with an inbound message.

Store the raw bytes durably first, then validate, detect duplicates and decide the answer.

Rules, and why:

* The raw row is committed before the message is validated, so even input that crashes the
  parser is kept; every outcome is written back to that row. Only MSH is read before that
  commit, so that the row's sender and MSH-10 are committed with it, before the duplicate
  check: two copies of one message arriving at once on two connections see each other (the
  later row is the duplicate). A failure reading MSH is answered after the commit.
* A row stored but never judged (the gateway stopped between the two commits) is judged
  later by sweep-inbox (`judge_stranded`), exactly as here; until then no run is submitted
  for it. Its sender got no answer and resent: the resend, judged first, is the original.
* A duplicate (same sender, the whole MSH-10 and the same content, or the same accession,
  status and text) gets the original's answer and starts nothing. The content is compared by
  a digest of the message without MSH-7 (a resend may be stamped anew): a reused MSH-10 with
  other content (a sender whose counter reset) is a new message, audited as such, never
  dropped. An MSH-10 longer than its column is keyed by its SHA-256, so ids that differ only
  past the column's length stay apart. The answer is the original ACK: an intake rejection is
  remembered in the row's summary (`ack_code`, `error_kind`); a row that failed later, in the
  flow, was answered AA and is answered AA again.
* Results (ORU^R01, FHIR DiagnosticReport) are accepted as `received`, for a flow run to claim,
  except: a cancelled result (X) for a study never routed has nothing to undo, and a
  preliminary (P) arriving after the study's final or corrected report is stale; both are
  stored, audited and answered AA with no run. A corrected report (C) has new text, so it is
  new content and runs again (superseding the decision); a final written before the study's
  current correction (a RIS queue delivering out of order) runs and is held; a cancellation
  of a routed study runs to withdraw its decision, referrals and follow-up; a preliminary
  before any final runs too, and the flow holds it unless critical (DOMAIN.md §5).
* Orders (ORM^O01, OMI^O23) and ADT (A04, A08, A31) update the patient (phone, language, name)
  and the study's ordering provider, and start no flow: `processed` at once.
* The specialists' answers (RRI^I12, SIU^S12/S13/S14/S26: followup/ris/answers.py) move the
  referral they name through its state machine in the judging transaction, and start no
  flow. An answer naming no referral of this engine, or one the referral cannot take, is
  refused (AE with the reason) and audited; nothing of it is applied.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlmodel import Session

from followup.core.referrals import (
    IllegalReferralTransition,
    ReferralStatus,
    UnknownReferral,
    answer_path,
)
from followup.errors import (
    InboundMessageError,
    InvalidField,
    MalformedMessage,
    MissingField,
    UnsupportedMessage,
)
from followup.ris import answers, hl7v2, updates
from followup.ris.hl7v2 import MessageHeader
from followup.ris.scan import ACCESSION_LENGTH, ScanCompleted
from followup.settings import Settings
from models import inbox_queries, queries
from models.tables import InboxMessage, InboxStatus, Referral
from models.types import utcnow

logger = logging.getLogger(__name__)

RESULT_TYPE = "ORU^R01"
# The source of FHIR Task updates (`receive_fhir_task`): the stored row says how to judge it.
TASK_SOURCE = "http-task"
# Column sizes of InboxMessage: longer envelope values are cut, not crashed on (the parsers
# refuse content values longer than their columns: followup/ris/scan.py).
_CONTROL_ID_LENGTH = 199
_SENDER_LENGTH = 255
_MESSAGE_TYPE_LENGTH = 32
_LOCATION_LENGTH = 32


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the receiving edge (MLLP, HTTP, CLI) answers, and whether a flow should run."""

    inbox_id: int
    status: str
    ack_code: str  # AA accepted, AE error in content, AR rejected
    reason: str = ""
    location: str | None = None
    error_kind: str | None = None  # InboundMessageError subclass name of a rejection
    accession: str | None = None
    control_id: str | None = None
    duplicate_of: int | None = None
    header: MessageHeader | None = None  # HL7 v2 only: what the ACK echoes
    # The row whose ris.scan.completed event the edge emits: this one when accepted, or the
    # original of a resend when no run has claimed it yet (the sender resends because the
    # ACK was lost; the event id, derived from the original, lets Prefect drop a repeat).
    run_inbox_id: int | None = None

    @property
    def should_process(self) -> bool:
        return self.run_inbox_id is not None


def _looks_like_hl7(raw: bytes) -> bool:
    return raw.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"MSH")


def _report_fingerprint(scan: ScanCompleted) -> str:
    """Same accession, status and text: the same report, whatever the envelope says."""
    material = "\x1f".join((scan.accession, scan.result_status, scan.report_text))
    return "report:" + hashlib.sha256(material.encode()).hexdigest()[:56]


def receive_message(
    *, session: Session, raw: bytes, source: str, settings: Settings, peer: str | None = None
) -> Receipt:
    """Store one HL7 v2 message durably, then validate it and detect duplicates."""
    envelope = _Envelope.read(raw)
    header = envelope.header
    row = inbox_queries.store_message(
        session=session,
        raw=raw,
        source=source,
        peer=peer,
        content_type="hl7v2" if envelope.text else "unknown",
        sender=_sender(header),
        control_id=control_id_key(header.control_id) if header else None,
        message_type=_storable(header.message_type, _MESSAGE_TYPE_LENGTH) if header else None,
        content_digest=content_digest(envelope.text) if header else None,
    )
    return _judge_hl7(session, row, envelope, settings)


def control_id_key(control_id: str) -> str | None:
    """MSH-10 as the idempotency key stores it: whole when the column holds it, else its
    SHA-256 (a prefix would make two long ids that differ at the end one key)."""
    if not control_id:
        return None
    if len(control_id) <= _CONTROL_ID_LENGTH:
        return _storable(control_id, _CONTROL_ID_LENGTH)
    return "sha256:" + hashlib.sha256(control_id.encode()).hexdigest()


def content_digest(text: str) -> str:
    """SHA-256 of the message's segments with MSH-7 (the time it was sent) left out and line
    ends and trailing blanks ignored: a resend of the same message has the same digest, a
    different message under a reused MSH-10 another."""
    segments = [segment.rstrip() for segment in text.strip().split("\r") if segment.strip()]
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        fields = segments[0].split(segments[0][3])  # fields[n - 1] is MSH-n
        if len(fields) > 6:
            fields[6] = ""
        segments[0] = segments[0][3].join(fields)
    return hashlib.sha256("\r".join(segments).encode()).hexdigest()


def judge_stranded(*, session: Session, row: InboxMessage, settings: Settings) -> Receipt:
    """Judge a row that was stored but never judged, as it would have been judged then.

    Its gateway stopped between the two commits (raw bytes, then judgement), so its sender got
    no answer and will have resent it: the resend, judged in between, is then the original and
    this row its duplicate, and one run processes the message, not two.
    """
    if row.content_type == "fhir" and row.source == TASK_SOURCE:
        return _judge_fhir_task(session, row, settings)
    if row.content_type == "fhir":
        return _judge_fhir(session, row, settings)
    return _judge_hl7(session, row, _Envelope.read(row.raw), settings)


def judge_stranded_messages(
    *, session: Session, settings: Settings, received_before: datetime, limit: int
) -> list[Receipt]:
    """Judge every row stored but never judged before `received_before` (`judge_stranded`).

    Those accepted are then `received` like any accepted row, for sweep-inbox to submit. A row
    that cannot be judged is logged and left for the next sweep, so that it does not hold back
    the others.
    """
    receipts = []
    for row in inbox_queries.stranded_messages(
        session=session, received_before=received_before, limit=limit
    ):
        try:
            receipt = judge_stranded(session=session, row=row, settings=settings)
        except Exception as exc:
            session.rollback()
            # The type only: parser and database errors can quote the message (PHI).
            logger.error("could not judge stranded inbox %s: %s", row.id, type(exc).__name__)
            continue
        logger.warning(
            "judged stranded inbox %d: %s%s",
            receipt.inbox_id,
            receipt.status,
            f" (duplicate of {receipt.duplicate_of})" if receipt.duplicate_of else "",
        )
        receipts.append(receipt)
    return receipts


@dataclass(frozen=True, slots=True)
class _Envelope:
    """The decoded text and MSH of a message, read before its row is stored."""

    text: str  # empty when the bytes do not start with MSH
    header: MessageHeader | None
    problem: Exception | None  # why MSH could not be read, answered after the commit

    @classmethod
    def read(cls, raw: bytes) -> _Envelope:
        if not _looks_like_hl7(raw):
            return cls("", None, None)
        text = hl7v2.decode_message(raw)
        try:
            return cls(text, _peek_header(text), None)
        except Exception as exc:  # answered (or raised) once the raw bytes are stored
            return cls(text, None, exc)


def _judge_hl7(
    session: Session, row: InboxMessage, envelope: _Envelope, settings: Settings
) -> Receipt:
    text, header = envelope.text, envelope.header
    if not text:
        not_hl7 = MalformedMessage("not an HL7 v2 message (no MSH segment at the start)")
        return _reject(session, row, not_hl7)
    if isinstance(envelope.problem, InboundMessageError):
        return _reject(session, row, envelope.problem)
    if envelope.problem is not None:
        raise envelope.problem
    assert header is not None and row.sender is not None
    # Parsed before the judging transaction: its locks are held for no longer than the writes.
    content = _read(text, header, settings)
    if not header.control_id.strip() and not isinstance(content, UnsupportedMessage):
        # Without MSH-10 the ACK cannot name the message (MSA-2) and a resend cannot be told
        # from a new message.
        missing = MissingField("message control id is empty", location="MSH-10")
        return _reject(session, row, missing, header)
    fingerprint = _report_fingerprint(content) if isinstance(content, ScanCompleted) else None
    inbox_queries.lock_idempotency_keys(
        session=session, sender=row.sender, control_id=row.control_id, fingerprint=fingerprint
    )
    if row.control_id:
        original = inbox_queries.original_message(
            session=session,
            sender=row.sender,
            control_id=row.control_id,
            content_digest=row.content_digest,
            inbox_id=_id(row),
        )
        if original is not None and original.content_digest in (None, row.content_digest):
            return _duplicate(session, row, original, header)
        if original is not None:
            # Not a resend: the sender's counter reset, or two systems share a sender name.
            queries.audit(
                session=session,
                actor="intake",
                action="inbox.control_id_reused",
                entity="inbox_message",
                entity_id=_id(row),
                detail={"earlier_inbox_id": original.id},
            )
    if isinstance(content, InboundMessageError):
        return _reject(session, row, content, header)
    if isinstance(content, updates.RisUpdate):
        return _apply_update(session, row, content, header)
    if isinstance(content, answers.SpecialistAnswer):
        return _apply_answer(session, row, content, header)
    assert fingerprint is not None
    return _accept_result(session, row, content, fingerprint=fingerprint, header=header)


def _read(
    text: str, header: MessageHeader, settings: Settings
) -> ScanCompleted | updates.RisUpdate | answers.SpecialistAnswer | InboundMessageError:
    """The message's content by its type, or why it cannot be used."""
    try:
        if header.message_type in updates.UPDATE_TYPES:
            return updates.parse_update(text, phone_region=settings.default_phone_region)
        if header.message_type in answers.ANSWER_TYPES:
            return answers.parse_answer(text, site_zone=settings.site_zone)
        if header.message_type != RESULT_TYPE:
            accepted = ", ".join(
                [RESULT_TYPE, *sorted(updates.UPDATE_TYPES | answers.ANSWER_TYPES)]
            )
            return UnsupportedMessage(
                f"message type {header.message_type or '(empty)'} is not one of {accepted}",
                location="MSH-9",
            )
        return hl7v2.parse_oru(
            text, site_zone=settings.site_zone, phone_region=settings.default_phone_region
        )
    except InboundMessageError as error:
        return error


def _peek_header(text: str) -> MessageHeader:
    """MSH, read before the raw row is stored so one commit holds both.

    MSH alone is parsed: parsing is most of the cost, and parse_oru parses the whole message.
    The header fields must be committed with the row, before the duplicate check, so that two
    copies arriving at once on two connections see each other (the later row is the duplicate).
    """
    return hl7v2.message_header(hl7v2.parse_message(text.lstrip().partition("\r")[0]))


def _sender(header: MessageHeader | None) -> str | None:
    if header is None:
        return None
    return _storable(f"{header.sending_application}|{header.sending_facility}", _SENDER_LENGTH)


def _storable(value: str, length: int) -> str:
    """An envelope value as its text column can hold it, so the row is always stored.

    A NUL (which PostgreSQL text cannot hold) becomes U+FFFD rather than vanishing, so that
    "A\\0B" and "AB" stay different idempotency keys; the message itself is then refused
    for it, after the commit (hl7v2.check_no_nul).
    """
    return value.replace("\x00", "\N{REPLACEMENT CHARACTER}")[:length]


def receive_fhir(
    *, session: Session, raw: bytes, source: str, settings: Settings, peer: str | None = None
) -> Receipt:
    """Store one FHIR DiagnosticReport or Bundle durably, then validate it and deduplicate.

    The report's identifier, status and text are its idempotency key: the same report posted
    again is a duplicate, a corrected one (new status or text) is new content.
    """
    row = queries.store_inbox_message(
        session=session, raw=raw, source=source, peer=peer, content_type="fhir"
    )
    return _judge_fhir(session, row, settings)


def _judge_fhir(session: Session, row: InboxMessage, settings: Settings) -> Receipt:
    from followup.ris import fhir  # see parse_stored

    try:
        report = fhir.parse_report(
            row.raw,
            site_zone=settings.site_zone,
            phone_region=settings.default_phone_region,
            max_json_depth=settings.fhir_max_json_depth,
            max_bundle_entries=settings.fhir_max_bundle_entries,
        )
    except InboundMessageError as error:
        return _reject(session, row, error)
    row.sender = "fhir"
    row.control_id = report.identifier[:_CONTROL_ID_LENGTH]
    row.message_type = report.resource_path.partition(".")[0]
    fingerprint = _report_fingerprint(report.scan)
    inbox_queries.lock_idempotency_keys(
        session=session, sender=None, control_id=None, fingerprint=fingerprint
    )
    return _accept_result(session, row, report.scan, fingerprint=fingerprint)


def receive_fhir_task(
    *, session: Session, raw: bytes, source: str, settings: Settings, peer: str | None = None
) -> Receipt:
    """Store one FHIR Task update from a specialist's system durably, then apply it to the
    referral it names (`_apply_answer`, as for an HL7 answer)."""
    row = queries.store_inbox_message(
        session=session, raw=raw, source=source, peer=peer, content_type="fhir"
    )
    return _judge_fhir_task(session, row, settings)


def _judge_fhir_task(session: Session, row: InboxMessage, settings: Settings) -> Receipt:
    row.message_type = answers.TASK
    row.sender = "fhir"
    try:
        answer = answers.parse_task(row.raw, site_zone=settings.site_zone)
    except InboundMessageError as error:
        return _reject(session, row, error)
    return _apply_answer(session, row, answer, None)


def receive_unterminated(
    *,
    session: Session,
    raw: bytes,
    source: str,
    peer: str | None = None,
    reason: str = "the frame ended without the MLLP end block; it may be cut off",
) -> Receipt:
    """A frame cut off by the end of its connection, or by a framing error (`reason`): kept
    as an error row, never processed.

    Its end may be missing, so even a message that parses is not trusted. MSH is read only to
    address the answer; MSH-10 is not recorded, so the sender's complete resend is not taken
    for a duplicate of this fragment.
    """
    row = InboxMessage(
        raw=raw,
        source=source,
        peer=peer,
        content_type="hl7v2" if _looks_like_hl7(raw) else "unknown",
        content_hash=queries.content_hash(raw),
    )
    session.add(row)
    cut_off = MalformedMessage(reason)
    # Stored and refused in one commit (nothing is parsed before it): a gateway stopped here
    # leaves no unjudged row that sweep-inbox could take for a complete message.
    receipt = _reject(session, row, cut_off)
    if row.content_type != "hl7v2":
        return receipt
    with suppress(InboundMessageError):
        return replace(
            receipt, header=hl7v2.message_header(hl7v2.parse_message(hl7v2.decode_message(raw)))
        )
    return receipt


def parse_stored(row: InboxMessage, settings: Settings) -> ScanCompleted:
    """Re-read an accepted result from its raw bytes, whichever protocol brought it."""
    if row.content_type == "fhir":
        # Imported here: fhir.resources' models cost a flow-run process ~60 ms at start, which
        # the HL7 v2 results (most of them) never need.
        from followup.ris import fhir

        return fhir.parse_report(
            row.raw,
            site_zone=settings.site_zone,
            phone_region=settings.default_phone_region,
            max_json_depth=settings.fhir_max_json_depth,
            max_bundle_entries=settings.fhir_max_bundle_entries,
        ).scan
    return hl7v2.parse_oru(
        hl7v2.decode_message(row.raw),
        site_zone=settings.site_zone,
        phone_region=settings.default_phone_region,
    )


def _id(row: InboxMessage) -> int:
    assert row.id is not None  # set by the commit in store_inbox_message
    return row.id


def _accept_result(
    session: Session,
    row: InboxMessage,
    scan: ScanCompleted,
    *,
    fingerprint: str,
    header: MessageHeader | None = None,
) -> Receipt:
    """Accept a result, or answer it as a copy of the same report (under the key's lock)."""
    same = inbox_queries.same_report(session=session, fingerprint=fingerprint, inbox_id=_id(row))
    row.content_hash = fingerprint
    if same is not None:
        return _duplicate(session, row, same, header)
    row.accession = scan.accession
    note = _no_run_reason(session, scan, _id(row))
    if note:
        _finish_without_run(row, {"note": note})
        # The flow audits a stale report it holds; one refused here leaves the same trail.
        queries.audit(
            session=session,
            actor="intake",
            action="report.not_routed",
            entity="inbox_message",
            entity_id=_id(row),
            detail={"accession": scan.accession, "result_status": scan.result_status, "note": note},
        )
    session.add(row)
    session.commit()
    return Receipt(
        inbox_id=_id(row),
        status=row.status,
        ack_code="AA",
        accession=scan.accession,
        control_id=row.control_id,
        run_inbox_id=_id(row) if row.status == InboxStatus.RECEIVED else None,
        header=header,
    )


def _no_run_reason(session: Session, scan: ScanCompleted, inbox_id: int) -> str | None:
    # Only X and P are judged here: a final written before the study's correction is held by
    # its run (queries.is_stale_report), which spares every other result a query at intake.
    if scan.result_status == "X":
        routed = inbox_queries.report_status(session=session, accession=scan.accession)
        if routed is None and not inbox_queries.result_awaiting_run(
            session=session, accession=scan.accession, before_id=inbox_id
        ):
            return "cancelled result: nothing to route"
        # The run withdraws the study's decision, referrals and follow-up; run before the
        # result it cancels, it leaves that result stale (older than the study's report).
        return None
    if scan.result_status == "P":
        current = inbox_queries.report_status(session=session, accession=scan.accession)
        if current in queries.FINAL_STATUSES:
            return f"preliminary after a {current} report: kept, not routed"
    return None


def _apply_update(
    session: Session, row: InboxMessage, update: updates.RisUpdate, header: MessageHeader
) -> Receipt:
    changed = inbox_queries.apply_ris_update(session=session, update=update)
    row.accession = (update.accession or "")[:ACCESSION_LENGTH] or None
    provider = update.ordering_provider.identifier if update.ordering_provider else None
    _finish_without_run(row, {"updated": changed, "ordering_provider": provider})
    return _accepted_without_run(session, row, header)


def _apply_answer(
    session: Session,
    row: InboxMessage,
    answer: answers.SpecialistAnswer,
    header: MessageHeader | None,
) -> Receipt:
    """A specialist's answer moves its referral; one the referral cannot take (unknown, or a
    move the state machine refuses) is answered AE with the reason, and audited."""
    try:
        referral = _move_referral(
            session=session, answer=answer, actor=f"specialist:{row.sender}"[:64]
        )
    except (UnknownReferral, IllegalReferralTransition) as error:
        queries.audit(
            session=session,
            actor="intake",
            action="referral.answer_refused",
            entity="inbox_message",
            entity_id=_id(row),
            detail={
                "message_type": answer.message_type,
                "identifier": answer.identifier,
                "reason": str(error),
            },
        )
        return _reject(session, row, InvalidField(str(error), location=answer.location), header)
    _finish_without_run(row, {"referral": referral.id, "status": referral.status})
    return _accepted_without_run(session, row, header)


def _accepted_without_run(
    session: Session, row: InboxMessage, header: MessageHeader | None
) -> Receipt:
    """Commit a row finished here (no flow run needed) and answer AA."""
    session.add(row)
    session.commit()
    return Receipt(
        inbox_id=_id(row),
        status=row.status,
        ack_code="AA",
        accession=row.accession,
        control_id=row.control_id,
        header=header,
    )


def _finish_without_run(row: InboxMessage, summary: dict[str, Any]) -> None:
    row.status = InboxStatus.PROCESSED
    row.processed_at = utcnow()
    row.summary = summary


def _reject(
    session: Session,
    row: InboxMessage,
    error: InboundMessageError,
    header: MessageHeader | None = None,
) -> Receipt:
    row.status = (
        InboxStatus.REJECTED if isinstance(error, UnsupportedMessage) else InboxStatus.ERROR
    )
    row.error = _storable(error.reason, len(error.reason))  # it may quote a NUL it refuses
    # Cut to the column; the answer below names the whole location.
    row.error_location = _storable(error.location, _LOCATION_LENGTH) if error.location else None
    # Remembered for a resend, which must get this very answer (see the module docstring).
    row.summary = {"ack_code": error.ack_code, "error_kind": type(error).__name__}
    session.add(row)
    session.commit()
    return Receipt(
        inbox_id=_id(row),
        status=row.status,
        ack_code=error.ack_code,
        reason=error.reason,
        location=error.location,
        error_kind=type(error).__name__,
        control_id=row.control_id,
        header=header,
    )


def _duplicate(
    session: Session,
    row: InboxMessage,
    original: inbox_queries.JudgedMessage,
    header: MessageHeader | None,
) -> Receipt:
    """A resend gets the original's answer and summary; no work is redone. The original's
    event is emitted again while no run has claimed it (see `Receipt.run_inbox_id`)."""
    row.status = InboxStatus.DUPLICATE
    row.duplicate_of_id = original.id
    row.accession = original.accession
    row.summary = original.summary
    row.error = original.error
    row.error_location = original.error_location
    session.add(row)
    session.commit()
    remembered = original.summary or {}
    unclaimed = original.status == InboxStatus.RECEIVED and original.claimed_at is None
    return Receipt(
        inbox_id=_id(row),
        status=row.status,
        ack_code=remembered.get("ack_code", "AA"),
        reason=(original.error or "") if "ack_code" in remembered else "",
        location=original.error_location if "ack_code" in remembered else None,
        error_kind=remembered.get("error_kind"),
        accession=original.accession,
        control_id=row.control_id,
        duplicate_of=original.id,
        run_inbox_id=original.id if unclaimed else None,
        header=header,
    )


def _move_referral(*, session: Session, answer: answers.SpecialistAnswer, actor: str) -> Referral:
    """Move the referral the answer names through the state machine (each move timestamped,
    in its history and audited); UnknownReferral or IllegalReferralTransition, with nothing
    written, when it cannot take the answer."""
    referral_id = answer.referral_id
    referral = session.get(Referral, referral_id) if referral_id is not None else None
    if referral is None or referral.id is None:
        raise UnknownReferral(
            f"{answer.location} {answer.identifier!r} names no referral sent by this engine"
        )
    path = answer_path(referral.status, answer.status)
    why = f"{answer.message_type} from the specialist: {answer.reason}".rstrip(": ")
    for step in path:
        scheduled = answer.scheduled_for if step == ReferralStatus.SCHEDULED else None
        queries.transition_referral(
            session=session,
            referral_id=referral.id,
            to=step,
            actor=actor,
            reason=why,
            scheduled_for=scheduled,
        )
    if not path and answer.scheduled_for and answer.scheduled_for != referral.scheduled_for:
        queries.audit(
            session=session,
            actor=actor,
            action="referral.rescheduled",
            entity="referral",
            entity_id=referral.id,
            detail={"from": str(referral.scheduled_for), "to": str(answer.scheduled_for)},
        )
        referral.scheduled_for = answer.scheduled_for
        session.add(referral)
        session.flush()
    return referral
