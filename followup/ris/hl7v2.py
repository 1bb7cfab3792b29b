"""HL7 v2 ORU^R01 → ScanCompleted: pure parsing, no socket I/O, no database.

Choices, and why:

* Bytes to text (`decode_message`). A UTF-8 byte-order mark is dropped (FHIR-Converter samples
  start with one). The charset comes from MSH-18 (HL7 table 0211). Senders often declare
  8859/1 by habit while sending UTF-8 (dcm4che's OMI^O23 does), and a single-byte charset never
  fails to decode, so it cannot reveal the lie by failing: when the declared charset is
  single-byte, strict UTF-8 is tried first, since Latin-1 text practically never forms valid
  UTF-8 multi-byte sequences. Otherwise the declared charset comes first, then UTF-8, and
  Latin-1 last, which maps every byte: decoding never raises. Line ends (\\n, \\r\\n) become the
  \\r segment separator.
* Accession is OBR-3 (filler order number, the RIS's own id), else OBR-18, else OBR-2. IHE
  Radiology puts the accession in OBR-18 and many RIS copy it into OBR-3; OBR-3 comes first
  because it is the field HL7 defines as the filler's key for the order. dcm4che's samples carry
  literal placeholders ("FillerOrderNumberImagingServiceRequest") there, which is fine for tests.
* Checks run from the envelope inwards: MSH-9/11/12 (AR), MSH-10 (AE: without a control id
  the ACK cannot name the message and a resend cannot be recognised), then the study
  (accession, OBR-25), then the patient (PID-3, PID-7), then times, then the report text.
  The first failure is raised, with the HL7 location for the ACK's ERR segment. OBR-25 is
  required: dcm4che's legacy_ORU^R01 has its F in OBR-24 and an empty OBR-25, which must not
  pass as final.
* One ORU carries one study: a message with several OBR groups is rejected rather than having
  all but one silently dropped (a dropped study would never get its follow-up).
* Report text is read from every carrier after the OBR, in message order, one line per
  repetition or line, with section headings ("IMPRESSION:") kept as sent: OBX-5 of TX, FT and
  ST observations; coded values (CE/CWE/CNE) that carry only text (with a code they are coded
  items, routed by the code); NTE-3 of the notes that follow the OBR or an OBX (PRT may sit
  between, as in v2.7+); and ED attachments (PDF, CDA, HTML, RTF, plain text: see
  `documents.py`) in Base64, Hex or no encoding. An ED's data is the rest of OBX-5 after its
  fourth component, taken whole, because senders put CDA XML there with "&" and "~"
  unescaped. Pictures (ED or
  RP of an image type) and the DICOM study/series/instance UID observations that SR-to-HL7
  gateways add as ST lines are not report text and are skipped; other value types (NM, SN,
  ...) are not read. An observation marked wrong, deleted or unobtainable in OBX-11 (W, D, X)
  is not read, nor are its notes: its text is not the report.
* A line after the OBR that is not a segment is refused (InvalidField, located at the segment
  before it): a CR or LF inside a field (a wrapped Base64 attachment, a line break typed into
  the report) ends that segment early, and the rest of the field would be lost unseen.
* A result whose text cannot be read is never routed as "nothing found" (DOMAIN.md §5): an
  unreadable carrier (corrupt Base64, a PDF without a text layer, an attachment type not read
  here, an RP reference this engine cannot fetch) is InvalidField, even beside readable
  text (the unread part may hold the impression), and a result with neither text nor coded
  items is MissingField, both AE at OBX-5. A preliminary may carry no text yet (the flow
  holds it), but an unreadable one is refused: the flow reads it for critical findings. A
  cancellation (X) is never refused for its text: nothing of it is routed, and refusing it
  would leave the cancelled study's referrals and follow-up standing; its text is "" when a
  carrier cannot be read.
* Messages are split here (segments on CR, fields on MSH-1) rather than with python-hl7's
  `parse`, which builds a container for every repetition, component and subcomponent of every
  field; this module reads some twenty fields and splits only those, on demand. The fields are
  the strings python-hl7's tree joins back to (tests/ris/test_hl7v2.py checks every sample).
  Measured on the 2.5 KB, 21-segment sample: parse_oru 2.0 ms with python-hl7's parse, 0.3 ms
  split here; it was a third of the gateway's work per message (bench/bench_mllp.py).
* Escapes are decoded here rather than with python-hl7's `unescape`, which turns \\.br\\ into
  \\r (our segment separator), raises on a malformed \\.sp\\ count and logs field content (PHI).
* Coded items come from CE/CWE/CNE values (primary and alternate triplets) and from OBX-3 when
  it is coded in a finding terminology (SNOMED CT, RadLex, ICD). OBX-3 is the observation's
  name: LOINC and DICOM codes there name report sections and references (18782-3 Findings,
  19005-8 Impression, 113014 Study), and senders put free text in its system component
  (FHIR-Converter's ORU-R01-RMGEAD has a LOINC long name there), so only known systems count.
* Times are HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S…]]]]]][±ZZZZ]); without an offset they are site
  local time. All are returned in the site zone so that day arithmetic sees local dates. A
  birth date (PID-7) needs at least YYYYMMDD: a guessed day would mislead identity checks.
* A NUL character is not HL7 v2 content anywhere (and PostgreSQL text cannot hold one): the
  message is refused (AE) naming the field that holds the first (`check_no_nul`). Values longer
  than the columns they are stored in are refused too (AE), not cut: see `scan.py`.
* A phone that does not parse to a valid number becomes None: a bad phone must not block the
  follow-up, it only stops the SMS.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import phonenumbers

from followup.errors import (
    InvalidField,
    MalformedMessage,
    MissingField,
    UnsupportedMessage,
)
from followup.ris.documents import document_kind, document_text, is_picture
from followup.ris.scan import (
    CodedReportItem,
    PersonName,
    ProviderRef,
    ScanCompleted,
    check_scan_fits,
    language_code,
)

_UTF8_BOM = b"\xef\xbb\xbf"

# HL7 table 0211 names (plus the common non-standard "UTF-8") → Python codecs. UTF-16/32 are
# absent on purpose: their bytes cannot hold the ASCII "MSH|" this module looks for.
_CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc_kr",
}
_SINGLE_BYTE = {codec for codec in _CHARSETS.values() if codec.startswith("iso8859")}

_SUPPORTED_TYPE = "ORU^R01"
_PROCESSING_IDS = {"P", "T", "D"}
# HL7 table 0123, result status.
_RESULT_STATUSES = {"O", "I", "S", "A", "P", "C", "R", "F", "X", "Y", "Z"}

_TEXT_TYPES = {"TX", "ST", "FT"}
_CODED_TYPES = {"CE", "CWE", "CNE"}
_ATTACHMENT_TYPE = "ED"
_REFERENCE_TYPE = "RP"
# Result statuses that may carry no report text (see the module docstring).
_TEXT_OPTIONAL_STATUSES = {"P", "X"}
_CANCELLED = "X"
# OBX-11 (HL7 table 0085) of an observation whose value must not be read: W "post original as
# wrong" (e.g. sent for the wrong patient), D "delete", X "results cannot be obtained".
_WITHDRAWN_OBSERVATIONS = {"W", "D", "X"}
# A note (NTE) belongs to the OBR or OBX before it; participations (PRT) may sit between.
_NOTE_OWNERS = {"OBR", "OBX"}
_NOTE_NEIGHBOURS = {"NTE", "PRT"}
# HL7 table 0191 (type of referenced data) and MIME top-level types → MIME top-level type.
# SD (scanned document) is a picture of a report unless its subtype says PDF.
_ATTACHMENT_MAIN_TYPES = {
    "AP": "application", "APPLICATION": "application", "TEXT": "text", "FT": "text",
    "AU": "audio", "AUDIO": "audio", "IM": "image", "IMAGE": "image", "NS": "image",
    "SI": "image", "SD": "image", "VIDEO": "video", "MULTIPART": "multipart",
}  # fmt: skip
# HL7 table 0299 (ED encoding); dcm4che writes "ASCII" for none.
_NO_ENCODING = {"", "A", "ASCII"}
# HL7 table 0396 names (and common spellings) of terminologies whose codes name findings.
_FINDING_CODE_SYSTEMS = {
    "SCT", "SNM", "SNM3", "SNOMED", "SNOMED CT", "SNOMEDCT",  # SNOMED CT and predecessors
    "RADLEX",
    "I10", "I10C", "ICD10", "ICD-10", "ICD10CM", "ICD-10-CM", "I9C",
}  # fmt: skip
_DICOM_STUDY_REFERENCE = "113014"
_SEGMENT_NAME = re.compile("[A-Z][A-Z0-9]{2}")

# Fallback order from DOMAIN.md §5.
_PROVIDER_FIELDS = (("OBR", 16), ("ORC", 12), ("PV1", 8), ("PV1", 7))

_DTM = re.compile(
    r"(?P<year>\d{4})(?:(?P<month>\d{2})(?:(?P<day>\d{2})(?:(?P<hour>\d{2})(?:(?P<minute>\d{2})"
    r"(?:(?P<second>\d{2})(?:\.(?P<fraction>\d{1,4}))?)?)?)?)?)?"
    r"(?P<offset>[+-]\d{4})?",
    re.ASCII,  # \d would otherwise accept any Unicode digit
)


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """What an ACK needs from MSH, read without validating anything."""

    message_type: str  # MSH-9.1^MSH-9.2, e.g. "ORU^R01"
    trigger: str  # MSH-9.2
    control_id: str  # MSH-10, echoed in MSA-2
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1
    # Application/facility fields are kept as sent (escaped HD), to be echoed verbatim.
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    encoding_characters: str  # field separator + MSH-2, e.g. "|^~\\&"


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str
    repetition: str
    component: str
    subcomponent: str
    escape: str


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment as raw (still escaped) field strings: fields[n] is XXX-n, MSH included."""

    name: str
    fields: tuple[str, ...]

    def field(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """One message split into segments (MSH first), with the delimiters it declares."""

    delimiters: Delimiters
    segments: tuple[Segment, ...]


# ---------------------------------------------------------------------------------------------
# Bytes → text → segments and fields


def decode_message(raw: bytes) -> str:
    """Decode one HL7 v2 message; never raises. See the module docstring for the order."""
    data = raw.removeprefix(_UTF8_BOM)
    text = _decode(data, _encodings_to_try(_declared_charset(data)))
    return text.replace("\r\n", "\r").replace("\n", "\r")


def _declared_charset(data: bytes) -> str | None:
    """MSH-18 (first repetition) as a Python codec name, None when absent or unknown."""
    first_segment = re.split(rb"[\r\n]", data, maxsplit=1)[0]
    if not first_segment.startswith(b"MSH") or len(first_segment) < 4:
        return None
    fields = first_segment.split(first_segment[3:4])  # fields[n - 1] is MSH-n
    if len(fields) < 18:
        return None
    repetition = fields[1][1:2] or b"~"
    name = fields[17].split(repetition)[0].decode("ascii", errors="replace").strip().upper()
    return _CHARSETS.get(name)


def _encodings_to_try(declared: str | None) -> list[str]:
    if declared is None:
        return ["utf-8"]
    if declared in _SINGLE_BYTE:
        return ["utf-8", declared]
    return [declared, "utf-8"]


def _decode(data: bytes, encodings: Sequence[str]) -> str:
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")  # maps every byte, so this is the floor


def parse_message(text: str) -> ParsedMessage:
    """Split one message into segments and fields by its own delimiters (MSH-1, MSH-2);
    MalformedMessage (location MSH) when they cannot be read."""
    header, *others = text.strip().split("\r")
    _check_delimiters(header)
    field_separator = header[3]
    end_of_msh2 = header.find(field_separator, 4)
    encoding_characters = header[4:end_of_msh2]
    # MSH-1 is the field separator itself and MSH-2 holds the other delimiters, so MSH's
    # fields are counted from the character after "MSH".
    msh_fields = ["MSH", field_separator, encoding_characters]
    rest = header[end_of_msh2 + 1 :]
    if rest:
        msh_fields.extend(rest.split(field_separator))
    segments = [Segment(name="MSH", fields=tuple(msh_fields))]
    for raw in others:
        fields = tuple(raw.split(field_separator))
        segments.append(Segment(name=fields[0].strip(), fields=fields))
    delimiters = Delimiters(
        field=field_separator,
        component=encoding_characters[0],
        repetition=encoding_characters[1],
        escape=encoding_characters[2],
        subcomponent=encoding_characters[3],
    )
    return ParsedMessage(delimiters=delimiters, segments=tuple(segments))


def _check_delimiters(msh: str) -> None:
    """MSH-1/MSH-2 are the message's grammar: without them nothing after can be read.
    MSH-2 ends at the next field separator within MSH, never in a later segment."""
    if not msh.startswith("MSH") or len(msh) < 4:
        raise MalformedMessage("message does not start with an MSH segment", location="MSH")
    field_sep = msh[3]
    end = msh.find(field_sep, 4)
    encoding_chars = msh[4:end] if end != -1 else ""
    delimiters = field_sep + encoding_chars[:4]
    if (
        len(encoding_chars) < 4
        or len(set(delimiters)) != len(delimiters)
        or any(c.isalnum() or c.isspace() for c in delimiters)
    ):
        raise MalformedMessage("MSH-1/MSH-2 do not define the delimiters", location="MSH")


def message_header(msg: ParsedMessage) -> MessageHeader:
    """Read MSH without judging it, so an ACK can be built even for a message that fails."""
    delims = msg.delimiters
    msh = msg.segments[0]  # parse_message guarantees the first segment is MSH
    message_type = first_repetition(msh.field(9), delims)
    code = component_value(message_type, 1, delims)
    trigger = component_value(message_type, 2, delims)
    return MessageHeader(
        message_type=f"{code}^{trigger}" if trigger else code,
        trigger=trigger,
        control_id=msh.field(10),
        processing_id=field_value(msh, 11, 1, delims),
        version=field_value(msh, 12, 1, delims),
        sending_application=msh.field(3),
        sending_facility=msh.field(4),
        receiving_application=msh.field(5),
        receiving_facility=msh.field(6),
        encoding_characters=msh.field(1) + msh.field(2),
    )


# ---------------------------------------------------------------------------------------------
# ORU^R01 → ScanCompleted


def parse_oru(text: str, *, site_zone: ZoneInfo, phone_region: str = "US") -> ScanCompleted:
    """Validate one ORU^R01 and extract the ScanCompleted it reports.

    Raises an InboundMessageError subclass (and nothing else) when the message cannot be used.
    """
    msg = parse_message(text)
    header = message_header(msg)
    check_header(header, accepted_types=(_SUPPORTED_TYPE,))
    check_no_nul(text)
    delims = msg.delimiters
    segments = msg.segments

    obr_index = _the_obr_index(segments)
    obr = segments[obr_index]
    pid = _required_segment(segments, "PID", location="PID-3")
    accession, accession_field = _accession_and_field(obr, delims)
    result_status = _result_status(obr, delims)
    mrn = field_value(pid, 3, 1, delims)
    if not mrn:
        raise MissingField("patient identifier (MRN) is empty", location="PID-3")
    birth_date = parse_birth_date(field_value(pid, 7, 1, delims))
    procedure = first_repetition(obr.field(4), delims)
    after_obr = segments[obr_index + 1 :]
    observations = [seg for seg in after_obr if seg.name == "OBX"]
    exam_time = _time(obr, 7, delims, site_zone)
    result_time = _time(obr, 22, delims, site_zone)
    coded_items = _coded_items(observations, delims)
    report_text = _readable_report_text(after_obr, delims, result_status, bool(coded_items))

    scan = ScanCompleted(
        accession=accession,
        mrn=mrn,
        patient_name=person_name(first_repetition(pid.field(5), delims), delims),
        result_status=result_status,
        report_text=report_text,
        birth_date=birth_date,
        phone_e164=xtn_phone(pid.field(13), delims, phone_region),
        language=language_code(field_value(pid, 15, 1, delims)),
        ordering_provider=ordering_provider_of(segments, obr, delims),
        procedure_code=component_value(procedure, 1, delims),
        procedure_text=component_value(procedure, 2, delims),
        exam_time=exam_time,
        result_time=result_time,
        control_id=header.control_id,
        sending_facility=header.sending_facility,
        coded_items=coded_items,
    )
    check_scan_fits(
        scan,
        accession_at=f"OBR-{accession_field}",
        mrn_at="PID-3",
        name_at="PID-5",
        procedure_at="OBR-4",
        text_at="OBX-5",
    )
    return scan


def check_no_nul(text: str) -> None:
    """InvalidField naming the segment and field of the first NUL in the message."""
    text = text.lstrip()
    at = text.find("\x00")
    if at == -1:
        return
    start = text.rfind("\r", 0, at) + 1
    name = text[start : start + 3].replace("\x00", "?")
    separator = text[3:4]  # MSH-1
    separators_before = text.count(separator, start + 3, at) if at > start + 3 else 0
    # MSH-1 is the separator itself, so MSH counts one field more than other segments.
    number = separators_before + 1 if name == "MSH" else separators_before
    raise InvalidField(
        "a NUL character is not HL7 v2 content", location=f"{name}-{number}" if number else name
    )


def check_header(header: MessageHeader, *, accepted_types: Collection[str]) -> None:
    """Reject (AR) a message of the wrong type, processing id or version; refuse (AE) one
    without a control id, which its ACK could not name."""
    if header.message_type not in accepted_types:
        expected = ", ".join(sorted(accepted_types))
        raise UnsupportedMessage(
            f"message type {header.message_type or '(empty)'} is not {expected}",
            location="MSH-9",
        )
    if header.processing_id not in _PROCESSING_IDS:
        raise UnsupportedMessage(
            f"processing id {header.processing_id or '(empty)'} is not P, T or D",
            location="MSH-11",
        )
    if not header.version.startswith("2."):
        raise UnsupportedMessage(
            f"version {header.version or '(empty)'} is not HL7 v2", location="MSH-12"
        )
    if not header.control_id.strip():
        raise MissingField("message control id is empty", location="MSH-10")


def _the_obr_index(segments: Sequence[Segment]) -> int:
    indexes = [i for i, seg in enumerate(segments) if seg.name == "OBR"]
    if not indexes:
        raise MissingField("no OBR segment", location="OBR")
    if len(indexes) > 1:
        raise UnsupportedMessage(
            f"{len(indexes)} OBR groups; one study per message is supported", location="OBR"
        )
    return indexes[0]


def _required_segment(segments: Sequence[Segment], name: str, *, location: str) -> Segment:
    found = segment_named(segments, name)
    if found is None:
        raise MissingField(f"no {name} segment", location=location)
    return found


def segment_named(segments: Sequence[Segment], name: str) -> Segment | None:
    return next((seg for seg in segments if seg.name == name), None)


def obr_accession(obr: Segment, delims: Delimiters) -> str:
    return _accession_and_field(obr, delims)[0]


def _accession_and_field(obr: Segment, delims: Delimiters) -> tuple[str, int]:
    for number in (3, 18, 2):
        accession = field_value(obr, number, 1, delims)
        if accession:
            return accession, number
    raise MissingField("no accession in OBR-3, OBR-18 or OBR-2", location="OBR-3")


def _result_status(obr: Segment, delims: Delimiters) -> str:
    status = field_value(obr, 25, 1, delims)
    if not status:
        raise MissingField("result status is empty", location="OBR-25")
    if status not in _RESULT_STATUSES:
        raise InvalidField(f"result status {status!r} is not in HL7 table 0123", location="OBR-25")
    return status


def parse_birth_date(value: str) -> date | None:
    if not value:
        return None
    match = _DTM.fullmatch(value)
    if match is None or match["day"] is None:
        raise InvalidField(f"birth date {value!r} is not YYYYMMDD[...]", location="PID-7")
    try:
        return date(int(match["year"]), int(match["month"]), int(match["day"]))
    except ValueError as exc:
        raise InvalidField(f"birth date {value!r}: {exc}", location="PID-7") from exc


def _time(obr: Segment, number: int, delims: Delimiters, zone: ZoneInfo) -> datetime | None:
    value = field_value(obr, number, 1, delims)
    if not value:
        return None
    try:
        return parse_dtm(value, zone)
    except (ValueError, OverflowError) as exc:
        raise InvalidField(f"time {value!r}: {exc}", location=f"OBR-{number}") from exc


def parse_dtm(value: str, zone: ZoneInfo) -> datetime:
    """HL7 DTM to an aware datetime in `zone`; ValueError/OverflowError when invalid."""
    match = _DTM.fullmatch(value)
    if match is None:
        raise ValueError("not an HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    local = datetime(
        int(match["year"]),
        int(match["month"] or 1),
        int(match["day"] or 1),
        int(match["hour"] or 0),
        int(match["minute"] or 0),
        int(match["second"] or 0),
        int((match["fraction"] or "0").ljust(6, "0")),
    )
    offset = match["offset"]
    if offset is None:
        return local.replace(tzinfo=zone)
    return local.replace(tzinfo=_fixed_offset(offset)).astimezone(zone)


def _fixed_offset(offset: str) -> timezone:
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if minutes >= 60:
        raise ValueError(f"offset {offset} has {minutes} minutes")
    sign = -1 if offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))  # ValueError past 24 h


