"""`followup classifier-worker`: the classify task served from one long-lived, warm process.

Every scan-completed run is a new Python process (Prefect's runner and process worker start
one per run). Loading spaCy and medspaCy and building the pipeline there cost about a second
per run, over half of the time from an ACK to the confirmation SMS. This process pays it once
and takes the classify task runs the flows queue on Prefect's task queue (a Prefect task
worker, subscribed over a websocket); the flow-run process then imports no NLP library.

`followup serve` starts it next to its runner; in the scale-out setup it runs beside the
process workers (docs/deploy.md), with FOLLOWUP_CLASSIFIER_WORKER=true in the flows' environment.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from followup.rules import load_rules
from followup.settings import Settings

logger = logging.getLogger(__name__)
PURGE_EVERY_SECONDS = 3600.0


def serve_classifier(settings: Settings, *, stop_with_parent: bool = False) -> None:
    """Build the pipeline, then serve the classify task until SIGTERM or Ctrl-C; with
    `stop_with_parent`, also when the pipe on stdin closes (the parent ended, however)."""
    parent_gone = threading.Event()
    if stop_with_parent:
        watch = threading.Thread(
            target=_stop_when_stdin_closes, args=(parent_gone,), name="parent-watch", daemon=True
        )
        watch.start()
    # The classify runs' log lines stay in this process's log. Sent to the API (each run is
    # filed under its flow run), Prefect 3.9.1's log sender dies in a task worker on its first
    # batch ("The client cannot be started again after closing"): an ERROR a run, lines lost.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    from prefect.settings import get_current_settings
    from prefect.task_worker import serve

    from flows.classify import classify
    from followup import nlp

    # Before subscribing: the first report should not wait for the pipeline to be built.
    nlp.prepare(load_rules(settings.rules_path))
    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    retention = settings.classifier_result_retention_hours * 3600
    _purge(storage, retention)
    purger = threading.Thread(
        target=_purge_periodically,
        args=(storage, retention, parent_gone),
        name="result-purge",
        daemon=True,
    )
    purger.start()
    logger.info("classifier ready; serving the classify task")
    try:
        serve(classify)
    except KeyboardInterrupt:
        if not parent_gone.is_set():
            raise


def purge_stored_results(folder: Path, *, older_than_seconds: float, now: float) -> int:
    """Delete the files in Prefect's local result storage last written more than
    `older_than_seconds` before `now` (epoch seconds); how many were deleted. Prefect keeps
    every classify run's result there and never deletes it."""
    if not folder.is_dir():
        return 0
    purged = 0
    for path in folder.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < now - older_than_seconds:
                path.unlink()
                purged += 1
        except FileNotFoundError:
            continue  # another worker on this host purged it first
    return purged


def _purge_periodically(folder: Path, older_than_seconds: float, stop: threading.Event) -> None:
    while not stop.wait(PURGE_EVERY_SECONDS):
        _purge(folder, older_than_seconds)


def _purge(folder: Path, older_than_seconds: float) -> None:
    try:
        purged = purge_stored_results(
            folder, older_than_seconds=older_than_seconds, now=time.time()
        )
    except OSError:
        # Classification goes on; the files wait for the next round.
        logger.exception("could not purge the stored classify results in %s", folder)
        return
    hours = older_than_seconds / 3600
    logger.info("purged %d stored classify results older than %g h", purged, hours)


def _stop_when_stdin_closes(parent_gone: threading.Event) -> None:
    # The parent holds the write end; the kernel closes it when the parent exits, even by
    # SIGKILL, which no signal handler in the parent could pass on.
    sys.stdin.buffer.read()
    logger.info("the parent process is gone; stopping")
    parent_gone.set()
    # As Ctrl-C, which stops Prefect's task worker cleanly; a normal exit here.
    os.kill(os.getpid(), signal.SIGINT)
