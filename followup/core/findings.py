"""Findings: what a report says about a concept, as plain data, and the spinal-level helpers.

The medspaCy pipeline that reads them out of report text lives in `followup.nlp`; this module
imports no NLP library, so the flow, the booking code and the database models can use findings
and decisions without loading spaCy (a second per flow-run process; see docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from followup.core.rules import RoutingRules

UNCLASSIFIED = "unclassified_abnormality"
"""Label of abnormal language that matched no rule (and of unknown codes): needs a human."""

CODED = "CODED"
"""Section name of findings that came as codes from the RIS rather than from text."""

UNHEADED = "REPORT"  # a report with no recognised header is read whole


@dataclass(frozen=True, slots=True)
class Finding:
    """One mention of a rule's concept in the routed text of a report (or one coded item).

    `uncertain` and `negated` can both be set ("suspected X is not supported by imaging"); the
    negation then wins. Hedges that mean "not excluded" ("unlikely but cannot be excluded") are
    single uncertainty cues, so they never produce that double flag.
    """

    label: str
    text: str
    negated: bool = False
    uncertain: bool = False
    historical: bool = False
    hypothetical: bool = False
    section: str = UNHEADED
    start: int = 0  # character offsets in the report text
    end: int = 0
    sentence: tuple[int, int] = (0, 0)  # character span of the sentence it was found in
    sentence_text: str = ""  # that sentence, quoted when a human must review it
    levels: tuple[str, ...] = ()  # spinal levels named in that sentence, e.g. ("L4-L5", "S1")
    qualifier: str = ""  # the word that re-labelled it, e.g. "enhancing"


@dataclass(frozen=True, slots=True)
class ReportFindings:
    findings: tuple[Finding, ...]
    routed_sections: tuple[str, ...]
    """Sections the findings were read from, e.g. ("IMPRESSION", "ADDENDUM"); empty when the
    report holds no routable text (blank, or only INDICATION/TECHNIQUE...)."""
    region: str | None = None
    """Body region the report is about (see `body_region`), None when it names none."""
    review_reasons: tuple[str, ...] = ()
    """Why a human must read the report, found while reading it (e.g. FINDINGS that name a
    finding the IMPRESSION leaves out)."""


class CodedItem(Protocol):
    """What a RIS coded item offers (followup.ris.scan.CodedReportItem fits)."""

    @property
    def system(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def display(self) -> str: ...


def findings_from_codes(items: Iterable[CodedItem], rules: RoutingRules) -> list[Finding]:
    """Coded report items → findings; an unknown code becomes UNCLASSIFIED (needs a human)."""
    findings = []
    for item in items:
        rule = rules.rule_for_code(item.system, item.code)
        findings.append(
            Finding(
                label=rule.label if rule else UNCLASSIFIED,
                text=item.display or f"{item.system} {item.code}",
                section=CODED,
            )
        )
    return findings


def levels_overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two sets of spinal levels name the same place.

    A single vertebra overlaps any range that contains it (the S1 root is at L5-S1); two ranges
    must share at least a whole segment, so adjacent disc levels (L4-L5 and L5-S1, which share
    only the L5 vertebra) are different places.
    """
    for first in a:
        lo_a, hi_a = _level_span(first)
        for second in b:
            lo_b, hi_b = _level_span(second)
            shared = min(hi_a, hi_b) - max(lo_a, lo_b)
            single = lo_a == hi_a or lo_b == hi_b
            if shared >= 1 or (single and shared >= 0):
                return True
    return False


def levels_within(inner: Sequence[str], outer: Sequence[str]) -> bool:
    """Whether every level of `inner` lies inside one of `outer`: "L4-L5" and the "L5" root are
    inside "L4-L5"; "L3-S1", or "L4-L5" with "L5-S1", also name places outside it."""

    def inside(level: str, other: str) -> bool:
        (low, high), (other_low, other_high) = _level_span(level), _level_span(other)
        return other_low <= low and high <= other_high

    return bool(inner and outer) and all(any(inside(a, b) for b in outer) for a in inner)


def apply_addendum(findings: list[Finding], keep: Collection[str] = ()) -> list[Finding]:
    """An addendum supersedes the report's statements about the same concept and place.

    The same concept is the same rule, or a wording the addendum's contains under another
    rule ("abscess" in the report, "no epidural abscess" in the addendum). A finding of a rule
    not in `keep` (the critical ones are kept) is superseded too by an addendum finding at the
    same spinal level that names the same structure: "degenerative endplate changes at L5-S1"
    read again as "endplate erosion at L5-S1, concerning for discitis".
    """
    addendum = [f for f in findings if f.section == "ADDENDUM" and f.label != UNCLASSIFIED]
    if not addendum:
        return findings
    return [
        finding
        for finding in findings
        if finding.section == "ADDENDUM"
        or not any(
            (
                (later.label == finding.label or _words(finding.text) <= _words(later.text))
                and same_place(later.levels, finding.levels)
            )
            or (finding.label not in keep and _same_structure(finding, later))
            for later in addendum
        )
    ]


_STRUCTURE_WORD = 5  # letters of a word that names a structure ("endplate", "facet", "annulus")