def person_name(xpn: str, delims: Delimiters) -> PersonName:
    return PersonName(family=component_value(xpn, 1, delims), given=component_value(xpn, 2, delims))


def xtn_phone(xtn_field: str, delims: Delimiters, region: str) -> str | None:
    """The first valid number, mobiles (equipment type CP) first: SMS needs a mobile."""
    numbers = repetitions(xtn_field, delims)
    mobiles_first = sorted(numbers, key=lambda rep: component_value(rep, 3, delims) != "CP")
    for repetition in mobiles_first:
        e164 = to_e164(_xtn_number(repetition, delims), region)
        if e164:
            return e164
    return None


def _xtn_number(xtn: str, delims: Delimiters) -> str:
    """XTN.1 (free-form, pre-2.6 style), else country code + area code + local number."""
    free_form = component_value(xtn, 1, delims)
    if free_form:
        return free_form
    country, area, local = (component_value(xtn, n, delims) for n in (5, 6, 7))
    return f"+{country}{area}{local}" if country else f"{area}{local}"


def to_e164(number: str, region: str) -> str | None:
    if not number:
        return None
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def ordering_provider_of(
    segments: Sequence[Segment], obr: Segment, delims: Delimiters
) -> ProviderRef | None:
    for name, number in _PROVIDER_FIELDS:
        segment = obr if name == "OBR" else segment_named(segments, name)
        if segment is None:
            continue
        xcn = first_repetition(segment.field(number), delims)
        provider = _provider(xcn, delims, source_field=f"{name}-{number}")
        if provider is not None:
            return provider
    return None


