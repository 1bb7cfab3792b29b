"""The receiving edges: the MLLP listener (HL7 v2), the HTTP app (FHIR R4) and `serve`.

The listeners never import Prefect: what to do after an accepted message is injected as an
`on_accepted(receipt)` callback (the event emitter in flows/events.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from followup.services.intake import Receipt

OnAccepted = Callable[[Receipt], None]
_T = TypeVar("_T")


@lru_cache(maxsize=8)
def _sqlite_writer(database_url: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")


async def in_database_thread(
    database_url: str, function: Callable[..., _T], *args: Any, **kwargs: Any
) -> _T:
    """Run blocking database work off the event loop.

    On SQLite all of a process's gateway writes go through one thread: SQLite has one writer
    at a time, and a writer that finds the database locked sleeps in growing steps (up to
    100 ms), which made p99 ACK latency ten times the median with four concurrent senders.
    Queued in one thread, each write waits only for the ones before it. PostgreSQL takes
    concurrent writers, so it gets the loop's default thread pool.
    """
    loop = asyncio.get_running_loop()
    executor = (
        _sqlite_writer(database_url)
        if make_url(database_url).get_backend_name() == "sqlite"
        else None
    )
    return await loop.run_in_executor(executor, partial(function, *args, **kwargs))
