"""Review runs as a deployment runs them: a flow run of the review-scan deployment executed in
this process by Prefect's own engine (`run_flow`, as a worker does), suspended and resumed on
the real Prefect API."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Pause
from prefect.flow_engine import run_flow
from prefect.states import State


async def create_review_run(accession: str) -> FlowRun:
    """A review-scan flow run from its deployment (suspending needs one), as the trigger
    creates it."""
    from flows.review_scan import review_scan

    deployment = await review_scan.ato_deployment(name="review-scan")
    deployment_id = await deployment.aapply()
    async with get_client() as client:
        return await client.create_flow_run_from_deployment(
            deployment_id, parameters={"accession": accession}
        )


async def execute(flow_run_id: UUID) -> State[Any] | None:
    """Run the flow run once; None when it suspended itself (waiting for its form)."""
    from flows.review_scan import review_scan

    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
    try:
        state: State[Any] = await run_flow(review_scan, flow_run=flow_run, return_type="state")  # type: ignore[misc, arg-type]
    except Pause:
        return None
    return state


async def state_of(flow_run_id: UUID) -> State[Any]:
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
    assert flow_run.state is not None
    return flow_run.state


async def form_of(flow_run_id: UUID) -> tuple[dict[str, Any], str]:
    """The JSON schema the UI renders and the description above it, as the server keeps them."""
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        assert flow_run.state is not None
        keyset = flow_run.state.state_details.run_input_keyset
        assert keyset is not None
        schema = await client.read_flow_run_input(flow_run_id, keyset["schema"])
        description = await client.read_flow_run_input(flow_run_id, keyset["description"])
    import json

    return json.loads(schema), json.loads(description)
