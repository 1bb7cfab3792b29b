"""Flows the warm-worker tests deploy: one that waits (to be killed or cancelled while
running), one whose blocking step outlives its timeout, and one that returns at once."""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
from prefect import flow


@flow(name="warm-test-wait")
async def wait(seconds: float = 600) -> None:
    await anyio.sleep(seconds)


@flow(name="warm-test-hang", timeout_seconds=2)
async def hang() -> None:
    # As a scan's database step that never returns: blocking, in a thread (scan_completed).
    await anyio.to_thread.run_sync(time.sleep, 60, abandon_on_cancel=True)


@flow(name="warm-test-quick")
async def quick() -> str:
    return "done"


@flow(name="warm-test-sync")
def sync_flow() -> None:
    time.sleep(0)
