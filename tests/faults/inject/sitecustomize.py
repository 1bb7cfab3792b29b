"""Test-only fault injection into the processes of a `followup serve` started by tests/faults.

This directory goes on the PYTHONPATH of the engine subprocess, together with
FOLLOWUP_FAULTS_DIR; the flow-run processes its runner starts inherit both. The engine knows
nothing of it: when Python imports one of the modules below, the function named is wrapped so
that the process kills itself with SIGKILL (no cleanup, no `finally`, as the OOM killer or a
power cut would) at one point, once per marker file created in FOLLOWUP_FAULTS_DIR:

* `followup.gateway.mllp._write`: the gateway dies after intake committed the inbox row and
  before the ACK is written, for a message whose ACK carries KILL_BEFORE_ACK (its MSH-10);
* `followup.services.pipeline.schedule_reminders`: a flow-run process dies after the follow-up was
  booked and committed, before the reminders are, in a run for an accession starting with
  KILL_WORKER.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

KILL_BEFORE_ACK = "FAULT-KILL-BEFORE-ACK"
KILL_WORKER = "KILLWORKER"


def _first_time(marker: str) -> bool:
    """True once per marker: the fault fires once, the restarted process runs normally."""
    try:
        (Path(os.environ["FOLLOWUP_FAULTS_DIR"]) / marker).touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap_ack_write(module: Any) -> None:
    write = module._write

    async def write_or_die(writer: Any, answer: bytes, peer: str) -> None:
        if KILL_BEFORE_ACK.encode() in answer and _first_time("killed-before-ack"):
            _die()
        await write(writer, answer, peer)

    module._write = write_or_die


def _wrap_schedule_reminders(module: Any) -> None:
    schedule = module.schedule_reminders

    def schedule_or_die(**kwargs: Any) -> Any:
        from prefect.runtime import flow_run

        accession = str(flow_run.parameters.get("accession", ""))
        if accession.startswith(KILL_WORKER) and _first_time(f"killed-worker-{accession}"):
            _die()
        return schedule(**kwargs)

    module.schedule_reminders = schedule_or_die


_WRAPPERS: dict[str, Callable[[Any], None]] = {
    "followup.gateway.mllp": _wrap_ack_write,
    "followup.services.pipeline": _wrap_schedule_reminders,
}


class _WrapAfterImport(MetaPathFinder):
    """Finds the module with the other finders, then wraps it once its code has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        wrap = _WRAPPERS.get(fullname)
        if wrap is None:
            return None
        others = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for f in others if (s := f.find_spec(fullname, path, target))), None)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            wrap(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("FOLLOWUP_FAULTS_DIR"):
    sys.meta_path.insert(0, _WrapAfterImport())
