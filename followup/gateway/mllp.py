"""MLLP listener for HL7 v2 results, orders and ADT, on python-hl7's asyncio MLLP streams.

Choices, and why:

* Frames are read as bytes (`readblock`) and never decoded by the stream: the inbox keeps the
  bytes as sent, and the charset is the message's own (MSH-18, BOM, Latin-1), which
  `hl7v2.decode_message` works out. The streams still get an explicit encoding because
  python-hl7 falls back to ASCII for anything that does decode.
* One task per connection; messages on one connection are answered in order (a sender waits
  for each ACK; one that pipelines still gets its answers in order). The database work is
  synchronous and runs in a worker thread (one per process on SQLite, see
  `in_database_thread`), so the event loop keeps reading and answering other connections.
* The ACK is written only after intake has committed the inbox row. If the database fails, the
  answer is AR (system error: resend later), never AA.
* `on_accepted(receipt)` runs after the ACK is written, and also when the sender left before
  reading it: the row is committed, the message is ours. A failing callback is logged and
  left to the sweep-inbox flow, which re-submits rows no flow run has claimed.
* Bytes outside frames (stray CR/LF, garbage, an aborted partial frame) are dropped, as MLLP
  asks of a receiver. A frame cut off by the end of the connection is stored as an error row
  (its end may be missing, so it is never processed) and answered AE if the peer still reads.
  A frame over `max_message_bytes` is answered AR and the connection closed: without its end
  the stream cannot be resynchronised safely.
* Logs name the peer, inbox id, accession and ACK code, never message content (PHI).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from datetime import datetime
from uuid import uuid4

from hl7.mllp import HL7StreamProtocol, HL7StreamReader, HL7StreamWriter
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from followup import intake
from followup.errors import InboundMessageError
from followup.gateway import OnAccepted, in_database_thread
from followup.intake import Receipt
from followup.ris import ack, hl7v2
from followup.settings import Settings
from models.db import session_scope

logger = logging.getLogger(__name__)

SOURCE = "mllp"
STREAM_ENCODING = "utf-8"
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 600.0
_SYSTEM_ERROR = "the engine could not store the message; resend later"


class FrameReader(HL7StreamReader):
    """python-hl7's reader, dropping bytes outside frames instead of failing on them."""

    async def readblock(self) -> bytes:
        """The next frame's content (without <VT> and <FS><CR>), as bytes.

        Raises IncompleteReadError at the end of the stream (its `partial` holds what was
        read of an unterminated frame) and LimitOverrunError for a frame over the limit.
        """
        while True:
            chunk = await self.readuntil(END_BLOCK + CARRIAGE_RETURN)
            start = chunk.rfind(START_BLOCK)
            dropped = len(chunk) if start == -1 else start
            if dropped:
                logger.warning("dropped %d bytes outside MLLP frames", dropped)
            if start != -1:
                return chunk[start + 1 : -len(END_BLOCK + CARRIAGE_RETURN)]


