"""Prefect's environment, prepared before Prefect is imported.

Prefect reads its settings (PREFECT_HOME, the local server's startup timeout, telemetry) once,
when it is first imported, so the defaults below must be in the environment before any module
imports it. `followup.cli` imports this module first; values already set (a configured server,
a test's throwaway home) win.
"""

from __future__ import annotations

import os

from followup.settings import PROJECT_ROOT

# Defaults for running Prefect from the `followup` command without a configured server: a
# temporary local server whose first start (migrating its own SQLite) can take a while on a
# cold machine, state kept under var/, and no telemetry attempts from an offline clinic network.
PREFECT_DEFAULTS = {
    "PREFECT_HOME": str(PROJECT_ROOT / "var" / "prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def prepare_prefect_environment() -> None:
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


prepare_prefect_environment()
