"""HL7 v2 original-mode acknowledgments (ACK) for what intake decided: pure text building.

Choices, and why:

* The ACK is written with the sender's own delimiters (MSH-1/MSH-2), so a sender that uses
  non-default encoding characters can read it; every value we put in is escaped with them.
* MSH-3/4 and MSH-5/6 are the sender's MSH-5/6 and MSH-3/4, echoed verbatim (still escaped as
  sent), because senders match ACKs on those exact strings. MSH-11 and MSH-12 echo the
  message's processing id and version, except a version that is not HL7 v2 at all.
* MSH-10 of the ACK is chosen by the caller: the gateway derives it from the inbox row the
  answer belongs to, so a resent message gets the very same ACK as the first time.
* MSA-3 (text message, deprecated since v2.4 but still what most interfaces display) and ERR-8
  (user message) carry the reason. ERR-2 (v2.5+) locates the field as segment^sequence^field;
  ERR-1 (ELD) carries the same for v2.1–v2.4 receivers, which do not know ERR-2..8.
* The ERR-3 code (HL7 table 0357) follows from the kind of error intake recorded and where:
  a missing segment is a segment sequence error (100), an empty field 101, an unusable value
  102, MSH-9/11/12 are 200/202/203, a system failure 207.
* When even MSH cannot be read there is nothing to echo: the fallback ACK uses the default
  delimiters, an empty MSA-2 and our own application name.
* Bytes: the ACK is encoded UTF-8 when the message's bytes are valid UTF-8, Latin-1 otherwise,
  mirroring how `hl7v2.decode_message` reads them; only ASCII is ever written except values
  echoed from the sender, which therefore go back in the sender's own encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from followup.ris.hl7v2 import MessageHeader

APPLICATION = "FOLLOWUP"
DEFAULT_ENCODING_CHARACTERS = "|^~\\&"
DEFAULT_VERSION = "2.5.1"

# HL7 table 0357 (message error condition codes) used here.
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION_ID = 203
APPLICATION_INTERNAL_ERROR = 207

ERROR_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}
_HEADER_ERRORS = {
    "MSH-9": UNSUPPORTED_MESSAGE_TYPE,
    "MSH-11": UNSUPPORTED_PROCESSING_ID,
    "MSH-12": UNSUPPORTED_VERSION_ID,
}
_MSA_TEXT_LENGTH = 80  # MSA-3 is ST(80); longer text is cut rather than rejected by the sender
_ERR_TEXT_LENGTH = 250  # ERR-8 is TX(250) in v2.5


@dataclass(frozen=True, slots=True)
class AckOutcome:
    """What the ACK says: MSA-1 and, for AE/AR, the error intake recorded."""

    code: str  # AA, AE or AR
    reason: str = ""
    location: str | None = None  # "OBR-3", "PID", "MSH-9"; None when unknown
    error_kind: str | None = None  # the InboundMessageError subclass name; None: system error


def hl7_error_code(outcome: AckOutcome) -> int:
    """The HL7 table 0357 condition code for an AE/AR outcome."""
    location = outcome.location or ""
    if outcome.error_kind is None:
        return APPLICATION_INTERNAL_ERROR
    if outcome.error_kind == "UnsupportedMessage":
        return _HEADER_ERRORS.get(location, APPLICATION_INTERNAL_ERROR)
    if outcome.error_kind == "MalformedMessage" or "-" not in location:
        return SEGMENT_SEQUENCE_ERROR  # no MSH, unreadable, or a whole segment missing
    if outcome.error_kind == "MissingField":
        return REQUIRED_FIELD_MISSING
    return DATA_TYPE_ERROR


def build_ack(
    header: MessageHeader | None, outcome: AckOutcome, *, control_id: str, now: datetime
) -> str:
    """The ACK text (segments joined by \\r, no MLLP framing) answering `header`'s message."""
    encoding_characters = _encoding_characters(header)
    field_sep, component = encoding_characters[0], encoding_characters[1]
    esc = _Escaper(encoding_characters)
    version = _version(header)
    if header is None:
        sender_app = sender_facility = receiver_app = receiver_facility = ""
        our_app, trigger, processing_id, echoed_control_id = APPLICATION, "", "P", ""
    else:
        sender_app, sender_facility = header.sending_application, header.sending_facility
        receiver_app, receiver_facility = header.receiving_application, header.receiving_facility
        our_app = receiver_app or APPLICATION
        trigger = header.trigger
        processing_id = header.processing_id or "P"
        echoed_control_id = header.control_id
    message_type = component.join(["ACK", esc(trigger), "ACK"]) if trigger else "ACK"
    msh = [
        "MSH",
        encoding_characters[1:],
        our_app,
        receiver_facility,
        sender_app,
        sender_facility,
        now.strftime("%Y%m%d%H%M%S%z"),
        "",
        message_type,
        esc(control_id),
        esc(processing_id),
        esc(version),
    ]
    msa = ["MSA", outcome.code, echoed_control_id]
    if outcome.reason:
        msa.append(esc(outcome.reason[:_MSA_TEXT_LENGTH]))
    segments = [field_sep.join(msh), field_sep.join(msa)]
    if outcome.code != "AA":
        segments.append(field_sep.join(_err(outcome, version, esc, encoding_characters)))
    return "\r".join(segments)


def encode_ack(text: str, *, like: bytes) -> bytes:
    """Encode the ACK the way the answered message's bytes were written (see module doc)."""
    try:
        like.decode("utf-8")
    except UnicodeDecodeError:
        return text.encode("latin-1", errors="replace")
    return text.encode("utf-8")


def _err(outcome: AckOutcome, version: str, esc: _Escaper, encoding_characters: str) -> list[str]:
    component, subcomponent = encoding_characters[1], encoding_characters[4]
    code = hl7_error_code(outcome)
    condition = [str(code), esc(ERROR_TEXT[code]), "HL70357"]
    segment, sequence, field = _location_parts(outcome.location)
    eld = ""
    if _version_tuple(version) < (2, 5):
        eld = component.join([segment, sequence, field, subcomponent.join(condition)])
    return [
        "ERR",
        eld,
        component.join(part for part in (segment, sequence, field) if part),
        component.join(condition),
        "E",
        "",
        "",
        "",
        esc(outcome.reason[:_ERR_TEXT_LENGTH]),
    ]


def _location_parts(location: str | None) -> tuple[str, str, str]:
    """Split a location: "OBR-3" → OBR, 1, 3; "PID" → PID, 1, ""; None → "", "", ""."""
    if not location:
        return "", "", ""
    segment, _, field = location.partition("-")
    return segment, "1", field


def _encoding_characters(header: MessageHeader | None) -> str:
    if header is None or len(header.encoding_characters) < 5:
        return DEFAULT_ENCODING_CHARACTERS
    return header.encoding_characters[:5]


def _version(header: MessageHeader | None) -> str:
    if header is None or not header.version.startswith("2."):
        return DEFAULT_VERSION
    return header.version


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


class _Escaper:
    """HL7 escaping with the message's own delimiters; line breaks become spaces."""

    def __init__(self, encoding_characters: str) -> None:
        field, component, repetition, escape, subcomponent = (
            encoding_characters[i] for i in range(5)
        )
        self._table = str.maketrans(
            {
                escape: f"{escape}E{escape}",
                field: f"{escape}F{escape}",
                component: f"{escape}S{escape}",
                subcomponent: f"{escape}T{escape}",
                repetition: f"{escape}R{escape}",
                "\r": " ",
                "\n": " ",
            }
        )

    def __call__(self, value: str) -> str:
        return value.translate(self._table)
