"""Intake: what every receiving edge (MLLP, HTTP, CLI) does with an inbound message.

Store the raw bytes durably first, then validate, detect duplicates and decide the answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlmodel import Session

from followup.errors import InboundMessageError, MalformedMessage, UnsupportedMessage
from followup.ris import hl7v2
from followup.ris.scan import ScanCompleted
from followup.settings import Settings
from models import queries
from models.tables import InboxMessage, InboxStatus


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the receiving edge (MLLP, HTTP, CLI) answers, and whether a flow should run."""

    inbox_id: int
    status: str
    ack_code: str  # AA accepted, AE error in content, AR rejected
    reason: str = ""
    location: str | None = None
    accession: str | None = None
    control_id: str | None = None
    duplicate_of: int | None = None

    @property
    def should_process(self) -> bool:
        return self.status == InboxStatus.RECEIVED


def _looks_like_hl7(raw: bytes) -> bool:
    return raw.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"MSH")


def _report_fingerprint(scan: ScanCompleted) -> str:
    """Same accession, status and text: the same report, whatever the envelope says."""
    material = "\x1f".join((scan.accession, scan.result_status, scan.report_text))
    return "report:" + hashlib.sha256(material.encode()).hexdigest()[:56]


def receive_message(
    *, session: Session, raw: bytes, source: str, settings: Settings, peer: str | None = None
) -> Receipt:
    """Store the raw message durably, then validate it and detect duplicates.

    The raw row is committed before anything is parsed, so even input that crashes the
    parser is kept; every outcome is written back to that row.
    """
    row = queries.store_inbox_message(session=session, raw=raw, source=source, peer=peer)
    assert row.id is not None
    if not _looks_like_hl7(raw):
        return _reject(
            session, row, MalformedMessage("not an HL7 v2 message (no MSH segment at the start)")
        )
    row.content_type = "hl7v2"
    try:
        message = hl7v2.parse_message(hl7v2.decode_message(raw))
        header = hl7v2.message_header(message)
    except InboundMessageError as error:
        return _reject(session, row, error)
    row.sender = f"{header.sending_application}|{header.sending_facility}"
    row.control_id = header.control_id or None
    row.message_type = header.message_type

    if row.control_id:
        original = queries.find_original_message(
            session=session, sender=row.sender, control_id=row.control_id, before_id=row.id
        )
        if original is not None:
            return _duplicate(session, row, original)
    try:
        scan = hl7v2.parse_oru(
            hl7v2.decode_message(raw),
            site_zone=settings.site_zone,
            phone_region=settings.default_phone_region,
        )
    except InboundMessageError as error:
        return _reject(session, row, error)
    row.accession = scan.accession
    row.content_hash = _report_fingerprint(scan)
    same_report = queries.find_same_content(
        session=session, digest=row.content_hash, before_id=row.id
    )
    if same_report is not None and same_report.status != InboxStatus.ERROR:
        return _duplicate(session, row, same_report)
    session.add(row)
    session.commit()
    return Receipt(
        inbox_id=row.id,
        status=row.status,
        ack_code="AA",
        accession=scan.accession,
        control_id=row.control_id,
    )


def _reject(session: Session, row: InboxMessage, error: InboundMessageError) -> Receipt:
    assert row.id is not None
    row.status = (
        InboxStatus.REJECTED if isinstance(error, UnsupportedMessage) else InboxStatus.ERROR
    )
    row.error = error.reason
    row.error_location = error.location
    session.add(row)
    session.commit()
    return Receipt(
        inbox_id=row.id,
        status=row.status,
        ack_code=error.ack_code,
        reason=error.reason,
        location=error.location,
        control_id=row.control_id,
    )


def _duplicate(session: Session, row: InboxMessage, original: InboxMessage) -> Receipt:
    """A resend gets the original's answer and summary; no work is redone."""
    assert row.id is not None
    row.status = InboxStatus.DUPLICATE
    row.duplicate_of_id = original.id
    row.accession = original.accession
    row.summary = original.summary
    row.error = original.error
    row.error_location = original.error_location
    session.add(row)
    session.commit()
    ack_code = {InboxStatus.REJECTED: "AR", InboxStatus.ERROR: "AE"}.get(original.status, "AA")
    return Receipt(
        inbox_id=row.id,
        status=row.status,
        ack_code=ack_code,
        reason=original.error or "",
        location=original.error_location,
        accession=original.accession,
        control_id=row.control_id,
        duplicate_of=original.id,
    )
