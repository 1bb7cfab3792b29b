"""Hard-wrapped report text: which line breaks are a wrap (followup.core.wrapping)."""

from __future__ import annotations

import textwrap

import pytest

from followup.core.wrapping import unwrap

PROSE = (
    "There is a large central disc extrusion at C5-6 which is compressing the spinal cord,"
    " with associated T2 signal change within the cord at this level."
)


@pytest.mark.parametrize("width", [40, 60, 80])
def test_a_wrapped_paragraph_is_one_line_again(width: int) -> None:
    wrapped = "\n".join(textwrap.wrap(PROSE, width))
    assert unwrap(wrapped) == PROSE.replace("\n", " ")
    assert len(unwrap(wrapped)) == len(wrapped)


@pytest.mark.parametrize(
    "text",
    [
        # telegraphic dictation without a capitalised line: every line is a finding
        "no stenosis at c4-5 or at c5-6 on this exam\nlarge herniation compressing the cord",
        # a writer's own short line: the next word would have fitted
        "FINDINGS: Mild disc bulges at several levels seen.\nAlso no stenosis\nlarge herniation"
        " compressing the cord at C6-7, which is the main finding of the whole study here.",
        # a stop, a colon or a semicolon ends the line
        "There is no canal stenosis at the C4-5 level whatsoever;\nlarge extrusion at C5-6.",
        # a list item, a level line or a header starts a line of its own
        "Multilevel degenerative change is seen through the cervical spine\n2. cord compression",
        "Multilevel degenerative change is seen through the cervical spine\nc5-6: extrusion",
        "Multilevel degenerative change is seen through the cervical spine\nimpression: normal",
    ],
)
def test_a_line_of_its_own_keeps_its_break(text: str) -> None:
    assert unwrap(text) == text


def test_carriage_returns_keep_the_length() -> None:
    text = "There is a large extrusion which is compressing the\r\nspinal cord at C5-6."
    assert (
        unwrap(text) == "There is a large extrusion which is compressing the  spinal cord at C5-6."
    )
