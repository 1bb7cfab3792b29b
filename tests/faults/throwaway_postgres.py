"""A PostgreSQL cluster of the test's own (initdb on a free port), so a fault test can stop and
restart the database under load without disturbing anything else on the machine.

The cluster runs as the `postgres` system user when the tests run as root (PostgreSQL refuses
to run as root), listens on 127.0.0.1 only, trusts local connections, and is removed at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _server_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    def __init__(self, binaries: Path, root: Path) -> None:
        """`root` must be reachable by the postgres user (not under pytest's 0700 folders)."""
        self.binaries = binaries
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(root, "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E",
            "UTF8",
        )  # fmt: skip

    def _run(self, tool: str, *arguments: str) -> None:
        subprocess.run(
            [*self._as_postgres, str(self.binaries / tool), *arguments],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        # With a log file, so the server does not hold the pipes this run reads to their end.
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
            "start",
        )  # fmt: skip
        self.running = True

    def stop(self) -> None:
        """A fast shutdown, as a restart by an operator or a failover does it: connections
        are cut, open transactions rolled back."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.running = False


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    binaries = _server_binaries()
    if binaries is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL's initdb is not installed; .ci/run installs it")
        pytest.skip("PostgreSQL server binaries (initdb) not installed")
    root = Path(tempfile.mkdtemp(prefix="followup-pg-"))
    try:
        cluster = Cluster(binaries, root)
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running:
                cluster.stop()
    finally:
        shutil.rmtree(root)