def _same_structure(earlier: Finding, later: Finding) -> bool:
    """Both at overlapping known spinal levels, their matched words sharing a word of
    `_STRUCTURE_WORD` letters or more."""
    if not (earlier.levels and later.levels and levels_overlap(earlier.levels, later.levels)):
        return False
    shared = {w for w in _words(earlier.text) & _words(later.text) if len(w) >= _STRUCTURE_WORD}
    return bool(shared)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


_SAME_WORD = 6  # letters two forms of a word share ("thalamic", "thalamus")
_FUNCTION_WORDS = frozenset({"with", "from", "this", "that", "there", "here", "also", "again"})


def restates(short: Finding, finding: Finding) -> bool:
    """Whether abnormal language of one section (`short`, "L1 fracture.") says a finding of
    another section again in fewer words (FINDINGS "acute compression fracture of the L1
    vertebral body with marrow edema"): its words are the finding's ("fracture"), and its
    sentence names no level, side or other word that the finding's sentence does not name."""
    if finding.section == short.section:
        return False
    stems = {word.removesuffix("s") for word in _words(short.text)}
    if not stems <= {word.removesuffix("s") for word in _words(finding.text)}:
        return False
    if short.levels and not (finding.levels and levels_overlap(short.levels, finding.levels)):
        return False
    # a shorter form says nothing new: each of its words ("left", "occipital", "thalamic") is
    # in the finding's sentence ("thalamus"); "left frontal hemorrhage" over a left occipital
    # one is another finding
    said = {word[:_SAME_WORD] for word in _words(finding.sentence_text)}
    return all(
        word[:_SAME_WORD] in said
        for word in _words(short.sentence_text)
        if len(word) >= 4 and word.isalpha() and word not in _FUNCTION_WORDS
    )


def body_region(text: str, rules: RoutingRules) -> str | None:
    """The body region whose word comes first in the report ("MRI RIGHT KNEE" → "joint"),
    None when the text names none of the rules' `regions` words."""
    pattern = _region_pattern(rules.regions)
    if pattern is None:
        return None
    found = pattern.search(text)
    return found.lastgroup if found else None


@lru_cache(maxsize=8)
def _region_pattern(regions: tuple[tuple[str, tuple[str, ...]], ...]) -> re.Pattern[str] | None:
    if not regions:
        return None
    groups = []
    for name, words in regions:
        alternatives = "|".join(
            r"[\s-]+".join(re.escape(part) for part in word.split()) for word in words
        )
        groups.append(f"(?P<{name}>(?<![a-z0-9])(?:{alternatives})(?![a-z0-9]))")
    return re.compile("|".join(groups), re.IGNORECASE)


def same_place(a: Sequence[str], b: Sequence[str]) -> bool:
    """Levels unknown on either side count as the same place (the cautious reading)."""
    return not a or not b or levels_overlap(a, b)


# --- spinal levels -----------------------------------------------------------------------------

_FIRST = {"C": 0, "T": 7, "L": 19, "S": 24}  # ordinal of C1, T1, L1, S1
_COUNT = {"C": 7, "T": 12, "L": 5, "S": 5}
_LEVEL_RE = re.compile(
    r"(?<![A-Za-z0-9])([CTLS])(\d{1,2})(?:\s*[-–/]\s*([CTLS])?(\d{1,2}))?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# "T2 hyperintense", "T1-weighted", "T2/FLAIR": an MRI sequence, not the T2 vertebra.
_SEQUENCE_AFTER = re.compile(
    r"\s*[-/]?\s*(weighted|w\b|signal|hyper|hypo|flair|stir|sequence|image|imaging|bright|dark|\*)",
    re.IGNORECASE,
)


def _ordinal(letter: str, number: str) -> int | None:
    value = int(number)
    return _FIRST[letter] + value - 1 if 1 <= value <= _COUNT[letter] else None


def spinal_levels(text: str) -> tuple[str, ...]:
    """Spinal levels named in a text, canonical: "L4-5" → "L4-L5", "s1" → "S1"."""
    levels: list[str] = []
    for match in _LEVEL_RE.finditer(text):
        letter, number, letter2, number2 = match.groups()
        letter = letter.upper()
        sequence = number2 is None and letter == "T" and number in {"1", "2"}
        if sequence and _SEQUENCE_AFTER.match(text, match.end()):
            continue
        first = _ordinal(letter, number)
        if first is None:
            continue
        name = f"{letter}{int(number)}"
        if number2 is not None:
            letter2 = (letter2 or letter).upper()
            second = _ordinal(letter2, number2)
            if second is None or second <= first:
                continue
            name = f"{name}-{letter2}{int(number2)}"
        if name not in levels:
            levels.append(name)
    return tuple(levels)


@lru_cache(maxsize=512)
def _level_span(name: str) -> tuple[int, int]:
    """Ordinal range of a canonical level name ("L4-L5" → (22, 23))."""
    ends = [_ordinal(part[0], part[1:]) for part in name.split("-")]
    first, last = ends[0], ends[-1]
    assert first is not None and last is not None  # names come from spinal_levels
    return first, last