def _provider(xcn: str, delims: Delimiters, *, source_field: str) -> ProviderRef | None:
    """XCN: 1 id, 2 family name, 3 given name. No id → the name is the lookup key."""
    identifier, family, given = (component_value(xcn, n, delims) for n in (1, 2, 3))
    if not (identifier or family or given):
        return None
    return ProviderRef(
        identifier=identifier or f"name:{family}^{given}",
        name=PersonName(family=family, given=given) if family or given else None,
        source_field=source_field,
    )


def _readable_report_text(
    after_obr: Sequence[Segment], delims: Delimiters, result_status: str, coded: bool
) -> str:
    """The report text, or why there is none to route (see the module docstring)."""
    try:
        lines, skipped = _report_lines(after_obr, delims)
    except InvalidField:
        if result_status != _CANCELLED:
            raise
        return ""
    text = "\n".join(lines)
    if text.strip() or coded or result_status in _TEXT_OPTIONAL_STATUSES:
        return text
    not_read = f"; not report text: {', '.join(sorted(skipped))}" if skipped else ""
    raise MissingField(
        "the result has no report text (no text OBX-5, NTE-3 or readable attachment after "
        f"the OBR){not_read}",
        location="OBX-5",
    )


def _report_lines(after_obr: Sequence[Segment], delims: Delimiters) -> tuple[list[str], set[str]]:
    """Report lines from every carrier in message order, and what was passed over."""
    lines: list[str] = []
    skipped: set[str] = set()
    owner = "OBR"
    observations = 0
    _check_lines_are_segments(after_obr)
    for segment in after_obr:
        if not segment.name:
            continue  # a blank line (any other line that is not a segment was refused)
        if segment.name == "NTE":
            if owner in _NOTE_OWNERS:
                lines.extend(_text_lines(segment.field(3), delims))
            continue
        if segment.name not in _NOTE_NEIGHBOURS:
            owner = segment.name
        if segment.name != "OBX":
            continue
        observations += 1
        if field_value(segment, 11, 1, delims) in _WITHDRAWN_OBSERVATIONS:
            owner = "withdrawn OBX"  # its notes go with it
            skipped.add("observations marked wrong or deleted in OBX-11")
            continue
        try:
            lines.extend(_observation_lines(segment, delims, skipped))
        except InvalidField as problem:
            # ERR names the field only; the reason says which of many OBX it was.
            raise InvalidField(
                f"OBX #{observations} after the OBR: {problem.reason}", location=problem.location
            ) from problem
    return lines, skipped


