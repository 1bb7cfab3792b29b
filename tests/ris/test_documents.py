"""Attachment readers on damaged input: a text, or InvalidField, and nothing else."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter

from followup.errors import InvalidField
from followup.ris.documents import DocumentKind, document_kind, document_text
from tests.ris import sample_documents

CONTENT_TYPES = [
    "application/pdf",
    "text/xml",
    "application/rtf",
    "text/html; charset=utf-8",
    "text/plain; charset=utf-8",
    "text/plain; charset=no-such-charset",
]
PDF = sample_documents.pdf_with_lines(sample_documents.PDF_REPORT)
CDA = sample_documents.cda_with_sections(sample_documents.CDA_SECTIONS).encode()
RTF = rb"{\rtf1\ansi{\fonttbl{\f0 Arial;}}\f0 FINDINGS: Disc \'e9xtrusion.\par IMPRESSION: x.\par}"


@st.composite
def damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """The document with a few bytes changed, a slice cut out, or its end cut off."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    start = draw(st.integers(0, len(data)))
    end = draw(st.integers(start, min(len(data), start + 64)))
    del data[start:end]
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


def read(content: bytes | str, content_type: str) -> None:
    try:
        text = document_text(content, content_type, location="OBX-5")
    except InvalidField as problem:
        assert problem.location == "OBX-5"
        return
    assert text
    text.encode("utf-8")  # storable: no lone surrogate
    if document_kind(content_type) is not DocumentKind.PLAIN:
        # Extracted text drops NUL artefacts; in plain text a NUL is the sender's, refused
        # later with the other fields (scan.check_scan_fits).
        assert "\x00" not in text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=2048) | st.text(max_size=300).map(str.encode),
    st.sampled_from(CONTENT_TYPES),
)
def test_random_bytes_read_or_refused(data: bytes, content_type: str) -> None:
    read(data, content_type)


@pytest.mark.parametrize(
    ("original", "content_type"),
    [(PDF, "application/pdf"), (CDA, "text/xml"), (RTF, "application/rtf")],
    ids=["pdf", "cda", "rtf"],
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_documents_read_or_refused(
    original: bytes, content_type: str, data: st.DataObject
) -> None:
    read(data.draw(damaged(original)), content_type)


def _encrypted(user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(PDF)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_pdf_locked_only_against_editing_is_read() -> None:
    text = document_text(_encrypted(""), "application/pdf", location="OBX-5")

    assert text.split("\n") == sample_documents.PDF_REPORT


def test_a_pdf_that_needs_a_password_is_refused() -> None:
    with pytest.raises(InvalidField, match="password protected") as caught:
        document_text(_encrypted("secret"), "application/pdf", location="OBX-5")

    assert caught.value.location == "OBX-5"
