"""Prefect's floor for bench_e2e.py: an empty flow, async like scan-completed (a sync flow
pays about a second at exit for its heartbeat thread), fired by an event trigger of the same
kind and served by the same runner. It imports nothing but Prefect."""

from __future__ import annotations

from prefect import flow


@flow(name="bench-floor", flow_run_name="floor-{marker}", log_prints=False)
async def floor(marker: str) -> str:
    return marker