def _check_lines_are_segments(after_obr: Sequence[Segment]) -> None:
    """A line break inside a field ends its segment early: refuse rather than lose the rest."""
    previous = "OBR"
    for segment in after_obr:
        if _SEGMENT_NAME.fullmatch(segment.name):
            previous = segment.name
        elif "".join(segment.fields).strip():  # blank lines between segments are harmless
            raise InvalidField(
                "a line after the OBR is not an HL7 segment: a line break inside the "
                f"{previous} before it cut that segment short",
                location=previous,
            )


def _observation_lines(obx: Segment, delims: Delimiters, skipped: set[str]) -> list[str]:
    """One OBX's report lines; what it holds that is not report text is added to `skipped`."""
    value_type = field_value(obx, 2, 1, delims)
    if value_type in _TEXT_TYPES:
        return [] if _is_uid_reference(obx, delims) else _text_lines(obx.field(5), delims)
    if value_type in _CODED_TYPES:
        return _uncoded_texts(obx.field(5), delims)
    if value_type == _ATTACHMENT_TYPE:
        attachment = _attachment_lines(obx.field(5), delims)
        if attachment is None:
            skipped.add("a picture or empty attachment")
        return attachment or []
    if value_type == _REFERENCE_TYPE:
        _check_reference(obx.field(5), delims)
        skipped.add("a reference to a picture")
        return []
    skipped.add(f"{value_type or 'untyped'} values")
    return []


