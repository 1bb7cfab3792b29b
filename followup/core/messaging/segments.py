"""SMS encoding and segment counting, as carriers bill them.

A body is GSM-7 only when every character is in the GSM 03.38 basic set or its extension table;
one other character (a curly quote, an emoji, "á") switches the whole message to UCS-2.
"""

from __future__ import annotations

from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 default alphabet, in code order 0x00..0x7F without 0x1B (the escape to the extension
# table). 0x09 is the capital C cedilla, as in the Unicode consortium's GSM0338 mapping.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Reached through the escape character, so each costs two septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_GSM7_SINGLE, _GSM7_PART = 160, 153  # a concatenated part loses 7 septets to its UDH
_UCS2_SINGLE, _UCS2_PART = 70, 67


def sms_encoding(text: str) -> Encoding:
    """The encoding a carrier will use for this body."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        return "GSM-7"
    return "UCS-2"


def segment_count(text: str) -> int:
    """How many SMS this body is billed as; an empty body still goes out as one message."""
    if sms_encoding(text) == "GSM-7":
        units = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        single, per_part = _GSM7_SINGLE, _GSM7_PART
    else:
        # UTF-16 code units: a character outside the BMP (most emoji) is a surrogate pair.
        units = [len(ch.encode("utf-16-le")) // 2 for ch in text]
        single, per_part = _UCS2_SINGLE, _UCS2_PART
    if sum(units) <= single:
        return 1
    # Pack part by part: handsets never split an escape sequence or a surrogate pair across two
    # parts, so a 2-unit character that does not fit in what is left opens the next part.
    parts, used = 1, 0
    for size in units:
        if used + size > per_part:
            parts, used = parts + 1, 0
        used += size
    return parts
