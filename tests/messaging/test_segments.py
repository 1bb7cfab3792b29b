"""Encoding and segment counts on strings whose billing is known."""

from __future__ import annotations

import pytest

from followup.core.messaging.segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    segment_count,
    sms_encoding,
)


def test_alphabet_sizes_match_gsm_03_38() -> None:
    # 128 codes in the default alphabet, one of which (0x1B) is the escape, not a character.
    assert len(GSM7_BASIC) == 127
    assert len(GSM7_EXTENSION) == 10
    assert not GSM7_BASIC & GSM7_EXTENSION


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("", "GSM-7", 1),
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # 160 septets
        ("€" + "a" * 159, "GSM-7", 2),  # 161 septets
        ("a" * 152 + "€" + "a" * 8, "GSM-7", 2),  # 162 septets, escape pair fits in part one
        ("a" * 152 + "€" * 77, "GSM-7", 3),  # the pair that would straddle 153 opens part two
        ("😀", "UCS-2", 1),
        ("a" * 159 + "😀", "UCS-2", 3),  # 161 UTF-16 units: 67 + 67 + 27
        ("á" * 70, "UCS-2", 1),
        ("á" * 71, "UCS-2", 2),
        ("á" * 134, "UCS-2", 2),
        ("á" * 135, "UCS-2", 3),
        ("a" * 65 + "😀" + "a" * 67, "UCS-2", 2),  # 134 units: the pair ends part one exactly
        ("a" * 66 + "😀" + "a" * 66, "UCS-2", 3),  # 134 units, but the pair cannot straddle 67
    ],
)
def test_known_strings(text: str, encoding: str, segments: int) -> None:
    assert sms_encoding(text) == encoding
    assert segment_count(text) == segments


@pytest.mark.parametrize("char", list("^{}[]~\\|€\f"))
def test_extension_characters_cost_two_septets(char: str) -> None:
    assert sms_encoding(char) == "GSM-7"
    assert segment_count(char * 80) == 1
    assert segment_count(char * 81) == 2


@pytest.mark.parametrize(
    "char",
    ["\u2019", "\u201c", "á", "í", "ó", "ú", "Á", "ç", "\u00a0", "\t", "`", "😀"],
)
def test_one_foreign_character_switches_to_ucs2(char: str) -> None:
    assert sms_encoding("Reply STOP to opt out" + char) == "UCS-2"


@pytest.mark.parametrize("char", ["é", "É", "ñ", "Ñ", "ü", "¿", "¡", "à", "@", "£", "\n"])
def test_spanish_and_symbols_that_stay_gsm7(char: str) -> None:
    assert sms_encoding("Responda STOP" + char) == "GSM-7"