def _text_lines(field: str, delims: Delimiters) -> list[str]:
    """A TX/FT/ST field: one line per repetition, and per line break inside one."""
    return [
        line.rstrip()
        for repetition in repetitions(field, delims, keep_empty=True)
        for line in unescape(repetition, delims).split("\n")
    ]


def _uncoded_texts(field: str, delims: Delimiters) -> list[str]:
    """The text of coded values sent without a code (CWE-2, CWE-5 or original text CWE-9)."""
    texts = []
    for repetition in repetitions(field, delims):
        if component_value(repetition, 1, delims) or component_value(repetition, 4, delims):
            continue  # coded: a coded item, routed by its code
        text = next(
            (t for t in (component_value(repetition, n, delims) for n in (2, 5, 9)) if t), ""
        )
        if text:
            texts.append(text)
    return texts


def _attachment_lines(field: str, delims: Delimiters) -> list[str] | None:
    """An ED value (source ^ type ^ subtype ^ encoding ^ data) as report lines; None for a
    picture or an empty attachment, which hold no report text."""
    components = field.split(delims.component, 4)
    components += [""] * (5 - len(components))
    type_of_data, subtype, encoding = (unescape(c, delims).strip() for c in components[1:4])
    data = unescape(components[4], delims)
    content_type = _attachment_media_type(type_of_data, subtype)
    if not data.strip() or (document_kind(content_type) is None and is_picture(content_type)):
        return None
    content = _attachment_content(data, encoding.upper())
    return document_text(content, content_type, location="OBX-5").split("\n")


