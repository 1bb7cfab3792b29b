"""The audit trail: one row per action, written in the caller's transaction.

Its own module because every other query module writes to it (models/queries.py and the EHR
outbox's queries among them), and neither should import the other for it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, SQLModel

import models.tables  # noqa: F401  (registers the audit_event table on the metadata)
from models.types import utcnow

_NEW_AUDIT_EVENT = insert(SQLModel.metadata.tables["audit_event"])


def audit(
    *,
    session: Session,
    actor: str,
    action: str,
    entity: str,
    entity_id: int | None,
    detail: dict[str, Any] | None = None,
) -> None:
    # A Core insert: the ORM unit of work costs more than the row (booking writes several).
    session.execute(
        _NEW_AUDIT_EVENT,
        {
            "at": utcnow(),
            "actor": actor,
            "action": action,
            "entity": entity,
            "entity_id": entity_id,
            "detail": detail or {},
        },
    )
