"""Every outbound SIU and REF against its HL7 v2.5.1 abstract message structure, parsed back
with python-hl7: segment order and cardinality, required fields, escaping."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import hl7
import pytest

from followup.ris import hl7v2
from followup.ris.outbound import (
    Envelope,
    PatientIdentity,
    ProviderIdentity,
    ReferralMessage,
    ReferralTrigger,
    VisitMessage,
    VisitTrigger,
    build_ref,
    build_siu,
    escape,
    referral_id_from,
)

# HL7 v2.5.1 chapter 10 (SIU_S12, shared by S12–S26) and chapter 11 (REF_I12, shared by
# I12–I15) as regular expressions over the segment names: [x] optional, {x} repeating.
SIU_S12 = re.compile(
    r"MSH SCH (TQ1 )*(NTE )*(PID (PD1 )?(PV1 )?(PV2 )?(OBX )*(DG1 )*)*"
    r"(RGS (AIS (NTE )*)*(AIG (NTE )*)*(AIL (NTE )*)*(AIP (NTE )*)*)+"
)
REF_I12 = re.compile(
    r"MSH (SFT )*(UAC )?(RF1 )?(AUT (CTD )?)*(PRD (CTD )?)+PID (NK1 )*(GT1 )?"
    r"(IN1 (IN2 )?(IN3 )?)*(ACC )?(DG1 )*(DRG )*(AL1 )*(PR1 (AUT (CTD )?)*)*"
    r"(OBR (NTE )*(OBX (NTE )*)*)*(PV1 (PV2 )?)?(NTE )*"
)
# Required (R) fields of the segments sent, by v2.5.1, plus the conditional ones this engine
# always fills because the receiver cannot match the message without them.
REQUIRED = {
    "MSH": (7, 9, 10, 11, 12),
    "SCH": (2, 6, 16, 20, 25),
    "TQ1": (7,),
    "PID": (3, 5),
    "RGS": (1,),
    "AIL": (1, 3),
    "AIP": (1, 3),
    "RF1": (1, 6),
    "PRD": (1, 2),
    "OBR": (4,),
    "OBX": (2, 3, 5, 11),
}

ENVELOPE = Envelope(
    control_id="FU-EHR-41",
    sent_at=datetime(2026, 12, 7, 15, 0, tzinfo=UTC),
    sending_facility="demo",
    receiving_application="EHR",
)
# Every delimiter, the escape character, a line break and non-ASCII text in the values.
PATIENT = PatientIdentity("MRN|7^A", "O'Brien~Ng", "José & Ana", date(1961, 3, 4))
PROVIDER = ProviderIdentity("1234567893", "Carter\\Hale", "Lee")


def visit(trigger: VisitTrigger) -> VisitMessage:
    return VisitMessage(
        trigger=trigger,
        visit_id=12,
        start=datetime(2026, 12, 9, 14, 30, tzinfo=UTC),
        minutes=30,
        patient=PATIENT,
        provider=PROVIDER,
        location="Spine & Pain | North",
    )


def referral(trigger: ReferralTrigger) -> ReferralMessage:
    return ReferralMessage(
        trigger=trigger,
        referral_id=33,
        specialty="neurology",
        urgency="urgent",
        reason="neurology: L5 root compression\r\nwith weakness",
        uncertain=False,
        patient=PATIENT,
        referring=PROVIDER,
        accession="ACC2026000101",
        procedure_code="MRLSPINE",
        procedure_text="MRI lumbar spine w/o",
        exam_time=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
        result_status="F",
        report_text="FINDINGS: disc | protrusion ^ L4-5\n\nIMPRESSION: root compression ~ L5 \\ &",
        opened_at=datetime(2026, 12, 7, 10, 0, tzinfo=UTC),
    )


def check_structure(text: str, structure: re.Pattern[str], message_type: str) -> hl7.Message:
    message = hl7.parse(text)
    names = " ".join(str(segment[0]) for segment in message) + " "
    assert structure.fullmatch(names), names
    for segment in message:
        for number in REQUIRED.get(str(segment[0]), ()):
            assert str(segment(number)).strip(), f"{segment[0]}-{number} is empty"
    msh = message.segment("MSH")
    assert str(msh(9)) == message_type
    assert str(msh(12)) == "2.5.1"
    assert str(msh(10)) == "FU-EHR-41"
    return message


@pytest.mark.parametrize("trigger", list(VisitTrigger))
def test_siu_has_the_v251_structure_and_round_trips(trigger: VisitTrigger) -> None:
    message = check_structure(
        build_siu(visit(trigger), ENVELOPE), SIU_S12, f"SIU^{trigger.value}^SIU_S12"
    )

    assert str(message["PID.F3.R1.C1"]) == "MRN|7^A"
    assert str(message["PID.F5.R1.C1"]) == "O'Brien~Ng"
    assert str(message["PID.F5.R1.C2"]) == "José & Ana"
    assert str(message["PID.F7"]) == "19610304"
    assert str(message["SCH.F2.R1.C1"]) == "VISIT12"
    assert str(message["TQ1.F7"]) == "20261209143000+0000"
    assert str(message["AIP.F3.R1.C2"]) == "Carter\\Hale"
    assert str(message["AIL.F3.R1.C4"]) == "Spine & Pain | North"
    expected_status = "Cancelled" if trigger == VisitTrigger.CANCELLED else "Booked"
    assert str(message["SCH.F25.R1.C1"]) == expected_status
    assert str(message["RGS.F2"]) == {"S12": "A", "S15": "D"}.get(trigger.value, "U")


@pytest.mark.parametrize("trigger", list(ReferralTrigger))
def test_ref_has_the_v251_structure_and_round_trips(trigger: ReferralTrigger) -> None:
    text = build_ref(referral(trigger), ENVELOPE)
    message = check_structure(text, REF_I12, f"REF^{trigger.value}^REF_I12")

    assert referral_id_from(str(message["RF1.F6.R1.C1"])) == 33
    assert str(message["RF1.F10.R1.C9"]) == ("neurology: L5 root compression with weakness")
    assert str(message["RF1.F2.R1.C1"]) == "A"
    roles = [str(segment(1)(1)(1)) for segment in message.segments("PRD")]
    assert roles == ["RP", "RT"]
    assert str(message["OBR.F3.R1.C1"]) == "ACC2026000101"
    lines = [message.unescape(str(segment(5))) for segment in message.segments("OBX")]
    assert lines == ["FINDINGS: disc | protrusion ^ L4-5", "IMPRESSION: root compression ~ L5 \\ &"]
    expected_status = "C" if trigger == ReferralTrigger.CANCELLED else "P"
    assert str(message["RF1.F1.R1.C1"]) == expected_status


def test_the_engines_own_parser_reads_them_back_too() -> None:
    """The gateway's parser (which reads the specialists' answers) sees the same values."""
    parsed = hl7v2.parse_message(build_ref(referral(ReferralTrigger.NEW), ENVELOPE))
    header = hl7v2.message_header(parsed)
    pid = next(segment for segment in parsed.segments if segment.name == "PID")

    assert header.message_type == "REF^I12"
    assert hl7v2.field_value(pid, 3, 1, parsed.delimiters) == "MRN|7^A"


def test_escape_breaks_lines_by_kind_of_text() -> None:
    assert escape("a\r\nb\rc\nd") == "a b c d"
    assert escape("a\nb", formatted=True) == "a\\.br\\b"
    assert escape("|^~\\&") == "\\F\\\\S\\\\R\\\\E\\\\T\\"