def _attachment_media_type(type_of_data: str, subtype: str) -> str:
    """ED-2/ED-3 (or RP-3/RP-4) as a MIME type: "Application^PDF" → "application/pdf"."""
    subtype = subtype.lower()
    if "/" in subtype:  # some senders put the whole MIME type in the subtype
        return subtype
    main = _ATTACHMENT_MAIN_TYPES.get(type_of_data.upper(), type_of_data.lower())
    if main == "text" and subtype in ("", "plain", "txt"):
        return "text/plain"
    return f"{main}/{subtype}"


def _attachment_content(data: str, encoding: str) -> bytes | str:
    if encoding in _NO_ENCODING:
        return data
    try:
        if encoding in ("BASE64", "B64"):
            return base64.b64decode("".join(data.split()), validate=True)
        if encoding == "HEX":
            return bytes.fromhex("".join(data.split()))
    except ValueError as exc:  # binascii.Error is one
        raise InvalidField(
            f"the ED data is not valid {encoding.title()} ({exc})", location="OBX-5"
        ) from exc
    raise InvalidField(f"ED encoding {encoding[:16]!r} is not A, Hex or Base64", location="OBX-5")


def _check_reference(field: str, delims: Delimiters) -> None:
    """An RP value (pointer ^ application ^ type ^ subtype) may point at a picture, which is
    not report text; a pointer to anything else is the report itself, kept elsewhere."""
    type_of_data, subtype = (component_value(field, n, delims) for n in (3, 4))
    content_type = _attachment_media_type(type_of_data, subtype)
    if is_picture(content_type) and document_kind(content_type) is None:
        return
    raise InvalidField(
        "the report is a reference (RP) to a document elsewhere, which this engine does not "
        "fetch; send its text in the message",
        location="OBX-5",
    )


