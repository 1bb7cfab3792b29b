"""The `ris.scan.completed` event (design contract) that starts the scan-completed flow.

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
from datetime import UTC, datetime
from uuid import UUID, uuid5

from prefect.events import emit_event

from followup.intake import Receipt

EVENT = "ris.scan.completed"
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
    emitted = emit_event(
        event=EVENT,
        resource={
            "prefect.resource.id": f"ris.study.{accession}",
            "prefect.resource.name": accession,
            "followup.inbox-id": str(inbox_id),
        },
        payload={"inbox_id": inbox_id, "accession": accession},
        id=event_id(inbox_id, accession, previous_claim),
    )
    if emitted is None:
        logger.warning(
            "no event for inbox %d (%s): Prefect API not configured", inbox_id, accession
        )
    return emitted is not None


def emit_scan_completed(receipt: Receipt) -> None:
    """The gateway's `on_accepted` callback: the event of the row a run should take, which
    for a resend of a still unclaimed message is the original's, under the original's id."""
    assert receipt.accession is not None  # an accepted result always has its accession
    assert receipt.run_inbox_id is not None  # on_accepted is called when should_process
    emit_for_inbox(inbox_id=receipt.run_inbox_id, accession=receipt.accession)
