"""Queries of the RIS gateway: duplicates, run claims and the inbox sweep, and what orders and
ADT messages update.

Keyword-only functions taking a session; the caller owns the transaction (as in queries.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy
from sqlalchemy import ColumnElement, CursorResult, bindparam, func, or_, text, update
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
    content_digest: str | None,
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
        content_digest=content_digest,
    )
    session.add(row)
    session.commit()
    return row


# What an accepted result's row holds in content_hash once judged (the raw bytes' hash before).
REPORT_FINGERPRINT_PREFIX = "report:"
# Namespaces of the two idempotency keys' advisory locks (pg_advisory_xact_lock(int, int)).
_SENDER_CONTROL_ID_LOCK = 1
_REPORT_LOCK = 2


@dataclass(frozen=True, slots=True)
class JudgedMessage:
    """What a resend needs of the message it repeats: its answer and whether a run took it."""

    id: int
    status: str
    accession: str | None
    summary: dict[str, Any] | None
    error: str | None
    error_location: str | None
    claimed_at: datetime | None
    content_digest: str | None  # None for rows stored before digests were kept


_JUDGED_COLUMNS = (
    col(InboxMessage.id),
    col(InboxMessage.status),
    col(InboxMessage.accession),
    col(InboxMessage.summary),
    col(InboxMessage.error),
    col(InboxMessage.error_location),
    col(InboxMessage.claimed_at),
    col(InboxMessage.content_digest),
)


def lock_idempotency_keys(
    *, session: Session, sender: str | None, control_id: str | None, fingerprint: str | None
) -> None:
    """Hold the locks of a message's idempotency keys until the transaction ends.

    The transaction must be the one that records the message's judgement: of copies judged
    at once on several connections (or gateway hosts) each then sees the judgements committed
    before its own, so the first judged is the original and every later one its duplicate,
    whatever ids the copies got. Keys are the HL7 one (sender, MSH-10) and the report
    fingerprint (accession, status, text); both are taken in one statement, always in that
    order, so two judges never wait on each other in a cycle.
    """
    keys = []
    if sender is not None and control_id is not None:
        keys.append((_SENDER_CONTROL_ID_LOCK, f"{sender}\x1f{control_id}"))
    if fingerprint is not None:
        keys.append((_REPORT_LOCK, fingerprint))
    if not keys:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        calls = ", ".join(
            f"pg_advisory_xact_lock(:namespace{n}, :key{n})" for n in range(len(keys))
        )
        parameters: dict[str, int] = {}
        for n, (namespace, key) in enumerate(keys):
            digest = hashlib.sha256(key.encode()).digest()
            parameters[f"namespace{n}"] = namespace
            parameters[f"key{n}"] = int.from_bytes(digest[:4], "big", signed=True)
        session.execute(text(f"SELECT {calls}"), parameters)
        return
    # SQLite has one lock, the database's write lock. pysqlite opens a transaction only at
    # the first write, so the reads before it would not be covered: BEGIN IMMEDIATE takes the
    # lock now (waiting up to busy_timeout), for every key at once.
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    if not dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _earliest_matching(
    *conditions: ColumnElement[bool], first: ColumnElement[Any] | None = None
) -> sqlalchemy.Select[Any]:
    # Columns, not the entity: the raw bytes (up to megabytes) are not needed to answer.
    order = (col(InboxMessage.id),) if first is None else (first, col(InboxMessage.id))
    return (
        sqlalchemy.select(*_JUDGED_COLUMNS)
        .where(col(InboxMessage.id) != bindparam("inbox_id"), *conditions)
        .order_by(*order)
        .limit(1)
    )


# Built once: composing the expressions took longer than running them (gateway profile).
# Of the rows under one (sender, MSH-10) the one with the same content comes first (a resend);
# any other means the id was reused.
_ORIGINAL_MESSAGE = _earliest_matching(
    col(InboxMessage.sender) == bindparam("sender"),
    col(InboxMessage.control_id) == bindparam("control_id"),
    col(InboxMessage.status) != InboxStatus.DUPLICATE,
    # Judged: judging moves a row out of `received`, except an accepted result, which gets
    # its report fingerprint instead of the raw bytes' hash.
    or_(
        col(InboxMessage.status) != InboxStatus.RECEIVED,
        col(InboxMessage.content_hash).startswith(REPORT_FINGERPRINT_PREFIX),
    ),
    first=sqlalchemy.case(
        (
            or_(
                col(InboxMessage.content_digest) == bindparam("content_digest"),
                col(InboxMessage.content_digest).is_(None),
            ),
            0,
        ),
        else_=1,
    ),
)
_SAME_REPORT = _earliest_matching(
    col(InboxMessage.content_hash) == bindparam("fingerprint"),
    col(InboxMessage.status).not_in((InboxStatus.DUPLICATE, InboxStatus.ERROR)),
)


def original_message(
    *, session: Session, sender: str, control_id: str, content_digest: str | None, inbox_id: int
) -> JudgedMessage | None:
    """The message with the same sender and MSH-10 (the HL7 idempotency key) that was judged
    not a duplicate, if any, found through the (sender, control_id) index: the one with the
    same content digest when there is one (the caller compares the digests to tell a resend
    from a reused id). Call it under `lock_idempotency_keys`. A row stored but not judged yet
    is not an original: its answer is not known.
    """
    found = session.execute(
        _ORIGINAL_MESSAGE,
        {
            "sender": sender,
            "control_id": control_id,
            "content_digest": content_digest,
            "inbox_id": inbox_id,
        },
    ).first()
    return JudgedMessage(*found) if found is not None else None


def same_report(*, session: Session, fingerprint: str, inbox_id: int) -> JudgedMessage | None:
    """The accepted message with the same report fingerprint (accession, status, text), if
    any; a copy whose run failed (error) is not one, so a resend runs again. Call it under
    `lock_idempotency_keys`."""
    found = session.execute(
        _SAME_REPORT, {"fingerprint": fingerprint, "inbox_id": inbox_id}
    ).first()
    return JudgedMessage(*found) if found is not None else None


def unclaimed_messages(
    *, session: Session, received_before: datetime, limit: int
) -> Sequence[InboxMessage]:
    """Accepted messages no flow run has claimed yet, oldest first."""
    return session.exec(
        select(InboxMessage)
        .where(
            InboxMessage.status == InboxStatus.RECEIVED,
            col(InboxMessage.content_hash).startswith(REPORT_FINGERPRINT_PREFIX),
            col(InboxMessage.received_at) < received_before,
        )
        .order_by(col(InboxMessage.id))
        .limit(limit)
    ).all()


def still_received(*, session: Session, inbox_ids: Sequence[int]) -> set[int]:
    """Those of these rows still waiting for a run (`received`) now."""
    found = session.exec(
        select(InboxMessage.id).where(
            col(InboxMessage.id).in_(inbox_ids), InboxMessage.status == InboxStatus.RECEIVED
        )
    ).all()
    return {inbox_id for inbox_id in found if inbox_id is not None}


def stranded_messages(
    *, session: Session, received_before: datetime, limit: int
) -> Sequence[InboxMessage]:
    """Messages stored but never judged (their gateway stopped in between), oldest first."""
    return session.exec(
        select(InboxMessage)
        .where(
            InboxMessage.status == InboxStatus.RECEIVED,
            ~col(InboxMessage.content_hash).startswith(REPORT_FINGERPRINT_PREFIX),
            col(InboxMessage.received_at) < received_before,
        )
        .order_by(col(InboxMessage.id))
        .limit(limit)
    ).all()


def _claim_time() -> ColumnElement[datetime]:
    # A row left `processing` before claims were recorded counts from its arrival.
    return func.coalesce(col(InboxMessage.claimed_at), col(InboxMessage.received_at))


# A failed row may be taken by a person's re-run of the flow run in the Prefect UI as well as
# by sweep-inbox, which gives it back to `received` first.
CLAIMABLE_STATUSES = (InboxStatus.RECEIVED, InboxStatus.RETRY, InboxStatus.NEEDS_ACTION)


def claim_message(
    *, session: Session, inbox_id: int, now: datetime, stale_before: datetime
) -> bool:
    """Take the row for one flow run: True when this run holds it now.

    One conditional UPDATE, so of two runs only one wins: a row waiting for a run (received,
    or failed and due again) is taken, and so is one whose run died (claimed before
    `stale_before`); a row under a live lease, or finished (processed, held, refused), is
    refused, so a stray or repeated run never books and texts a second time. On PostgreSQL
    the loser waits for the winner's commit and then sees its claim; SQLite serialises the
    writes.
    """
    result = session.execute(
        update(InboxMessage)
        .where(
            col(InboxMessage.id) == inbox_id,
            or_(
                col(InboxMessage.status).in_(CLAIMABLE_STATUSES),
                (col(InboxMessage.status) == InboxStatus.PROCESSING)
                & (_claim_time() < stale_before),
            ),
        )
        .values(status=InboxStatus.PROCESSING, claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    loaded = session.identity_map.get(session.identity_key(InboxMessage, inbox_id))
    if loaded is not None:
        session.expire(loaded, ["status", "claimed_at"])
    return cast(CursorResult[Any], result).rowcount == 1


@dataclass(frozen=True, slots=True)
class Submission:
    """A row to (re-)submit to the flow, and the claim it replaces (None: never claimed)."""

    inbox_id: int
    accession: str
    previous_claim: datetime | None


def release_stale_claims(
    *, session: Session, claimed_before: datetime, limit: int
) -> list[Submission]:
    """Give rows whose run died (`processing`, claimed before `claimed_before`) back to
    `received`, each by a compare-and-set on the claim seen: of two sweeps that find the same
    row only one releases it, and only that one submits it again. Oldest first."""
    return _give_back_all(
        session,
        InboxStatus.PROCESSING,
        _claim_time() < claimed_before,
        audited_as="inbox.released",
        limit=limit,
    )


def release_due_retries(*, session: Session, now: datetime, limit: int) -> list[Submission]:
    """Give `retry` rows whose next attempt is due back to `received`, by the same
    compare-and-set on the failed attempt's claim, so the event id derived from that claim
    is new for each attempt. Oldest first."""
    return _give_back_all(
        session,
        InboxStatus.RETRY,
        col(InboxMessage.next_attempt_at) <= now,
        audited_as="inbox.retried",
        limit=limit,
    )


def _give_back_all(
    session: Session,
    status: InboxStatus,
    condition: ColumnElement[bool],
    *,
    audited_as: str,
    limit: int,
) -> list[Submission]:
    found = session.exec(
        select(InboxMessage.id, InboxMessage.accession, InboxMessage.claimed_at)
        .where(InboxMessage.status == status, condition)
        .order_by(col(InboxMessage.id))
        .limit(limit)
    ).all()
    released: list[Submission] = []
    for inbox_id, accession, claimed_at in found:
        assert inbox_id is not None
        if not _give_back(session, inbox_id, status, claimed_at):
            continue
        queries.audit(
            session=session,
            actor="sweep-inbox",
            action=audited_as,
            entity="inbox_message",
            entity_id=inbox_id,
            detail={"claimed_at": claimed_at.isoformat() if claimed_at else None},
        )
        released.append(Submission(inbox_id, accession or "", claimed_at))
    return released


def report_status(*, session: Session, accession: str) -> str | None:
    """The result status (F, P, C, X) of the study's current report, None before any."""
    return session.exec(
        select(ImagingStudy.report_status).where(ImagingStudy.accession == accession)
    ).first()