def _is_uid_reference(obx: Segment, delims: Delimiters) -> bool:
    """DICOM study/series/SOP instance UIDs that SR-to-HL7 gateways send as ST lines."""
    code, text = field_value(obx, 3, 1, delims), field_value(obx, 3, 2, delims)
    return code == _DICOM_STUDY_REFERENCE or text.upper().endswith("INSTANCE UID")


def _coded_items(
    observations: Sequence[Segment], delims: Delimiters
) -> tuple[CodedReportItem, ...]:
    items: list[CodedReportItem] = []
    for obx in observations:
        identifier = first_repetition(obx.field(3), delims)
        items.extend(
            item
            for item in _codings(identifier, delims)
            if item.system.upper() in _FINDING_CODE_SYSTEMS
        )
        if field_value(obx, 2, 1, delims) in _CODED_TYPES:
            for repetition in repetitions(obx.field(5), delims):
                items.extend(_codings(repetition, delims))
    return tuple(dict.fromkeys(items))  # the same code on several OBX lines counts once


def _codings(coded: str, delims: Delimiters) -> Iterator[CodedReportItem]:
    """CE/CWE/CNE triplets: 1-3 primary (code, text, system), 4-6 alternate."""
    for first in (1, 4):
        code, display, system = (component_value(coded, first + i, delims) for i in range(3))
        if code:
            yield CodedReportItem(system=system, code=code, display=display)


