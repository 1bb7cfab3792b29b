"""Hard-wrapped report text joined back into its lines.

A RIS often sends a report wrapped at a fixed width, one OBX or NTE segment per line, so a
finding can be cut in two: "compression of the\\nspinal cord". Line breaks end sentences in
radiology text (followup.nlp), and a phrase split across one is not matched, so a wrapped
break is turned back into a space before the text is read.

A break is a wrap when the next line's first word would not have fitted on the line before it
within the report's longest line (a wrap cuts at the last space before the width, so a writer's
own short line is never joined), the line ends without a stop, colon or semicolon, and the next
line goes on in lower case without starting a list item, a spinal level line or a header.
Only prose reports are unwrapped (some line starts with a capitalised word): in all-lowercase
telegraphic dictation every line is a finding of its own, and joining two would let a denial in
one reach the next. The text keeps its length, character for character.
"""

from __future__ import annotations

import re
from itertools import pairwise

WRAPPED_LINE_MIN_CHARS = 20

_ENDS_A_LINE = re.compile(r"[.;:!?]\s*$")
_OWN_LINE_START = re.compile(
    r"\s*(?:\d+\s*[.)]|[-*•]|[a-z]\)|[ctls]\d{1,2}\b|[a-z][a-z /]{0,30}:)", re.IGNORECASE
)
_PROSE_LINE = re.compile(r"^\s*(?:\d+\s*[.)]\s*)?[A-Z][a-z]+\b", re.MULTILINE)


def unwrap(text: str) -> str:
    """The text with the line breaks of a hard wrap replaced by spaces (module docstring)."""
    if "\n" not in text or not _PROSE_LINE.search(text):
        return text
    lines = text.split("\n")
    width = max(len(line.rstrip()) for line in lines)
    out = []
    for line, following in pairwise(lines):
        content = line.rstrip("\r")
        length = len(content.rstrip())
        next_word = following.split(maxsplit=1)[0] if following.strip() else ""
        wrapped = (
            length >= WRAPPED_LINE_MIN_CHARS
            and length + 1 + len(next_word) > width
            and not _ENDS_A_LINE.search(content)
            and following[:1].islower()
            and not _OWN_LINE_START.match(following)
        )
        out.append(content + " " * (len(line) - len(content)) + (" " if wrapped else "\n"))
    out.append(lines[-1])
    return "".join(out)