class MLLPListener:
    """Accepts HL7 v2 over MLLP, stores each message through intake, answers with an ACK."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_accepted: OnAccepted,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.on_accepted = on_accepted
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> HL7StreamProtocol:
            reader = FrameReader(limit=self.max_message_bytes, loop=loop, encoding=STREAM_ENCODING)
            return HL7StreamProtocol(reader, self._connected, loop=loop, encoding=STREAM_ENCODING)

        self._server = await loop.create_server(
            protocol,
            host if host is not None else self.settings.mllp_host,
            port if port is not None else self.settings.mllp_port,
        )
        logger.info("MLLP listener on %s:%d", host or self.settings.mllp_host, self.port)

    async def stop(self) -> None:
        """Stop accepting, then end open connections (a message in the database finishes)."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def _connected(self, reader: FrameReader, writer: HL7StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: FrameReader, writer: HL7StreamWriter) -> None:
        peer = _peer(writer)
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(reader.readblock(), self.idle_timeout)
                except TimeoutError:
                    logger.info("closing idle MLLP connection from %s", peer)
                    return
                except asyncio.IncompleteReadError as end:
                    await self._unterminated(end.partial, writer, peer)
                    return
                except asyncio.LimitOverrunError:
                    await self._too_large(writer, peer)
                    return
                await self._message(frame, writer, peer)
        except ConnectionError:
            logger.info("MLLP connection from %s lost", peer)
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _message(self, frame: bytes, writer: HL7StreamWriter, peer: str) -> None:
        receipt, answer = await in_database_thread(
            self.settings.database_url, self._answer, frame, peer
        )
        await _write(writer, answer, peer)
        if receipt is not None and receipt.should_process:
            try:
                await asyncio.to_thread(self.on_accepted, receipt)
            except Exception as exc:  # the row is safe; sweep-inbox re-submits it
                logger.error(
                    "on_accepted failed for inbox %d (%s): %s",
                    receipt.inbox_id,
                    receipt.accession,
                    type(exc).__name__,
                )

    def _answer(self, frame: bytes, peer: str) -> tuple[Receipt | None, bytes]:
        """Store and judge one message (in a worker thread); the ACK bytes to send."""
        try:
            with session_scope(self.settings.database_url) as session:
                receipt = intake.receive_message(
                    session=session, raw=frame, source=SOURCE, settings=self.settings, peer=peer
                )
        except Exception as exc:  # database down, disk full: AR, and the sender resends
            # The type only: database errors can quote the message's bytes (PHI).
            logger.error("could not store a message from %s: %s", peer, type(exc).__name__)
            outcome = ack.AckOutcome(code="AR", reason=_SYSTEM_ERROR)
            return None, self._ack(_header(frame), outcome, frame, control_id=_fresh_id())
        logger.info(
            "inbox %d from %s: %s %s%s",
            receipt.inbox_id,
            peer,
            receipt.ack_code,
            receipt.accession or "-",
            f" (duplicate of {receipt.duplicate_of})" if receipt.duplicate_of else "",
        )
        return receipt, self._ack_for(receipt, frame)

    def _ack_for(self, receipt: Receipt, frame: bytes) -> bytes:
        outcome = ack.AckOutcome(
            code=receipt.ack_code,
            reason=receipt.reason,
            location=receipt.location,
            error_kind=receipt.error_kind,
        )
        # Named after the row the answer belongs to: a resend gets the first answer again.
        control_id = f"ACK{receipt.duplicate_of or receipt.inbox_id}"
        return self._ack(receipt.header, outcome, frame, control_id=control_id)

    def _ack(
        self,
        header: hl7v2.MessageHeader | None,
        outcome: ack.AckOutcome,
        frame: bytes,
        *,
        control_id: str,
    ) -> bytes:
        text = ack.build_ack(
            header, outcome, control_id=control_id, now=datetime.now(self.settings.site_zone)
        )
        return ack.encode_ack(text, like=frame)

    async def _unterminated(self, partial: bytes, writer: HL7StreamWriter, peer: str) -> None:
        start = partial.rfind(START_BLOCK)
        content = partial[start + 1 :] if start != -1 else b""
        if not content.strip():
            return  # a clean close between messages
        receipt = await in_database_thread(
            self.settings.database_url, self._store_unterminated, content, peer
        )
        if receipt is not None:
            await _write(writer, self._ack_for(receipt, content), peer)

    def _store_unterminated(self, content: bytes, peer: str) -> Receipt | None:
        try:
            with session_scope(self.settings.database_url) as session:
                receipt = intake.receive_unterminated(
                    session=session, raw=content, source=SOURCE, peer=peer
                )
        except Exception as exc:
            logger.error("could not store a cut-off frame from %s: %s", peer, type(exc).__name__)
            return None
        logger.warning("inbox %d from %s: frame without end block", receipt.inbox_id, peer)
        return receipt

    async def _too_large(self, writer: HL7StreamWriter, peer: str) -> None:
        logger.warning("MLLP frame from %s over %d bytes", peer, self.max_message_bytes)
        outcome = ack.AckOutcome(
            code="AR",
            reason=f"message larger than {self.max_message_bytes} bytes",
            error_kind="MalformedMessage",
        )
        await _write(writer, self._ack(None, outcome, b"", control_id=_fresh_id()), peer)


async def _write(writer: HL7StreamWriter, answer: bytes, peer: str) -> None:
    if writer.is_closing():
        logger.warning("%s left before its ACK was sent", peer)
        return
    writer.writeblock(answer)
    try:
        await writer.drain()
    except ConnectionError:
        logger.warning("%s left before its ACK was sent", peer)


def _header(frame: bytes) -> hl7v2.MessageHeader | None:
    try:
        return hl7v2.message_header(hl7v2.parse_message(hl7v2.decode_message(frame)))
    except InboundMessageError:
        return None


def _fresh_id() -> str:
    return f"ACK{uuid4().hex[:16].upper()}"


def _peer(writer: HL7StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
