"""A stand-in EHR (shared by tests/ehr and bench/bench_outbox.py): a real MLLP listener on
127.0.0.1 that answers as it is told.

It reads frames with the gateway's `FrameDecoder` and answers each message with the next
instruction of its script (AA by default): AA, AE or AR with an ACK whose MSA-2 echoes MSH-10;
`drop`: keeps the message and closes the connection without answering (an ACK lost on the
way); `silent`: keeps the message and never answers (the sender's ACK timeout). Like a real
receiver it takes MSH-10 as its idempotency key: a message it already accepted is answered AA
again and not kept twice. It stops when the test's `with` block ends.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import hl7

from followup.ris.mllp_framing import CARRIAGE_RETURN, END_BLOCK, START_BLOCK, Frame, FrameDecoder

ANSWERS = ("AA", "AE", "AR", "drop", "silent")


@dataclass
class FakeEhr:
    port: int = 0
    script: list[str] = field(default_factory=list)  # the next answers, in order
    received: list[str] = field(default_factory=list)  # every message, resends included
    accepted: dict[str, str] = field(default_factory=dict)  # MSH-10 → message, kept once
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kept(self) -> list[hl7.Message]:
        """The messages it holds, parsed with python-hl7, in arrival order."""
        with self.lock:
            return [hl7.parse(text) for text in self.accepted.values()]

    def answer_for(self, text: str) -> str:
        """The next answer, and the message's effect on what it holds."""
        control_id = str(hl7.parse(text).segment("MSH")(10))
        with self.lock:
            self.received.append(text)
            if control_id in self.accepted:
                return "AA"  # a resend of what it holds: the same answer, nothing new
            answer = self.script.pop(0) if self.script else "AA"
            if answer in ("AA", "drop", "silent"):
                self.accepted[control_id] = text
            return answer


def ack(text: str, code: str) -> bytes:
    msh = hl7.parse(text).segment("MSH")
    trigger = str(msh(9)(1)(2))
    reason = {"AE": "PID-3 unknown to this EHR", "AR": "busy, resend later"}.get(code, "")
    lines = [
        f"MSH|^~\\&|EHR||FOLLOWUP||20261207120000||ACK^{trigger}^ACK|A{msh(10)}|P|2.5.1",
        f"MSA|{code}|{msh(10)}|{reason}",
    ]
    if code != "AA":
        lines.append(f"ERR||PID^1^3|101^Required field missing^HL70357|E||||{reason}")
    return START_BLOCK + "\r".join(lines).encode() + END_BLOCK + CARRIAGE_RETURN


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        ehr = self.server.ehr
        with ehr.lock:
            ehr.connections += 1
        decoder = FrameDecoder(1 << 20)
        sock: socket.socket = self.request
        sock.settimeout(10)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for event in decoder.feed(data):
                assert isinstance(event, Frame), event
                text = event.content.decode("utf-8")
                answer = ehr.answer_for(text)
                if answer == "drop":
                    return
                if answer != "silent":
                    sock.sendall(ack(text, answer))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ehr: FakeEhr) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ehr = ehr


@contextmanager
def fake_ehr(*script: str) -> Iterator[FakeEhr]:
    """A running test EHR answering `script` first, then AA."""
    assert all(answer in ANSWERS for answer in script)
    ehr = FakeEhr(script=list(script))
    server = _Server(ehr)
    ehr.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield ehr
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
