"""The `ris.scan.completed` event (design contract) that starts the scan-completed flow, and
`followup.escalation.opened`, which refreshes the schedulers' tables (daily-worklist).

The event id is derived from the inbox row (uuid5), so the same row always yields the same
event: a resend of a still unclaimed message announces the original's row under the
original's id, and Prefect's event deduplication drops the copy. A row put back in the queue
by a person (`followup inbox rerun`) is announced under an id derived from its last claim.
The inbox row, not the event, is the durable record (Prefect holds accepted events in memory
until processed, and a run its trigger failed to create is not tried again): sweep-inbox
creates a run itself for any row left waiting that no live run holds (flows/sweep_inbox.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID, uuid5

from prefect.events import emit_event

from followup.services.intake import Receipt

EVENT = "ris.scan.completed"
# A patient's text opened or joined a task (prefect.yaml triggers daily-worklist on it, so the
# schedulers' tables show a red flag at once, not at the next schedule).
TASK_OPENED_EVENT = "followup.escalation.opened"
SCAN_FLOW = "scan-completed"  # the flow the event starts (prefect.yaml's trigger)
# Fixed forever: changing it would let a re-emitted event start a second run.
NAMESPACE = UUID("6f1c2a4e-3b7d-5e8f-9a0b-1c2d3e4f5a6b")

logger = logging.getLogger(__name__)


def event_id(inbox_id: int, accession: str, previous_claim: datetime | None = None) -> UUID:
    """The row's event id; a row submitted again after a claim (`previous_claim`) gets
    another, derived from that claim: Prefect would drop a repeat of the first for 30 minutes
    as already seen. The accession is part of it because row ids alone repeat when two
    application databases (two sites, or one rebuilt) share a Prefect server, and Prefect would
    drop the second site's event as a repeat of the first's."""
    row = f"inbox:{inbox_id}:{accession}"
    if previous_claim is None:
        return uuid5(NAMESPACE, row)
    return uuid5(NAMESPACE, f"{row}:after:{previous_claim.astimezone(UTC).isoformat()}")


def emit_for_inbox(
    *, inbox_id: int, accession: str, previous_claim: datetime | None = None
) -> bool:
    """Emit the event for one accepted inbox row; False when Prefect took nothing.

    `emit_event` queues the event for a background sender and returns None when no Prefect
    API is configured; the row then waits for the sweep.
    """
    emitted = _emit_row_event(
        EVENT, inbox_id=inbox_id, accession=accession, previous_claim=previous_claim
    )
    if not emitted:
        logger.warning(
            "no event for inbox %d (%s): Prefect API not configured", inbox_id, accession
        )
    return emitted


def _emit_row_event(
    name: str, *, inbox_id: int, accession: str, previous_claim: datetime | None = None
) -> bool:
    """An event about one inbox row, with the row's own event id; False when no Prefect API
    is configured."""
    emitted = emit_event(
        event=name,
        resource={
            "prefect.resource.id": f"ris.study.{accession}",
            "prefect.resource.name": accession,
            "followup.inbox-id": str(inbox_id),
        },
        payload={"inbox_id": inbox_id, "accession": accession},
        id=event_id(inbox_id, accession, previous_claim),
    )
    return emitted is not None


SWEPT_EVENT = "followup.inbox.swept"


def mark_swept(*, inbox_id: int, accession: str) -> bool:
    """Take the row's own event id for a run sweep-inbox creates itself. Prefect drops an
    event whose id it has seen, whatever its name, so a late copy of the gateway's event (a
    resend after Prefect came back) no longer starts a second run; no trigger matches this
    event. False when no Prefect API is configured."""
    return _emit_row_event(SWEPT_EVENT, inbox_id=inbox_id, accession=accession)


REVIEW_EVENT = "followup.review.needed"


def emit_review_needed(*, accession: str, task_ids: list[int]) -> bool:
    """Ask for a review run of the study (prefect.yaml's review-scan trigger). The id follows
    the open tasks, so a repeat for the same tasks is dropped and new tasks ask again; lost,
    the tasks still wait on the worklist."""
    emitted = emit_event(
        event=REVIEW_EVENT,
        resource={
            "prefect.resource.id": f"ris.study.{accession}",
            "prefect.resource.name": accession,
        },
        payload={"accession": accession},
        id=uuid5(NAMESPACE, f"review:{accession}:{sorted(task_ids)}"),
    )
    return emitted is not None


def emit_scan_completed(receipt: Receipt) -> None:
    """The gateway's `on_accepted` callback: the event of the row a run should take, which
    for a resend of a still unclaimed message is the original's, under the original's id."""
    assert receipt.accession is not None  # an accepted result always has its accession
    assert receipt.run_inbox_id is not None  # on_accepted is called when should_process
    emit_for_inbox(inbox_id=receipt.run_inbox_id, accession=receipt.accession)


def emit_tasks_opened(task_ids: Sequence[int]) -> list[UUID]:
    """The Twilio webhook's `on_tasks_opened` callback: one event per task a text opened or
    joined (ids only: the event is visible in the Prefect UI); the ids of those emitted."""
    emitted_ids: list[UUID] = []
    for task_id in task_ids:
        emitted = emit_event(
            event=TASK_OPENED_EVENT,
            resource={"prefect.resource.id": f"followup.escalation.{task_id}"},
            payload={"escalation_id": task_id},
        )
        if emitted is None:
            logger.warning(
                "no event for escalation %d: Prefect API not configured; the worklist "
                "refreshes on its schedule",
                task_id,
            )
        else:
            emitted_ids.append(emitted.id)
    return emitted_ids
