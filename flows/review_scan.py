"""review-scan: a scan the engine could not finish alone waits for a person, as a form in the
Prefect UI, then carries on.

Started by the `followup.review.needed` event scan-completed emits when a scan needs a
person
(a report to read, no slot, an unknown ordering provider, no phone). The run is suspended, not
paused: it holds no worker or process while it waits (Prefect runs it again from the top once
the form is sent, and `suspend_flow_run` then returns the answer). It runs on the `followup`
pool, apart from scan-completed's warm worker and its concurrency limit, so reviews waiting
for days never take a scan's place. What to offer and what the answer does are
`followup.services.review`'s; the flow only sequences them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import pydantic
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput

from flows.daily_worklist import daily_worklist
from followup.core.rules import SPECIALTIES
from followup.services import review
from followup.settings import get_settings
from models.db import session_scope

Specialty = Literal["neurology", "orthopedics", "pain_management", "rheumatology"]
Urgency = Literal["routine", "urgent", "emergent"]
assert set(Specialty.__args__) == SPECIALTIES  # type: ignore[attr-defined]
REVIEW_KEY = "review"


class ReviewForm(RunInput):
    """The fields the UI renders; the choices of `action` and `slot` are set per case."""

    action: str = pydantic.Field(title="What to do")
    slot: str = pydantic.Field(title="Slot to book (for 'book the chosen slot')")
    urgency: Urgency = pydantic.Field(title="Urgency")
    referrals: list[Specialty] = pydantic.Field(title="Referrals")
    by: str = pydantic.Field(title="Your name or user id", min_length=1)
    note: str = pydantic.Field(default="", title="Note (no diagnosis)")


def review_form(case: review.ReviewCase, description: str) -> type[ReviewForm]:
    """The form for this case: its choices as drop-downs, the engine's reading as defaults."""
    slots = [slot.label(get_settings().site_zone) for slot in case.offered] or [review.NO_SLOT]
    if review.NO_SLOT not in slots:
        slots.append(review.NO_SLOT)
    form = pydantic.create_model(
        "ReviewForm",
        __base__=ReviewForm,
        action=(
            str,
            pydantic.Field(
                default=review.BOOK if case.offered else review.CALLED,
                title="What to do",
                json_schema_extra=choices(review.ACTIONS),
            ),
        ),
        slot=(
            str,
            pydantic.Field(
                default=slots[0],
                title="Slot to book (for 'book the chosen slot')",
                json_schema_extra=choices(slots),
            ),
        ),
        urgency=(Urgency, pydantic.Field(default=case.urgency, title="Urgency")),
        referrals=(
            list[Specialty],
            pydantic.Field(default=list(case.referrals), title="Referrals"),
        ),
    )
    form._description = description
    return form


def choices(values: Sequence[str]) -> dict[str, Any]:
    """A drop-down in the UI's form; the answer is checked when it is applied (a slot offered
    when the run stopped may be gone when it resumes)."""
    return {"enum": list(values)}


@task(name="open-review", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def open_review(accession: str) -> tuple[review.ReviewCase, str] | None:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        case = review.open_review(session=session, accession=accession, settings=settings)
    return None if case is None else (case, review.describe(case, settings.site_zone))


@task(name="apply-review", cache_policy=NO_CACHE)
def apply_review(accession: str, answer: review.ReviewAnswer) -> review.ReviewOutcome:
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        return review.apply_review(
            session=session, accession=accession, answer=answer, settings=settings
        )


@flow(name="review-scan", flow_run_name="review-{accession}", log_prints=False)
async def review_scan(accession: str) -> str:
    """Wait for a person's review of scan `accession`, then book or close it as they say."""
    case = open_review(accession)
    if case is None:
        return f"{accession}: nothing waits for a person"
    answer: Any = await suspend_flow_run(
        wait_for_input=cast(Any, review_form(*case)),
        key=REVIEW_KEY,
        timeout=get_settings().review_wait_hours * 3600,
    )
    outcome = apply_review(
        accession,
        review.ReviewAnswer(
            action=answer.action,
            by=answer.by,
            urgency=answer.urgency,
            referrals=tuple(answer.referrals),
            slot=answer.slot,
            note=answer.note,
        ),
    )
    get_run_logger().info("%s", outcome.said)
    await daily_worklist()
    return outcome.said
