"""Report documents sent as attachments → plain report text: pure functions, no I/O.

HL7 v2 ED values (OBX-5) and FHIR `presentedForm` attachments carry the report as a PDF, a CDA
document, HTML, RTF or plain text; both parsers read them here, by media type. Choices, and why:

* An attachment whose text cannot be read raises InvalidField (AE, HTTP 422) naming the
  element, never an empty text: an empty report routes as "nothing found" (DOMAIN.md §5).
* PDF: pypdf's text layer, page by page. A PDF without one (a scan) is refused: OCR is not
  this engine's job. pypdf raises many exception types on a damaged file; each is refused
  with its type name only, since pypdf's messages can quote the file's bytes (PHI).
* CDA: the narrative of the structuredBody, as a reader sees it: each section's <title> as a
  "Title:" line, then its <text>, subsections in order. The titles are kept because they are
  the report's section headers (Findings, Impression) that the classifier's section rule
  reads. Coded entries are not read: they restate the narrative, and narrative marked
  revised="delete" is text the author struck out. A level-one nonXMLBody is
  read as the attachment it wraps. Captions inside the narrative are written "Caption - text",
  not "Caption: text", so that a caption such as "History" inside Findings cannot end the
  Findings section for the classifier.
* XML is parsed with expat directly and any DOCTYPE is refused, as defusedxml does: no
  internal entity can expand (billion laughs), no external one can be fetched (XXE), and a CDA
  document never needs a DOCTYPE.
* HTML: the text a browser shows, one line per block (p, div, li, tr, headings, br), table
  cells apart; script, style and head are not read.
* RTF: a small reader of the control words that carry text (\\par, \\line, \\tab, \\'hh in
  Windows-1252, \\uN); destinations (font and colour tables, pictures, \\* groups) are skipped.
* Plain text is decoded with the charset given, UTF-8 by default, and kept as sent; the text
  drawn from PDF, CDA and RTF has its layout whitespace closed up and blank lines dropped.
* Pictures (image/*, audio, video, DICOM) are not report text: `is_picture` lets the callers
  skip them, so that a key image beside a text report does not block it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import io
import re
from html.parser import HTMLParser
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

from followup.errors import InvalidField

_PICTURE_TYPES = {"image", "audio", "video"}
# Picture formats by subtype too: HL7 senders type a key image "AP^JPEG" as often as "IM^JPEG".
_PICTURE_SUBTYPES = {"dicom", "jpeg", "jpg", "png", "gif", "tiff", "tif", "bmp"}


class DocumentKind(enum.IntEnum):
    """The document types read here, in the order a reader prefers them when a sender offers
    the same report in several (FHIR presentedForm): the most faithful text first."""

    PLAIN = 1
    CDA = 2
    HTML = 3
    RTF = 4
    PDF = 5


def media_type_of(content_type: str) -> str:
    """The media type alone, lower case: "Text/Plain; charset=UTF-8" → "text/plain"."""
    return content_type.partition(";")[0].strip().lower()


def charset_of(content_type: str, default: str = "utf-8") -> str:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return default


def is_picture(content_type: str) -> bool:
    main, _, sub = media_type_of(content_type).partition("/")
    return main in _PICTURE_TYPES or sub in _PICTURE_SUBTYPES


def document_kind(content_type: str) -> DocumentKind | None:
    """The kind of document a content type names; None for a type that is not read here."""
    media_type = media_type_of(content_type)
    sub = media_type.partition("/")[2]
    if "pdf" in sub:
        return DocumentKind.PDF
    if "xml" in sub or "cda" in sub:
        return DocumentKind.CDA
    if "html" in sub:
        return DocumentKind.HTML
    if "rtf" in sub:
        return DocumentKind.RTF
    if media_type == "text/plain":
        return DocumentKind.PLAIN
    return None


def document_text(content: bytes | str, content_type: str, *, location: str) -> str:
    """The report text of one attachment; InvalidField (at `location`) when there is none.

    `content` is str when the sender put the document in the message as text (HL7 ED with no
    encoding): it was decoded with the message already.
    """
    kind = document_kind(content_type)
    if kind is None:
        # Cut: the type is the sender's free text, and the answer only needs to name it.
        described = media_type_of(content_type)[:64] or "(none)"
        raise InvalidField(
            f"attachment type {described} is not read as report text", location=location
        )
    if kind is DocumentKind.PDF:
        if isinstance(content, str):
            raise InvalidField("a PDF attachment must be Base64 or Hex encoded", location=location)
        text = _pdf_text(content, location)
        if not text:
            raise InvalidField(
                "the PDF has no text layer (a scanned image?); its report cannot be read",
                location=location,
            )
        return text
    if kind is DocumentKind.CDA:
        text = _cda_text(content, location)
    else:
        decoded = _decoded(content, charset_of(content_type), location)
        if kind is DocumentKind.RTF:
            text = _rtf_text(decoded)
        elif kind is DocumentKind.HTML:
            text = _html_text(decoded, location)
        else:  # plain text is kept as sent: its line layout is the author's, not a renderer's
            text = decoded.strip()
    if not text:
        raise InvalidField(f"the {kind.name} attachment holds no text", location=location)
    return text


def _decoded(content: bytes | str, charset: str, location: str) -> str:
    if isinstance(content, str):
        return content.replace("\r\n", "\n").replace("\r", "\n")
    try:
        return content.decode(charset).replace("\r\n", "\n").replace("\r", "\n")
    except (LookupError, UnicodeDecodeError) as exc:
        raise InvalidField(
            f"the attachment is not readable as {charset}: {type(exc).__name__}",
            location=location,
        ) from exc


# C0 controls that str.split() does not count as whitespace: in extracted text they are font
# or encoding artefacts, not the author's, and a NUL would have the whole report refused.
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")


def _lines(lines: list[str]) -> str:
    """Extracted lines made storable: controls dropped, surrogate pairs joined (RTF \\uN and
    PDF text can hold them, and UTF-8 cannot) and lone ones replaced, spaces closed up, blank
    lines dropped."""
    text = _CONTROLS.sub("", "\n".join(lines))
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    cleaned = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in cleaned if line)


# ---------------------------------------------------------------------------------------------
# PDF


def _pdf_text(data: bytes, location: str) -> str:
    # Imported here: pypdf costs every process that parses HL7 0.1-0.3 s at start (measured
    # with -X importtime), and most results carry no PDF.
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        # Many report PDFs are encrypted with an empty user password (print/copy permissions
        # only); those open with "", others cannot be read here.
        locked = reader.is_encrypted and not reader.decrypt("")
        pages = [] if locked else [page.extract_text() for page in reader.pages]
    except Exception as exc:  # pypdf's errors on damaged input are many and not one family
        raise InvalidField(
            f"the PDF cannot be read ({type(exc).__name__})", location=location
        ) from exc
    if locked:
        raise InvalidField("the PDF is password protected", location=location)
    return _lines("\n".join(pages).split("\n"))


# ---------------------------------------------------------------------------------------------
# CDA

_BLOCK_TAGS = {"paragraph", "list", "item", "table", "tr", "thead", "tbody", "tfoot"}
_CELL_TAGS = {"td", "th"}
_NOT_TEXT_TAGS = {"footnoteRef", "renderMultiMedia"}


def _cda_text(content: bytes | str, location: str) -> str:
    root = _xml_tree(content, location)
    if root.tag != "ClinicalDocument":
        raise InvalidField("the XML attachment is not a CDA document", location=location)
    try:  # the narrative is walked recursively; a hostile document can nest without end
        return _cda_body_text(root, location)
    except RecursionError as exc:
        raise InvalidField(
            "the CDA document is nested too deeply to read", location=location
        ) from exc


def _cda_body_text(root: Element, location: str) -> str:
    body = _child(_child(root, "component"), "structuredBody")
    if body is None:
        return _non_xml_body_text(_child(_child(root, "component"), "nonXMLBody"), location)
    return _lines(
        [
            line
            for component in body.findall("component")
            for section in component.findall("section")
            for line in _section_lines(section)
        ]
    )


def _non_xml_body_text(body: Element | None, location: str) -> str:
    """CDA level one: the document is an attachment inside the CDA envelope."""
    text = _child(body, "text")
    if text is None:
        raise InvalidField("the CDA document has no body", location=location)
    if _child(text, "reference") is not None:
        raise InvalidField(
            "the CDA body is a reference to a document elsewhere, which is not fetched",
            location=location,
        )
    media_type = text.get("mediaType", "text/plain")
    if document_kind(media_type) is DocumentKind.CDA:
        raise InvalidField("a CDA document wraps another CDA document", location=location)
    data = "".join(text.itertext())
    if text.get("representation", "TXT").upper() != "B64":
        return document_text(data, media_type, location=location)
    try:
        decoded = base64.b64decode("".join(data.split()), validate=True)
    except binascii.Error as exc:
        raise InvalidField("the CDA body is not valid Base64", location=location) from exc
    return document_text(decoded, media_type, location=location)


def _section_lines(section: Element) -> list[str]:
    lines = []
    title = " ".join("".join(_child_texts(section, "title")).split())
    if title:
        lines.append(title if title.endswith(":") else f"{title}:")
    text = _child(section, "text")
    if text is not None:
        pieces: list[str] = []
        _narrative(text, pieces)
        lines.extend("".join(pieces).split("\n"))
    for component in section.findall("component"):
        for subsection in component.findall("section"):
            lines.extend(_section_lines(subsection))
    return lines


def _narrative(element: Element, pieces: list[str]) -> None:
    """CDA narrative block → text pieces, "\\n" where a block or line break ends a line."""
    if element.get("revised") == "delete":
        return  # struck out by the author in a revision: not part of the report
    if element.tag in _BLOCK_TAGS:
        pieces.append("\n")
    if element.tag == "br":
        pieces.append("\n")
    if element.tag not in _NOT_TEXT_TAGS:
        pieces.append(_spaced(element.text))
        for child in element:
            _narrative(child, pieces)
            pieces.append(_spaced(child.tail))
    if element.tag == "caption":
        pieces.append(" - ")
    elif element.tag in _CELL_TAGS:
        pieces.append("; ")
    elif element.tag in _BLOCK_TAGS:
        pieces.append("\n")


def _spaced(text: str | None) -> str:
    """XML layout whitespace as single spaces (line ends in <text> are layout, not breaks)."""
    return re.sub(r"\s+", " ", text) if text else ""


def _child(element: Element | None, tag: str) -> Element | None:
    return element.find(tag) if element is not None else None


def _child_texts(element: Element, tag: str) -> list[str]:
    found = element.find(tag)
    return list(found.itertext()) if found is not None else []


def _xml_tree(content: bytes | str, location: str) -> Element:
    """Parse XML with expat, refusing any DOCTYPE; elements and attributes by local name."""

    def refuse_doctype(*_: object) -> None:
        raise InvalidField(
            "the XML attachment declares a DOCTYPE, which is refused (entities)",
            location=location,
        )

    builder = TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = lambda name, attributes: builder.start(
        _local(name), {_local(key): value for key, value in attributes.items()}
    )
    parser.EndElementHandler = lambda name: builder.end(_local(name))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(content, True)
    except expat.ExpatError as exc:
        raise InvalidField(
            f"the XML attachment is not well-formed ({expat.ErrorString(exc.code)})",
            location=location,
        ) from exc
    return builder.close()


def _local(name: str) -> str:
    return name.rpartition("}")[2]


# ---------------------------------------------------------------------------------------------
# HTML

_HTML_BLOCK_TAGS = frozenset(
    {"p", "div", "li", "tr", "table", "ul", "ol", "dl", "dt", "dd", "blockquote", "pre", "hr"}
    | {"section", "article", "header", "footer", "h1", "h2", "h3", "h4", "h5", "h6"}
)
_HTML_NOT_TEXT_TAGS = frozenset({"script", "style", "head"})


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self._hidden = 0  # depth inside script/style/head
        self._preformatted = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_NOT_TEXT_TAGS:
            self._hidden += 1
        elif tag == "br" or tag in _HTML_BLOCK_TAGS:
            self.pieces.append("\n")
        self._preformatted += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_NOT_TEXT_TAGS:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _CELL_TAGS:
            self.pieces.append("; ")
        elif tag in _HTML_BLOCK_TAGS:
            self.pieces.append("\n")
        self._preformatted = max(0, self._preformatted - (tag == "pre"))

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.pieces.append(data if self._preformatted else _spaced(data))


def _html_text(html: str, location: str) -> str:
    reader = _HtmlText()
    try:
        reader.feed(html)
        reader.close()
    except Exception as exc:  # html.parser is lenient, but its rare errors are not one family
        raise InvalidField(
            f"the HTML cannot be read ({type(exc).__name__})", location=location
        ) from exc
    return _lines("".join(reader.pieces).split("\n"))


# ---------------------------------------------------------------------------------------------
# RTF

_RTF_TOKEN = re.compile(
    r"\\([a-zA-Z]{1,32})(-?\d{1,10})? ?"  # control word with an optional number
    r"|\\'([0-9a-fA-F]{2})"  # a byte in the document's code page
    r"|\\(.)"  # control symbol
    r"|([{}])"
    r"|[\r\n]+"  # line ends in RTF source are not text
    r"|([^\\{}\r\n]+)",
    re.DOTALL,
)
# Groups whose content is not document text.
_RTF_DESTINATIONS = frozenset(
    {
        "fonttbl", "colortbl", "stylesheet", "info", "pict", "header", "footer", "headerl",
        "headerr", "headerf", "footerl", "footerr", "footerf", "listtable", "listoverridetable",
        "rsidtbl", "generator", "xmlnstbl", "themedata", "colorschememapping", "latentstyles",
        "datastore", "object", "fldinst", "filetbl", "revtbl", "nonshppict", "shppict",
    }
)  # fmt: skip
_RTF_WORDS = {
    "par": "\n", "line": "\n", "sect": "\n", "page": "\n", "row": "\n", "cell": "; ",
    "tab": "\t", "emdash": "\u2014", "endash": "\u2013", "bullet": "\u2022",
    "lquote": "\u2018", "rquote": "\u2019", "ldblquote": "\u201c", "rdblquote": "\u201d",
}  # fmt: skip
_RTF_SYMBOLS = {"\\": "\\", "{": "{", "}": "}", "~": " ", "_": "-", "-": "", "\n": "\n", "\r": "\n"}


def _rtf_text(rtf: str) -> str:
    out: list[str] = []
    stack: list[tuple[bool, int]] = []
    skipping = False
    unicode_skip = 1  # \ucN: characters that stand in for each \uN for old readers
    to_skip = 0
    for match in _RTF_TOKEN.finditer(rtf):
        word, number, byte, symbol, brace, text = match.groups()
        if brace == "{":
            stack.append((skipping, unicode_skip))
        elif brace == "}":
            if stack:
                skipping, unicode_skip = stack.pop()
        elif symbol == "*" or word in _RTF_DESTINATIONS:
            skipping = True
        elif skipping:
            continue
        elif word == "uc":
            unicode_skip = int(number or 1)
        elif word == "u" and number is not None:
            out.append(chr(int(number) % 0x10000))
            to_skip = unicode_skip
        elif word is not None:
            out.append(_RTF_WORDS.get(word, ""))
        elif to_skip and (byte is not None or symbol is not None):
            to_skip -= 1
        elif byte is not None:
            out.append(bytes([int(byte, 16)]).decode("cp1252", errors="replace"))
        elif symbol is not None:
            out.append(_RTF_SYMBOLS.get(symbol, ""))
        elif text is not None:
            skipped, to_skip = text[:to_skip], max(0, to_skip - len(text))
            out.append(text[len(skipped) :])
    return _lines("".join(out).split("\n"))
