"""A running MLLP listener on an ephemeral 127.0.0.1 port, and small MLLP client helpers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlmodel import col, select

from followup.gateway.mllp import MLLPListener
from followup.services.intake import Receipt
from followup.settings import get_settings
from models.db import session_scope
from models.tables import InboxMessage

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def frame(message: bytes) -> bytes:
    return VT + message + FS + CR


def segments(ack: bytes) -> dict[str, list[str]]:
    """An ACK's segments by name, fields split on its own field separator."""
    text = ack.decode("utf-8")
    field_sep = text[3]
    return {line[:3]: line.split(field_sep) for line in text.split("\r") if line}


@dataclass
class RunningListener:
    port: int
    database_url: str
    accepted: list[Receipt] = field(default_factory=list)
    open_connections: Callable[[], int] = lambda: 0

    def rows(self) -> list[InboxMessage]:
        with session_scope(self.database_url) as session:
            return list(session.exec(select(InboxMessage).order_by(col(InboxMessage.id))))

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


def read_acks(sock: socket.socket, count: int) -> list[bytes]:
    """Read `count` MLLP frames (ACKs) from the socket, without their framing."""
    buffer = b""
    acks: list[bytes] = []
    while len(acks) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
        while FS + CR in buffer:
            block, buffer = buffer.split(FS + CR, 1)
            acks.append(block.lstrip(VT))
    return acks


def exchange(listener: RunningListener, *messages: bytes) -> list[bytes]:
    """Send each message framed on one connection, one after the other; their ACKs."""
    with listener.connect() as sock:
        acks = []
        for message in messages:
            sock.sendall(frame(message))
            acks.extend(read_acks(sock, 1))
        return acks


class _LoopThread:
    """An event loop in a thread, so tests can use blocking clients against the listener."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def start_listener(database_url: str, **settings: Any) -> Iterator[RunningListener]:
    """A listener on `database_url`; keyword arguments override its settings."""
    loop = _LoopThread()
    running = RunningListener(port=0, database_url=database_url)
    listener = MLLPListener(
        get_settings(database_url=database_url, **settings), on_accepted=running.accepted.append
    )
    loop.run(listener.start("127.0.0.1", 0))
    running.port = listener.port
    running.open_connections = lambda: listener.open_connections
    try:
        yield running
    finally:
        loop.run(listener.stop())
        loop.close()


@pytest.fixture
def mllp(database_url: str) -> Iterator[RunningListener]:
    yield from start_listener(database_url, mllp_idle_timeout_seconds=30)
