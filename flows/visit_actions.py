"""Schedulers' actions on visits from deployment forms in the Prefect UI: cancel a visit, move
one, block a provider's time. Each is the CLI's own service function, audited as the person
named in `by` (required) with `via: prefect-ui`, and refreshes the worklist tables.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlmodel import Session

from flows.daily_worklist import daily_worklist
from followup.errors import FollowupError
from followup.services import moves, visits
from followup.settings import get_settings
from models import queries
from models.db import session_scope
from models.tables import Appointment
from models.types import utcnow

VIA = "prefect-ui"


class NoSuchProvider(FollowupError):
    """No provider with the NPI given."""


def _who(by: str) -> str:
    if not by.strip():
        raise ValueError("say who acts (by: your name or user id)")
    return by.strip()


def _audit_via(
    session: Session,
    *,
    by: str,
    action: str,
    entity: str,
    entity_id: int | None,
    detail: dict[str, object],
) -> None:
    queries.audit(
        session=session,
        actor=by,
        action=action,
        entity=entity,
        entity_id=entity_id,
        detail={**detail, "via": VIA},
    )


@task(name="cancel-visit", cache_policy=NO_CACHE)
def cancel(appointment_id: int, by: str, reason: str) -> str:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        changed = visits.cancel_visit(
            session=session,
            appointment_id=appointment_id,
            reason=reason,
            settings=settings,
            now=utcnow(),
            actor=by,
        )
        _audit_via(
            session,
            by=by,
            action="ui.visit_cancelled",
            entity="appointment",
            entity_id=appointment_id,
            detail={"reason": reason},
        )
        return f"appointment {appointment_id} {changed.result.appointment.status} by {by}"


@task(name="move-visit", cache_policy=NO_CACHE)
def move(appointment_id: int, by: str, reason: str) -> str:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        previous = session.get(Appointment, appointment_id)
        now = utcnow()
        moved = moves.move_appointment(
            session=session,
            appointment_id=appointment_id,
            reason=reason,
            policy=moves.NothingFits.KEEP,
            settings=settings,
            now=now,
            actor=by,
            after=max(previous.start, now) if previous is not None else now,
        )
        _audit_via(
            session,
            by=by,
            action="ui.visit_moved",
            entity="appointment",
            entity_id=appointment_id,
            detail={"reason": reason},
        )
        if moved.appointment is None:
            return f"appointment {appointment_id} kept: {moved.reason} (task {moved.task_id})"
        start = moved.appointment.start.astimezone(settings.site_zone)
        return (
            f"appointment {appointment_id} moved by {by} to appointment {moved.appointment.id}, "
            f"{start:%a %Y-%m-%d %H:%M %Z}"
        )


@task(name="block-provider-time", cache_policy=NO_CACHE)
def block(npi: str, start: datetime, end: datetime, by: str, reason: str) -> str:
    settings = get_settings()
    zone = settings.site_zone
    start, end = (t if t.tzinfo else t.replace(tzinfo=zone) for t in (start, end))
    with session_scope(settings.database_url) as session:
        provider = queries.provider_by_npi(session=session, npi=npi)
        if provider is None or provider.id is None:
            raise NoSuchProvider(f"no provider with NPI {npi}")
        block = moves.block_provider_time(
            session=session,
            provider_id=provider.id,
            start=start,
            end=end,
            reason=reason,
            settings=settings,
            now=utcnow(),
            actor=by,
        )
        _audit_via(
            session,
            by=by,
            action="ui.provider_time_blocked",
            entity="provider",
            entity_id=provider.id,
            detail={"start": start.isoformat(), "end": end.isoformat(), "reason": reason},
        )
        moved = [m.previous.id for m in block.moves if m.appointment is not None]
        kept = [m.previous.id for m in block.moves if m.appointment is None]
        said = (
            f"{provider.display_name} (NPI {npi}) blocked by {by} "
            f"{start.astimezone(zone):%a %Y-%m-%d %H:%M}–{end.astimezone(zone):%H:%M %Z}: "
            f"{block.slots_blocked} slots"
        )
        if moved:
            said += f"; visits moved: {', '.join(map(str, moved))}"
        if kept:
            said += f"; on the worklist (nothing fits): {', '.join(map(str, kept))}"
        return said


@flow(name="cancel-visit", flow_run_name="cancel-visit-{appointment_id}")
async def cancel_visit(appointment_id: int, by: str, reason: str = "cancelled") -> str:
    """Cancel visit `appointment_id` (its unsent texts too; the freed slot offered on)."""
    said = cancel(appointment_id, _who(by), reason)
    get_run_logger().info("%s", said)
    await daily_worklist()
    return said


@flow(name="move-visit", flow_run_name="move-visit-{appointment_id}")
async def move_visit(appointment_id: int, by: str, reason: str = "patient asked") -> str:
    """Move visit `appointment_id` to the next fitting slot in its window (or escalate)."""
    said = move(appointment_id, _who(by), reason)
    get_run_logger().info("%s", said)
    await daily_worklist()
    return said


@flow(name="block-provider-time", flow_run_name="block-{npi}")
async def block_provider_time(
    npi: str, start: datetime, end: datetime, by: str, reason: str = ""
) -> str:
    """Block provider `npi`'s time from `start` to `end` (site time when no offset)."""
    said = block(npi, start, end, _who(by), reason)
    get_run_logger().info("%s", said)
    await daily_worklist()
    return said
