"""Queries of the RIS gateway: the inbox sweep and what orders and ADT messages update.

Keyword-only functions taking a session; the caller owns the transaction (as in queries.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from followup.ris.updates import ORDER_TYPES as ORDER_MESSAGE_TYPES
from followup.ris.updates import RisUpdate
from models import queries
from models.tables import ImagingStudy, InboxMessage, InboxStatus, Patient
from models.types import utcnow


def store_message(
    *,
    session: Session,
    raw: bytes,
    source: str,
    peer: str | None,
    content_type: str,
    sender: str | None,
    control_id: str | None,
    message_type: str | None,
) -> InboxMessage:
    """Persist the raw bytes with what the envelope says, and commit at once.

    `queries.store_inbox_message` with the header fields in the same commit: the duplicate
    check of a concurrent copy must see them, and a commit is most of the gateway's latency.
    """
    row = InboxMessage(
        raw=raw,
        source=source,
        peer=peer,
        content_type=content_type,
        content_hash=queries.content_hash(raw),
        sender=sender,
        control_id=control_id,
        message_type=message_type,
    )
    session.add(row)
    session.commit()
    return row


def original_message(
    *, session: Session, sender: str, control_id: str, before_id: int
) -> InboxMessage | None:
    """The first earlier message with the same sender and MSH-10 (the HL7 idempotency key).

    Same answer as `queries.find_original_message`, but the rows are found through the MSH-10
    index alone and the sender is compared on those few: given both single-column indexes,
    SQLite picks the one on sender and walks every message that sender ever sent, so the
    check (and the ACK) slowed down with each message received.
    """
    candidates = session.exec(
        select(InboxMessage)
        .where(
            InboxMessage.control_id == control_id,
            col(InboxMessage.id) < before_id,
            InboxMessage.status != InboxStatus.DUPLICATE,
        )
        .order_by(col(InboxMessage.id))
    )
    return next((row for row in candidates if row.sender == sender), None)


def unclaimed_messages(
    *, session: Session, received_before: datetime, limit: int
) -> Sequence[InboxMessage]:
    """Accepted messages no flow run has claimed yet, oldest first."""
    return session.exec(
        select(InboxMessage)
        .where(
            InboxMessage.status == InboxStatus.RECEIVED,
            col(InboxMessage.received_at) < received_before,
        )
        .order_by(col(InboxMessage.id))
        .limit(limit)
    ).all()


def report_status(*, session: Session, accession: str) -> str | None:
    """The result status (F, P, C, X) of the study's current report, None before any."""
    return session.exec(
        select(ImagingStudy.report_status).where(ImagingStudy.accession == accession)
    ).first()


def apply_ris_update(*, session: Session, update: RisUpdate) -> list[str]:
    """Write what an order or ADT message carries; returns the names of what changed.

    A field the message leaves empty keeps its stored value: an ADT without a phone must not
    erase the number the previous message gave.
    """
    changed: list[str] = []
    patient = session.exec(select(Patient).where(Patient.mrn == update.mrn)).first()
    if patient is None:
        patient = Patient(mrn=update.mrn)
        changed.append("patient")
    values = {
        "family_name": update.patient_name.family,
        "given_name": update.patient_name.given,
        "phone_e164": update.phone_e164,
        "language": update.language,
    }
    for name, value in values.items():
        if value and getattr(patient, name) != value:
            setattr(patient, name, value)
            changed.append(name)
    if changed:
        patient.updated_at = utcnow()
        session.add(patient)
    study = (
        queries.study_by_accession(session=session, accession=update.accession)
        if update.accession
        else None
    )
    ref = update.ordering_provider
    if study is not None and ref is not None and study.ordering_provider_key != ref.identifier:
        provider = queries.find_provider(session=session, ref=ref)
        study.ordering_provider_key = ref.identifier
        study.ordering_provider_id = provider.id if provider else None
        study.updated_at = utcnow()
        session.add(study)
        changed.append("ordering_provider")
    session.flush()
    return changed


def ordered_by(*, session: Session, accession: str) -> str | None:
    """The ordering provider key the latest order for this accession named, if any.

    A result without OBR-16/ORC-12/PV1 providers can fall back on its order (stored by
    intake in the order's inbox summary as "ordering_provider").
    """
    orders = session.exec(
        select(InboxMessage)
        .where(
            InboxMessage.accession == accession,
            col(InboxMessage.message_type).in_(ORDER_MESSAGE_TYPES),
            InboxMessage.status == InboxStatus.PROCESSED,
        )
        .order_by(col(InboxMessage.id).desc())
    )
    for order in orders:
        key = (order.summary or {}).get("ordering_provider")
        if key:
            return str(key)
    return None
