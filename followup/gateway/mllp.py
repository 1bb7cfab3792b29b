"""MLLP listener for HL7 v2 results, orders and ADT, on asyncio streams.

Framing follows MLLP release 2: a block is <VT> data <FS><CR>, and the data of an HL7 v2
message holds neither VT (0x0B) nor FS (0x1C). What a receiver does with a byte that breaks
that is ours to decide; here the rule is to lose nothing quietly (`FrameDecoder`):

* Once a frame has started, VT is content: a VT inside report text does not restart the frame
  (that dropped the frame's head). The message then goes to intake as sent.
* FS must be followed by CR. FS followed by any other byte is a framing error, not content:
  FS can only be meant as the end block, so the frame ends there, and since the trailer is
  broken nothing says the message before it is whole. It is stored and refused (AE), like a
  frame cut off by the end of the connection; the byte after FS is read as outside a frame.
* A frame still open when the connection ends or goes idle (with or without its FS) is stored
  once and refused (AE, answered if the peer still reads): never silently dropped.
* Bytes outside a frame are a message sent without its start block, or noise. A run of them
  ends at the next VT, at FS CR (a sender that omits VT waits for its answer there) or at the
  end of the connection. A run whose first segment is a readable MSH is answered AR and not
  stored; any other run is logged with the peer and its byte count (whitespace between frames,
  which many senders send, at debug level). Either way the run is not a message we hold.
* A message (or a run of stray bytes) over `mllp_max_message_bytes` is answered AR naming the
  limit (its MSH read from the bytes so far, when readable), nothing of it is stored, and the
  connection is closed at once: without its end the stream cannot be resynchronised, and
  reading on to the end only to refuse it would hold it all in memory.
* Connections beyond `mllp_max_connections` (in total) or `mllp_max_connections_per_peer`
  (from one address) are closed as they are accepted, with a log line; a connection silent
  for `mllp_idle_timeout_seconds` is closed.

Memory: asyncio's stream buffer pauses reading past 128 KiB, and a connection reads its next
bytes only once the previous message is answered, so what one connection holds is bounded
by the message limit plus one read; the connection limits bound the rest.

Storage and answers:

* Frames are bytes and never decoded here: the inbox keeps the bytes as sent, and the charset
  is the message's own (MSH-18, BOM, Latin-1), which `hl7v2.decode_message` works out.
* One task per connection; messages on one connection are answered in order (a sender waits
  for each ACK; one that pipelines still gets its answers in order). The database work is
  synchronous and runs in a worker thread (one per process on SQLite, see
  `in_database_thread`), so the event loop keeps reading and answering other connections.
* The ACK is written only after intake has committed the inbox row. If the database fails, the
  answer is AR (system error: resend later), never AA.
* `on_accepted(receipt)` runs after the ACK is written, and also when the sender left before
  reading it: the row is committed, the message is ours. A failing callback is logged and
  left to the sweep-inbox flow, which re-submits rows no flow run has claimed.
* Logs name the peer, byte counts, inbox id, accession and ACK code, never message content
  (PHI).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from contextlib import suppress
from datetime import datetime
from uuid import uuid4

from followup.errors import InboundMessageError
from followup.gateway import OnAccepted, in_database_thread
from followup.ris import ack, hl7v2
from followup.ris.mllp_framing import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    Frame,
    FrameDecoder,
    FramingEvent,
    OversizeMessage,
    StrayBytes,
    UnterminatedFrame,
    first_segment,
)
from followup.services import intake
from followup.services.intake import Receipt
from followup.settings import Settings
from models.db import session_scope

logger = logging.getLogger(__name__)

SOURCE = "mllp"
# What one read takes from the socket: the most a message can run over its limit before it is
# refused. asyncio's default stream buffer limit, so a read empties the buffer.
READ_BYTES = 64 * 1024
_SYSTEM_ERROR = "the engine could not store the message; resend later"
_NO_START_BLOCK = "message sent without the MLLP start block (0x0B); not stored, resend it framed"


# --- the listener ------------------------------------------------------------------------------


class MLLPListener:
    """Accepts HL7 v2 over MLLP, stores each message through intake, answers with an ACK."""

    def __init__(self, settings: Settings, *, on_accepted: OnAccepted) -> None:
        self.settings = settings
        self.on_accepted = on_accepted
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._per_peer: Counter[str] = Counter()

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections still being served; each one's `on_accepted` calls finish before it
        closes, so at 0 every message received so far has been answered and handed on."""
        return len(self._connections)

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        self._server = await asyncio.start_server(
            self._connected,
            host if host is not None else self.settings.mllp_host,
            port if port is not None else self.settings.mllp_port,
            limit=READ_BYTES,
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

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer, host = _peer(writer)
        refusal = self._over_connection_limits(host)
        if refusal:
            logger.warning("refusing an MLLP connection from %s: %s", peer, refusal)
            writer.close()
            return
        self._per_peer[host] += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, peer))
        self._connections.add(task)
        task.add_done_callback(lambda done: self._disconnected(done, host))

    def _over_connection_limits(self, host: str) -> str | None:
        total = self.settings.mllp_max_connections
        per_peer = self.settings.mllp_max_connections_per_peer
        if len(self._connections) >= total:
            return f"{len(self._connections)} connections open (limit {total})"
        if self._per_peer[host] >= per_peer:
            return f"{self._per_peer[host]} connections open from {host} (limit {per_peer})"
        return None

    def _disconnected(self, task: asyncio.Task[None], host: str) -> None:
        self._connections.discard(task)
        self._per_peer[host] -= 1
        if self._per_peer[host] <= 0:
            del self._per_peer[host]

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        decoder = FrameDecoder(self.settings.mllp_max_message_bytes)
        try:
            while not decoder.stopped:
                data = await self._read(reader, peer)
                for event in decoder.feed(data) if data else decoder.finish():
                    await self._handle(event, writer, peer)
                if not data:
                    return
            await self._discard_rest(reader, writer, peer)
        except asyncio.CancelledError:
            if decoder.pending_bytes:
                # Never answered, so the sender resends it whole to the next gateway.
                logger.warning(
                    "stopping: %d bytes of an unfinished MLLP message from %s not stored",
                    decoder.pending_bytes,
                    peer,
                )
            raise
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, peer: str) -> bytes:
        """The next bytes; empty at the end of the connection, or when it went idle or was
        lost (what was read of an open frame is then stored and refused all the same)."""
        try:
            return await asyncio.wait_for(
                reader.read(READ_BYTES), self.settings.mllp_idle_timeout_seconds
            )
        except TimeoutError:
            logger.info("closing idle MLLP connection from %s", peer)
        except ConnectionError:
            logger.info("MLLP connection from %s lost", peer)
        return b""

    async def _discard_rest(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        """After an oversize message, read and drop what the peer is still sending (for at
        most the idle timeout): closing with unread bytes would reset the connection, and the
        peer, still writing, would never read the AR that says why."""
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
        discarded = 0
        with suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(self.settings.mllp_idle_timeout_seconds):
                while chunk := await reader.read(READ_BYTES):
                    discarded += len(chunk)
        logger.info("discarded %d more bytes from %s before closing", discarded, peer)

    async def _handle(self, event: FramingEvent, writer: asyncio.StreamWriter, peer: str) -> None:
        if isinstance(event, Frame):
            await self._message(event.content, writer, peer)
        elif isinstance(event, UnterminatedFrame):
            await self._unterminated(event, writer, peer)
        elif isinstance(event, StrayBytes):
            await self._stray(event, writer, peer)
        else:
            await self._too_large(event, writer, peer)

    async def _message(self, frame: bytes, writer: asyncio.StreamWriter, peer: str) -> None:
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

    async def _unterminated(
        self, frame: UnterminatedFrame, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        if not frame.content.strip():
            logger.warning(
                "MLLP frame from %s ended with no message in it (%d bytes)",
                peer,
                len(frame.content),
            )
            return
        receipt = await in_database_thread(
            self.settings.database_url, self._store_unterminated, frame, peer
        )
        if receipt is not None:
            await _write(writer, self._ack_for(receipt, frame.content), peer)

    def _store_unterminated(self, frame: UnterminatedFrame, peer: str) -> Receipt | None:
        try:
            with session_scope(self.settings.database_url) as session:
                receipt = intake.receive_unterminated(
                    session=session,
                    raw=frame.content,
                    source=SOURCE,
                    peer=peer,
                    reason=frame.problem,
                )
        except Exception as exc:
            logger.error("could not store a cut-off frame from %s: %s", peer, type(exc).__name__)
            return None
        logger.warning(
            "inbox %d from %s: unterminated frame of %d bytes, refused",
            receipt.inbox_id,
            peer,
            len(frame.content),
        )
        return receipt

    async def _stray(self, stray: StrayBytes, writer: asyncio.StreamWriter, peer: str) -> None:
        if not stray.content.strip():
            logger.debug(
                "%d bytes outside MLLP frames from %s: whitespace or framing only", stray.size, peer
            )
            return
        header = _header(stray.content)
        if header is None:
            logger.warning("dropped %d bytes outside MLLP frames from %s", stray.size, peer)
            return
        logger.warning(
            "%d bytes outside MLLP frames from %s start with MSH: answered AR", stray.size, peer
        )
        outcome = ack.AckOutcome(code="AR", reason=_NO_START_BLOCK, error_kind="MalformedMessage")
        await _write(
            writer, self._ack(header, outcome, stray.content, control_id=_fresh_id()), peer
        )

    async def _too_large(
        self, oversize: OversizeMessage, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        limit = self.settings.mllp_max_message_bytes
        logger.warning(
            "MLLP message from %s over the %d-byte limit (%d bytes read): refused, closing",
            peer,
            limit,
            oversize.size,
        )
        outcome = ack.AckOutcome(
            code="AR",
            reason=f"message larger than the receiver's limit of {limit} bytes",
            error_kind="MalformedMessage",
        )
        answer = self._ack(
            _header(oversize.first_segment), outcome, oversize.first_segment, control_id=_fresh_id()
        )
        await _write(writer, answer, peer)


async def _write(writer: asyncio.StreamWriter, answer: bytes, peer: str) -> None:
    if writer.is_closing():
        logger.warning("%s left before its ACK was sent", peer)
        return
    writer.write(START_BLOCK + answer + END_BLOCK + CARRIAGE_RETURN)
    try:
        await writer.drain()
    except ConnectionError:
        logger.warning("%s left before its ACK was sent", peer)


def _header(content: bytes) -> hl7v2.MessageHeader | None:
    """MSH, read from the first segment only: the rest may be megabytes, or missing."""
    try:
        return hl7v2.message_header(
            hl7v2.parse_message(hl7v2.decode_message(first_segment(content)))
        )
    except InboundMessageError:
        return None


def _fresh_id() -> str:
    return f"ACK{uuid4().hex[:16].upper()}"


def _peer(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """The peer as `address:port` for logs, and its address alone for the per-peer limit."""
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}", str(address[0])
    return str(address), str(address)