# ---------------------------------------------------------------------------------------------
# Field access on raw strings with the message's own delimiters


def repetitions(field: str, delims: Delimiters, *, keep_empty: bool = False) -> list[str]:
    return [rep for rep in field.split(delims.repetition) if keep_empty or rep]


def first_repetition(field: str, delims: Delimiters) -> str:
    return field.split(delims.repetition, 1)[0]


def field_value(segment: Segment, number: int, component: int, delims: Delimiters) -> str:
    return component_value(first_repetition(segment.field(number), delims), component, delims)


def component_value(repetition: str, component: int, delims: Delimiters) -> str:
    """Component `component` (1-based), first subcomponent, unescaped and stripped."""
    components = repetition.split(delims.component)
    if component > len(components):
        return ""
    first_subcomponent = components[component - 1].split(delims.subcomponent, 1)[0]
    return unescape(first_subcomponent, delims).strip()


def unescape(value: str, delims: Delimiters) -> str:
    if delims.escape not in value:
        return value
    esc = re.escape(delims.escape)
    return re.sub(f"{esc}([^{esc}]*){esc}", lambda m: _escape_sequence(m[1], delims), value)


def _escape_sequence(sequence: str, delims: Delimiters) -> str:
    delimiter = {
        "F": delims.field,
        "S": delims.component,
        "T": delims.subcomponent,
        "R": delims.repetition,
        "E": delims.escape,
    }.get(sequence)
    if delimiter is not None:
        return delimiter
    if sequence.startswith((".br", ".sp", ".ce")):
        return "\n"  # line structure matters for section splitting; spacing does not
    if sequence.startswith(".sk"):
        return " "  # skip spaces to the right: words on either side must stay apart
    if sequence.startswith("X"):
        return _hex_bytes(sequence[1:])
    return ""  # highlighting, indentation, charset switches: presentation only


def _hex_bytes(digits: str) -> str:
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return ""
    return _decode(data, ["utf-8"])