def result_awaiting_run(*, session: Session, accession: str, before_id: int) -> bool:
    """Whether an earlier message for the accession waits for, or is in, its flow run."""
    return (
        session.exec(
            select(InboxMessage.id).where(
                InboxMessage.accession == accession,
                col(InboxMessage.id) < before_id,
                col(InboxMessage.status).in_((InboxStatus.RECEIVED, InboxStatus.PROCESSING)),
            )
        ).first()
        is not None
    )


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


def rerun_message(*, session: Session, inbox_id: int, by: str) -> Submission:
    """A person's re-run of a failed row after fixing its cause: back to `received` with its
    attempts reset, audited with who asked. LookupError for an unknown id, ValueError for a
    row that did not fail (re-running a processed one would book and text twice)."""
    row = session.get(InboxMessage, inbox_id)
    if row is None:
        raise LookupError(f"no inbox message {inbox_id}")
    if row.status not in (InboxStatus.RETRY, InboxStatus.NEEDS_ACTION):
        raise ValueError(
            f"inbox message {inbox_id} is {row.status}: only failed messages (retry, "
            "needs_action) are re-run"
        )
    if not _give_back(session, inbox_id, row.status, row.claimed_at, reset_attempts=True):
        raise ValueError(f"inbox message {inbox_id} changed meanwhile; look again")
    queries.audit(
        session=session,
        actor=by,
        action="inbox.rerun",
        entity="inbox_message",
        entity_id=inbox_id,
        detail={"accession": row.accession, "was": row.status, "error": row.error},
    )
    return Submission(inbox_id, row.accession or "", row.claimed_at)


def _give_back(
    session: Session,
    inbox_id: int,
    status: str,
    claimed_at: datetime | None,
    *,
    reset_attempts: bool = False,
) -> bool:
    same_claim = (
        col(InboxMessage.claimed_at).is_(None)
        if claimed_at is None
        else col(InboxMessage.claimed_at) == claimed_at
    )
    values: dict[str, Any] = {"status": InboxStatus.RECEIVED, "next_attempt_at": None}
    if reset_attempts:
        values["attempts"] = 0
    result = session.execute(
        update(InboxMessage)
        .where(col(InboxMessage.id) == inbox_id, col(InboxMessage.status) == status, same_claim)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    loaded = session.identity_map.get(session.identity_key(InboxMessage, inbox_id))
    if loaded is not None:
        session.expire(loaded)
    return cast(CursorResult[Any], result).rowcount == 1


def messages_by_status(
    *, session: Session, statuses: Sequence[str], limit: int
) -> Sequence[InboxMessage]:
    """Rows in these states, newest first (the CLI's `inbox list`)."""
    query = select(InboxMessage).order_by(col(InboxMessage.id).desc()).limit(limit)
    if statuses:
        query = query.where(col(InboxMessage.status).in_(statuses))
    return session.exec(query).all()
