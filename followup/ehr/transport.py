"""Delivering built messages to one destination: an MLLP client, or a FHIR R4 client.

Both answer each message with a `Delivery` the dispatcher records; neither touches the
database. One connection per destination per batch (`deliver` takes the batch in order):

* MLLP: each message is framed <VT> message <FS><CR> (the gateway's framing constants) and
  its ACK read with the gateway's `FrameDecoder` within the ACK timeout. MSA-2 must echo the
  message's MSH-10: any other answer means the stream is out of step (a late ACK of an earlier
  attempt), so the connection is dropped and the message retried. AA (or CA) is delivered; AE
  (CE) refused: the receiver says the content is wrong, and sending it again will not help;
  AR (CR), no answer in time, a refused or broken connection: retried later. Messages after a
  broken connection were not sent at all and go back to the queue untried.
* FHIR: each message is a list of conditional PUTs (create or update on the engine's
  identifiers), sent in order with the httpx client passed in. 2xx is delivered; 4xx other
  than 408/429 refused, with the OperationOutcome's diagnostics; 408, 429, 5xx and network
  errors retried.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx

from followup.errors import InboundMessageError
from followup.ris import hl7v2
from followup.ris.mllp_framing import CARRIAGE_RETURN, END_BLOCK, START_BLOCK, Frame, FrameDecoder

# An ACK is a few hundred bytes; a larger answer is not one.
MAX_ACK_BYTES = 64 * 1024
_DETAIL_LENGTH = 300


class Delivery(StrEnum):
    ACCEPTED = "accepted"  # AA / 2xx
    REFUSED = "refused"  # AE / 4xx: held for a person
    RETRY = "retry"  # AR, timeout, connection refused or lost, 5xx
    NOT_SENT = "not_sent"  # never went out (the connection broke before its turn)


@dataclass(frozen=True, slots=True)
class Outgoing:
    row_id: int
    control_id: str
    payload: str


@dataclass(frozen=True, slots=True)
class Result:
    row_id: int
    delivery: Delivery
    ack_code: str | None = None
    detail: str = ""


class Transport(Protocol):
    def deliver(self, messages: Sequence[Outgoing]) -> list[Result]: ...


def _cut(text: str) -> str:
    return " ".join(text.split())[:_DETAIL_LENGTH]


# --- MLLP ----------------------------------------------------------------------------------------


class _BrokenConnection(Exception):
    """The connection cannot carry the next message (lost, timed out, or out of step)."""


@dataclass(frozen=True, slots=True)
class MllpTransport:
    host: str
    port: int
    connect_timeout: float
    ack_timeout: float

    @classmethod
    def at(cls, address: str, *, connect_timeout: float, ack_timeout: float) -> MllpTransport:
        host, _, port = address.rpartition(":")
        return cls(host, int(port), connect_timeout, ack_timeout)

    def deliver(self, messages: Sequence[Outgoing]) -> list[Result]:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            why = f"cannot connect to {self.host}:{self.port}: {reason}"
            return [Result(m.row_id, Delivery.RETRY, detail=why) for m in messages]
        results: list[Result] = []
        with sock:
            sock.settimeout(self.ack_timeout)
            decoder = FrameDecoder(MAX_ACK_BYTES)
            for message in messages:
                try:
                    result = self._exchange(sock, decoder, message)
                except _BrokenConnection as broken:
                    results.append(Result(message.row_id, Delivery.RETRY, detail=str(broken)))
                    break
                results.append(result)
        sent = {result.row_id for result in results}
        return results + [
            Result(m.row_id, Delivery.NOT_SENT) for m in messages if m.row_id not in sent
        ]

    def _exchange(self, sock: socket.socket, decoder: FrameDecoder, message: Outgoing) -> Result:
        try:
            sock.sendall(
                START_BLOCK + message.payload.encode("utf-8") + END_BLOCK + CARRIAGE_RETURN
            )
            ack = _read_frame(sock, decoder)
        except TimeoutError as error:
            raise _BrokenConnection(f"no ACK within {self.ack_timeout:g} s") from error
        except OSError as error:
            raise _BrokenConnection(
                f"connection lost: {error.strerror or type(error).__name__}"
            ) from error
        return judge_ack(ack, message)


def _read_frame(sock: socket.socket, decoder: FrameDecoder) -> bytes:
    while True:
        data = sock.recv(65536)
        events = decoder.feed(data) if data else decoder.finish()
        for event in events:
            if isinstance(event, Frame):
                return event.content
            raise _BrokenConnection(f"unreadable answer ({type(event).__name__})")
        if not data:
            raise _BrokenConnection("the receiver closed the connection without an ACK")


def judge_ack(ack: bytes, message: Outgoing) -> Result:
    """What an ACK says about `message`; _BrokenConnection when it answers another one."""
    try:
        parsed = hl7v2.parse_message(hl7v2.decode_message(ack))
    except InboundMessageError as error:
        raise _BrokenConnection(f"unreadable ACK: {error}") from error
    delims = parsed.delimiters
    msa = next((segment for segment in parsed.segments if segment.name == "MSA"), None)
    if msa is None:
        raise _BrokenConnection("ACK without MSA")
    code = hl7v2.field_value(msa, 1, 1, delims)
    answered = hl7v2.field_value(msa, 2, 1, delims)
    if answered != message.control_id:
        raise _BrokenConnection(f"ACK for {answered!r}, not {message.control_id!r}")
    err = next((segment for segment in parsed.segments if segment.name == "ERR"), None)
    text = hl7v2.field_value(msa, 3, 1, delims)
    if err is not None:
        text = hl7v2.field_value(err, 8, 1, delims) or text
    if code in ("AA", "CA"):
        return Result(message.row_id, Delivery.ACCEPTED, code)
    if code in ("AE", "CE"):
        return Result(message.row_id, Delivery.REFUSED, code, _cut(text or "error, no reason"))
    return Result(message.row_id, Delivery.RETRY, code, _cut(f"{code}: {text or 'rejected'}"))


# --- FHIR ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FhirTransport:
    """Conditional PUTs through the httpx client passed in (timeouts are the client's)."""

    client: httpx.Client
    base_url: str

    def deliver(self, messages: Sequence[Outgoing]) -> list[Result]:
        return [self._send(message) for message in messages]

    def _send(self, message: Outgoing) -> Result:
        requests: list[dict[str, Any]] = json.loads(message.payload)
        status = 0
        for request in requests:
            try:
                response = self.client.request(
                    request["method"],
                    f"{self.base_url.rstrip('/')}/{request['url']}",
                    json=request["resource"],
                    headers={
                        "Content-Type": "application/fhir+json",
                        "X-Request-Id": f"{message.control_id}-{request['url'].split('?')[0]}",
                    },
                )
            except httpx.HTTPError as error:
                return Result(message.row_id, Delivery.RETRY, detail=_cut(type(error).__name__))
            status = response.status_code
            if status < 300:
                continue
            detail = _cut(f"HTTP {status} on {request['url']}: {_diagnostics(response)}")
            if status in (408, 429) or status >= 500:
                return Result(message.row_id, Delivery.RETRY, str(status), detail)
            return Result(message.row_id, Delivery.REFUSED, str(status), detail)
        return Result(message.row_id, Delivery.ACCEPTED, str(status))


def _diagnostics(response: httpx.Response) -> str:
    """The OperationOutcome's diagnostics, or the start of the body."""
    try:
        outcome = response.json()
    except ValueError:
        return response.text[:120]
    issues = outcome.get("issue", []) if isinstance(outcome, dict) else []
    texts = [issue.get("diagnostics", "") for issue in issues if isinstance(issue, dict)]
    return "; ".join(text for text in texts if text) or response.text[:120]
