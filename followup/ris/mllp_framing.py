"""MLLP release 2 framing, pure: bytes in, frames and framing problems out (no sockets).

Shared by both directions: the gateway's listener (what a RIS or a specialist sends us) and the
EHR outbox's sender (reading the receiver's ACKs). The rules a receiver applies to bytes that
break the framing are described in `followup.gateway.mllp`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

START_BLOCK, END_BLOCK, CARRIAGE_RETURN = b"\x0b", b"\x1c", b"\r"

# Short enough for MSA-3 (80 characters), where a sender's operator reads them.
NO_END_BLOCK = "the frame ended without the MLLP end block; it may be cut off"
END_BLOCK_AT_CLOSE = "the connection ended after end block 0x1C without its CR 0x0D; may be cut off"
END_BLOCK_WITHOUT_CR = "MLLP framing error: end block 0x1C not followed by CR 0x0D; may be cut off"
# The first segment of a message, after any leading whitespace (the BOM stays: decode removes it).
FIRST_SEGMENT = re.compile(rb"[ \t\r\n]*([^\r\n]*)")


@dataclass(frozen=True, slots=True)
class Frame:
    """A whole frame's content, without <VT> and <FS><CR>."""

    content: bytes


@dataclass(frozen=True, slots=True)
class UnterminatedFrame:
    """A frame that did not end with <FS><CR>: its content so far, and what went wrong."""

    content: bytes
    problem: str


@dataclass(frozen=True, slots=True)
class StrayBytes:
    """A run of bytes outside any frame (without an <FS><CR> that ended it); `size` counts
    every byte of the run, framing bytes included."""

    content: bytes
    size: int


@dataclass(frozen=True, slots=True)
class OversizeMessage:
    """A frame or stray run that went over the limit: its first segment (for MSH) and how
    many of its bytes were read. The decoder reads nothing after it."""

    first_segment: bytes
    size: int


FramingEvent = Frame | UnterminatedFrame | StrayBytes | OversizeMessage


class FrameDecoder:
    """MLLP release 2 framing over one connection's byte stream (see the module docstring)."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.stopped = False  # after an oversize message: the stream cannot be resynchronised
        self._held = bytearray()  # the open frame's content, or the stray run's bytes
        self._run_size = 0  # bytes read of the open frame or stray run, framing included
        self._in_frame = False
        self._after_end_block = False  # the last byte read was an FS

    @property
    def pending_bytes(self) -> int:
        """Bytes read of a frame or stray run not yet complete."""
        return self._run_size

    def feed(self, data: bytes) -> list[FramingEvent]:
        """The frames and problems that `data`, read after everything fed before, completes."""
        events: list[FramingEvent] = []
        position = 0
        while position < len(data) and not self.stopped:
            if self._after_end_block:
                position = self._after_fs(data, position, events)
            elif self._in_frame:
                position = self._in_frame_bytes(data, position, events)
            else:
                position = self._outside_bytes(data, position, events)
        return events

    def finish(self) -> list[FramingEvent]:
        """The end of the stream: the open frame or stray run, if any."""
        if self.stopped or self._run_size == 0:
            return []
        if self._in_frame:
            problem = END_BLOCK_AT_CLOSE if self._after_end_block else NO_END_BLOCK
            return [UnterminatedFrame(self._take(), problem)]
        if self._after_end_block:
            self._held += END_BLOCK
        return [StrayBytes(self._take(), self._take_size())]

    def _after_fs(self, data: bytes, position: int, events: list[FramingEvent]) -> int:
        self._after_end_block = False
        if data[position] == CARRIAGE_RETURN[0]:
            if self._in_frame:
                events.append(Frame(self._take()))
                self._in_frame = False
                self._run_size = 0
            else:
                self._run_size += 1
                events.append(StrayBytes(self._take(), self._take_size()))
            return position + 1
        if self._in_frame:
            events.append(UnterminatedFrame(self._take(), END_BLOCK_WITHOUT_CR))
            self._in_frame = False
            self._run_size = 0
        else:
            self._held += END_BLOCK  # stray content; counted in the run's size when read
        return position  # the byte after FS is read again, outside a frame or in the stray run

    def _in_frame_bytes(self, data: bytes, position: int, events: list[FramingEvent]) -> int:
        end = data.find(END_BLOCK, position)
        stop = len(data) if end == -1 else end
        self._hold(data[position:stop], events)
        if end == -1:
            return stop
        self._after_end_block = True
        self._run_size += 1
        return end + 1

    def _outside_bytes(self, data: bytes, position: int, events: list[FramingEvent]) -> int:
        if self._run_size == 0 and data[position] == START_BLOCK[0]:
            self._in_frame = True
            self._run_size = 1
            return position + 1
        marks = (data.find(START_BLOCK, position), data.find(END_BLOCK, position))
        found = [mark for mark in marks if mark != -1]
        stop = min(found) if found else len(data)
        self._hold(data[position:stop], events)
        if not found or self.stopped:
            return stop
        if data[stop] == END_BLOCK[0]:
            self._after_end_block = True
            self._run_size += 1
            return stop + 1
        events.append(StrayBytes(self._take(), self._take_size()))
        return stop  # the VT starts a frame

    def _hold(self, chunk: bytes, events: list[FramingEvent]) -> None:
        self._held += chunk
        self._run_size += len(chunk)
        if len(self._held) > self.max_message_bytes:
            events.append(OversizeMessage(first_segment(self._held), self._run_size))
            self._held = bytearray()
            self.stopped = True

    def _take(self) -> bytes:
        held, self._held = self._held, bytearray()
        return bytes(held)

    def _take_size(self) -> int:
        size, self._run_size = self._run_size, 0
        return size


def first_segment(content: bytes | bytearray) -> bytes:
    match = FIRST_SEGMENT.match(content)
    return bytes(match.group(1)) if match else b""
