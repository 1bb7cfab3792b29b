"""HL7 v2 orders (ORM^O01, OMI^O23) and patient administration (ADT^A04/A08/A31) → RisUpdate.

These messages start no flow: they only carry what later results rely on, the patient's
phone and language and the study's ordering provider. Pure parsing, like `hl7v2`, whose
field-access helpers (escapes, delimiters, phone and provider rules) are reused on purpose so
an order and its result are read by the same rules: the accession is found the way
`parse_oru` finds it, so the order and the result land on the same study.

* PID-15 (primary language, CWE) is reduced to a two-letter ISO 639-1 code, the key of the SMS
  template folders; "en-US", "SPA^Spanish^HL70296" and "eng" all work. An unknown language is
  None (the stored one is kept) rather than a guess.
* An order without any accession still updates its patient: nothing is dropped for want of a
  key that only results need.
"""

from __future__ import annotations

from dataclasses import dataclass

from followup.errors import MissingField
from followup.ris.hl7v2 import (
    Delimiters,
    Segment,
    check_header,
    check_no_nul,
    field_value,
    first_repetition,
    message_header,
    obr_accession,
    ordering_provider_of,
    parse_birth_date,
    parse_message,
    person_name,
    segment_named,
    xtn_phone,
)
from followup.ris.scan import PersonName, ProviderRef, check_patient_fits, language_code

ORDER_TYPES = frozenset({"ORM^O01", "OMI^O23"})
ADT_TYPES = frozenset({"ADT^A04", "ADT^A08", "ADT^A31"})
UPDATE_TYPES = ORDER_TYPES | ADT_TYPES

# ISO 639-2 (and HL7 table 0296's) three-letter codes of the languages seen most in US clinics.


@dataclass(frozen=True, slots=True)
class RisUpdate:
    """What an order or ADT message says about a patient (and, for orders, a study)."""

    message_type: str
    mrn: str
    patient_name: PersonName
    phone_e164: str | None = None
    language: str | None = None
    accession: str | None = None
    ordering_provider: ProviderRef | None = None


def parse_update(text: str, *, phone_region: str = "US") -> RisUpdate:
    """Validate one order or ADT message and extract what it updates."""
    check_no_nul(text)
    msg = parse_message(text)
    header = message_header(msg)
    check_header(header, accepted_types=UPDATE_TYPES)
    delims = msg.delimiters
    segments = msg.segments
    pid = segment_named(segments, "PID")
    if pid is None:
        raise MissingField("no PID segment", location="PID")
    mrn = field_value(pid, 3, 1, delims)
    if not mrn:
        raise MissingField("patient identifier (MRN) is empty", location="PID-3")
    parse_birth_date(field_value(pid, 7, 1, delims))  # a bad PID-7 is an AE here as in results
    is_order = header.message_type in ORDER_TYPES
    obr = segment_named(segments, "OBR") if is_order else None
    update = RisUpdate(
        message_type=header.message_type,
        mrn=mrn,
        patient_name=person_name(first_repetition(pid.field(5), delims), delims),
        phone_e164=xtn_phone(pid.field(13), delims, phone_region),
        language=language_code(field_value(pid, 15, 1, delims)),
        accession=_order_accession(obr, delims) if obr is not None else None,
        ordering_provider=(
            ordering_provider_of(segments, obr, delims) if obr is not None else None
        ),
    )
    check_patient_fits(
        mrn=update.mrn,
        name=update.patient_name,
        provider=update.ordering_provider,
        mrn_at="PID-3",
        name_at="PID-5",
    )
    return update


def _order_accession(obr: Segment, delims: Delimiters) -> str | None:
    try:
        return obr_accession(obr, delims)
    except MissingField:
        return None
