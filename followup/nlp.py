"""Report text → findings → decision, with medspaCy: sections, target matching and ConText.

Only this module loads spaCy and medspaCy (about a second of imports and pipeline building):
what runs where it is not needed (the gateway, the booking code) imports `followup.core.findings`
and `followup.core.routing` instead; the warm worker loads it once for all its scans.

The pipeline is built once per rules version and cached. Stage one reads the whole report:

    medspaCy tokenizer → radiology sentence splitter → Sectionizer (radiology headers)

stage two reads only the sections that are routed (see `_section_findings`):

    TargetMatcher (rule patterns + abnormal-language cues) → ConText (medspaCy's default
    rules, minus a few that misread radiology, plus radiology cues)

It loads no statistical model (nothing is downloaded at run time): `medspacy.load` starts from
`spacy.blank("en")`. medspaCy's default sentence splitter, PyRuSH, is not used: it measured
~37 ms for a 650-character report, over the whole 10 ms budget, while radiology reports split
reliably on line breaks, list markers and . ; ? !

Which text counts (DOMAIN.md §3): INDICATION / HISTORY / CLINICAL INFORMATION / COMPARISON /
TECHNIQUE / EXAM never produce findings; IMPRESSION is authoritative; FINDINGS (and level lines
without a header) are routed when there is no IMPRESSION, when the IMPRESSION points back to them
("as above") or names nothing the rules know (then a human is asked to review), and otherwise
read for affirmed critical findings (a critical finding anywhere in FINDINGS, IMPRESSION or an
addendum escalates) and for the findings that detail one the IMPRESSION states (the root
compression of "L4-5 extrusion", which supersedes it at its level); an ADDENDUM supersedes what
it speaks about; a report without any header is read whole. The body region (for the tests an
incomplete study suggests) comes from the exam title.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy
from loguru import logger as _loguru
from spacy.attrs import SENT_START
from spacy.language import Language
from spacy.matcher import Matcher, PhraseMatcher
from spacy.tokens import Doc, Span
from thinc.types import Ints2d

from followup.core.findings import (
    UNCLASSIFIED,
    UNHEADED,
    CodedItem,
    Finding,
    ReportFindings,
    apply_addendum,
    body_region,
    findings_from_codes,
    levels_overlap,
    restates,
    spinal_levels,
)
from followup.core.routing import Decision, decide_report
from followup.core.rules import RoutingRules, Rule, TokenPattern
from followup.core.spelling import respeller
from followup.core.wrapping import unwrap
from followup.errors import RulesError

with warnings.catch_warnings():
    # medspaCy's matcher module runs warnings.filterwarnings("ignore") at import time, which
    # would silence every warning in this process; catch_warnings restores the filters.
    import medspacy
    from medspacy.context import ConText, ConTextRule
    from medspacy.section_detection import Sectionizer, SectionRule
    from medspacy.target_matcher import TargetMatcher, TargetRule

# PyRuSH logs every sentence boundary at DEBUG through loguru; the others use std logging.
_loguru.disable("PyRuSH")
for _name in ("medspacy", "PyRuSH", "PyFastNER", "quickumls"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_TARGETS = "followup_targets"  # span group of matched concepts
_STAGE_TWO = ("medspacy_target_matcher", "medspacy_context")
_AUX = "FOLLOWUP_AUX"  # target label of cue / qualifier words, which are not findings themselves

_NEG, _POSS, _HIST, _HYPO = "NEGATED_EXISTENCE", "POSSIBLE_EXISTENCE", "HISTORICAL", "HYPOTHETICAL"
_CURRENT = "CURRENT"  # "stable", "unchanged", "again seen": the finding is present now

_SECTION_NAMES = {"impression": "IMPRESSION", "findings": "FINDINGS", "addendum": "ADDENDUM"}

# --- public API --------------------------------------------------------------------------------


def prepare(rules: RoutingRules) -> None:
    """Build (and cache) the pipeline for these rules now rather than at the first report."""
    _pipeline(rules)
    respeller(rules)


def classify_report(
    text: str, rules: RoutingRules, coded_items: Iterable[CodedItem] = ()
) -> Decision:
    """Route one report text (and the RIS's coded items for it, if any)."""
    return decide_report(
        analyze_report(text, rules), rules, coded_findings=findings_from_codes(coded_items, rules)
    )


def classify_reports(
    texts: Iterable[str], rules: RoutingRules, *, batch_size: int = 64
) -> list[Decision]:
    """Route many report texts in one batched pass through the NLP pipeline."""
    return [
        decide_report(analysis, rules)
        for analysis in analyze_reports(texts, rules, batch_size=batch_size)
    ]


def extract_findings(text: str, rules: RoutingRules) -> list[Finding]:
    """Findings from the routed sections of one report (negated ones included, flagged)."""
    return list(analyze_report(text, rules).findings)


def analyze_report(text: str, rules: RoutingRules) -> ReportFindings:
    nlp = _pipeline(rules)
    return _analyze(nlp, nlp(respeller(rules)(unwrap(text))), rules)


def analyze_reports(
    texts: Iterable[str], rules: RoutingRules, *, batch_size: int = 64
) -> Iterator[ReportFindings]:
    """Batched `analyze_report` (spaCy's nlp.pipe), in input order."""
    nlp = _pipeline(rules)
    respell = respeller(rules)
    for doc in nlp.pipe((respell(unwrap(text)) for text in texts), batch_size=batch_size):
        yield _analyze(nlp, doc, rules)


def assertion_status(sentence: str, concept: str) -> dict[str, bool]:
    """ConText assertion of any concept in any sentence, with this engine's rules.

    Made for measuring the negation engine on public corpora (e.g. the NegEx annotated
    sentences): `concept` must occur in `sentence` (case and spacing may differ).
    Returns the keys negated, uncertain, historical, hypothetical.
    """
    nlp = _pipeline(None)
    doc = nlp.get_pipe("followup_sentences")(nlp.make_doc(sentence))
    words = concept.split()
    if not words:
        raise ValueError("concept must not be empty")
    found = re.search(
        r"(?<!\w)" + r"\s+".join(re.escape(word) for word in words) + r"(?!\w)",
        sentence,
        flags=re.IGNORECASE,
    )
    if found is None:
        raise ValueError(f"concept {concept!r} does not occur in the sentence")
    span = doc.char_span(found.start(), found.end(), label="CONCEPT", alignment_mode="expand")
    if span is None:  # only possible for a concept made of whitespace-only tokens
        raise ValueError(f"concept {concept!r} does not align with the sentence's tokens")
    doc.spans[_TARGETS] = [span]
    doc = nlp.get_pipe("medspacy_context")(doc)
    negated, uncertain, historical, hypothetical = _assertion(
        doc.spans[_TARGETS][0], cues_inside_name_it=True
    )
    return {
        "negated": negated,
        "uncertain": uncertain,
        "historical": historical,
        "hypothetical": hypothetical,
    }


# --- pipeline ----------------------------------------------------------------------------------

_SENTENCE_END = frozenset({".", "!", "?", ";"})


@Language.component("followup_sentences")
def _split_sentences(doc: Doc) -> Doc:
    """Sentence starts for radiology text.

    A sentence starts after a line break, after . ! ? ; (but not after a "?" that asks about
    the next word, "?CES"; the tokenizer keeps "Dr.", "e.g." and
    "3.5" whole), and at an inline list marker "2)". ";" ends a sentence because radiologists
    join separate findings with it ("extrusion contacting S1; L4-5 protrusion"), and negation
    must not cross it. Section headers must start a sentence (see _section_rules), so
    "Correction to the impression:" inside an addendum is text, not a new section.
    """
    words = [token.text for token in doc]
    starts = [
        i == 0
        or (words[i - 1] in _SENTENCE_END and not _query_mark(doc, i - 1))
        or ("\n" in words[i - 1] and not words[i - 1].strip())
        or (words[i + 1 : i + 2] == [")"] and len(word) <= 2 and word.isdigit())
        for i, word in enumerate(words)
    ]
    if words:
        # One array write instead of a Python-level setter call per token; spaCy stores
        # attributes as uint64, so "not a start" (-1) is written wrapped, as to_array gives it.
        values = numpy.array([[1 if start else -1] for start in starts], dtype=numpy.int64)
        doc.from_array([SENT_START], cast(Ints2d, values.astype(numpy.uint64)))
    return doc


def _query_mark(doc: Doc, i: int) -> bool:
    """A question mark before a word ("?CES", "? infarct") asks about it: no sentence end."""
    return (
        doc[i].text == "?"
        and i + 1 < len(doc)
        and (not doc[i].whitespace_ or i == 0 or bool(doc[i - 1].whitespace_))
    )


# Radiology section headers; the category names the policy uses.
_SECTION_HEADERS = {
    "exam": ["exam", "examination", "study", "procedure", "type of exam"],
    "indication": [
        "indication",
        "indications",
        "clinical indication",
        "clinical indications",
        "reason for exam",
        "reason for examination",
        "reason for study",
        "reason for referral",
    ],
    "history": [
        "history",
        "hx",
        "clinical",
        "clinical history",
        "relevant history",
        "pertinent history",
    ],
    "clinical_information": [
        "clinical information",
        "clinical info",
        "clinical data",
        "clinical details",
        "clinical notes",
    ],
    "comparison": ["comparison", "comparisons", "prior studies", "prior exams"],
    "technique": ["technique", "protocol", "sequences", "contrast"],
    "findings": [
        "findings",
        "finding",
        "report",
        "result",
        "results",
        "observations",
        "description",
        "mri findings",
        "imaging findings",
    ],
    "impression": [
        "impression",
        "impressions",
        "conclusion",
        "conclusions",
        "summary",
        "opinion",
        "final impression",
        "diagnostic impression",
        "imp",
        "impr",
        "comment",
        "comments",
        "interpretation",
        "assessment",
        "discussion",
        "findings and impression",
        "findings / impression",
    ],
    "addendum": ["addendum"],
}
# Headers only at the start of a line or sentence: "OUTSIDE REPORT: possible cord compression"
# is a comparison, not this report's findings.
_LINE_START_ONLY = frozenset({"report", "result", "results", "description", "comment", "comments"})
# Written on a line of their own without a colon by some RIS templates.
_BARE_HEADERS = {"impression": "IMPRESSION", "findings": "FINDINGS", "addendum": "ADDENDUM"}


# "ADDENDUM (attending):", "Addendum (Dr Lee, 14:02):" - who wrote it, before the colon; the
# tokenizer keeps "):" as one token
_SIGNER: dict[str, Any] = {"ORTH": {"NOT_IN": [")", "):", "(", "\n"]}, "IS_SPACE": False, "OP": "?"}
_CLOSE_COLON: list[list[dict[str, Any]]] = [[{"ORTH": "):"}], [{"ORTH": ")"}, {"ORTH": ":"}]]


def _section_rules() -> list[SectionRule]:
    rules = []
    for category, phrases in _SECTION_HEADERS.items():
        for phrase in phrases:
            words = phrase.split()
            first = {"LOWER": words[0], "IS_SENT_START": True}
            tail: list[dict[str, Any]] = [{"LOWER": word} for word in words[1:]]
            caps: list[dict[str, Any]] = [{"ORTH": word.upper()} for word in words]
            ends: list[list[dict[str, Any]]] = [[{"ORTH": ":"}]]
            if category == "addendum":  # "Addendum #2:", "ADDENDUM (attending):"
                tail += [{"ORTH": "#", "OP": "?"}, {"IS_DIGIT": True, "OP": "?"}]
                caps += [{"ORTH": "#", "OP": "?"}, {"IS_DIGIT": True, "OP": "?"}]
                ends += [[{"ORTH": "("}, *[_SIGNER] * 4, *close] for close in _CLOSE_COLON]
            for end in ends:
                rules.append(SectionRule(phrase, category, pattern=[first, *tail, *end]))
                if phrase in _LINE_START_ONLY:
                    continue
                # An all-capitals header is a header wherever it is ("...at 10:32. IMPRESSION:").
                rules.append(SectionRule(phrase, category, pattern=[*caps, *end]))
    for category, word in _BARE_HEADERS.items():
        pattern = [{"ORTH": word, "IS_SENT_START": True}, {"IS_SPACE": True}]
        rules.append(SectionRule(word.lower(), category, pattern=pattern))
    return rules


def _rule(
    literal: str,
    category: str,
    direction: str,
    pattern: list[dict[str, Any]] | None = None,
    max_scope: int | None = None,
) -> ConTextRule:
    return ConTextRule(literal, category, pattern=pattern, direction=direction, max_scope=max_scope)


_NOT = {"LOWER": {"IN": ["not", "n't"]}}
_CAN_NOT = [{"LOWER": {"IN": ["can", "could", "ca"]}}, _NOT]
_ENTIRELY = {"LOWER": {"IN": ["entirely", "completely", "definitely", "fully"]}, "OP": "?"}
_BE = {"LOWER": {"IN": ["is", "are", "was", "were", "been", "remains", "remain"]}}
_COULD_NOT_LOCALIZE = frozenset(
    {
        "determined",
        "localized",
        "localised",
        "identified",
        "established",
        "isolated",
        "ascertained",
        "determinable",
        "localizable",
        "localisable",
        "identifiable",
    }
)
# what follows "resolved" when it speaks of the words before it: a stop, a line end, "on", "after"
_AFTER_RESOLVED = {"LOWER": {"REGEX": r"^(?:[.,;]|on|after|following|with|since|\s+)$"}}
_REPORTING_VERBS = frozenset({"mention", "describe", "report", "include", "comment"})
# Cues starting with "not" take an optional "is" in front: otherwise they tie in length with
# medspaCy's forward "is not" and overlap pruning may keep that one instead.

# Defaults replaced below (or dropped) because they misread radiology:
# "free" (backward negation) negates "free fragment" (a sequestered disc); "non diagnostic"
# negates what precedes it, but nondiagnostic is a finding here; "evaluate for", "to exclude",
# "rule out", "r/o" are requests (hypothetical), not negation or uncertainty; "ruled out" and
# "unlikely" get a bounded backward scope; FAMILY rules ("parent", "daughter") misfire on
# anatomy, and a radiology report only speaks about the patient; ": no" / ": none" would
# swallow the "No" of "IMPRESSION: No cord compression" and negate nothing.
# Words after "and"/"with" that start a new finding rather than continue a negated list.
_NEW_FINDING_WORDS = frozenset(
    {
        "a",
        "an",
        "with",
        "severe",
        "moderate",
        "mild",
        "large",
        "small",
        "multiple",
        "several",
        "marked",
        "extensive",
        "grade",
        "new",
        "significant",
        "minimal",
        "tiny",
        "broad",
        "complete",
        "full",
        "acute",
        "subacute",
    }
)

# A hedge about the clinical syndrome is not an imaging finding (DOMAIN.md §3 safety rules):
# "cauda equina syndrome is not excluded clinically, but no compressive lesion is seen".
_CLINICAL = "CLINICAL_SYNDROME"
# Only wordings that put the syndrome in the clinic: "in this clinical setting, findings could
# represent cauda equina syndrome" stays an (uncertain, escalated) imaging finding, and
# "correlate for cauda equina syndrome" stays a question that a human reviews.
_CLINICAL_CUES: list[tuple[str, str, list[dict[str, Any]]]] = [
    # longer than "cannot be excluded" / "is not excluded", so it replaces that hedge
    (
        "excluded clinically",
        "BACKWARD",
        [
            {"LOWER": {"IN": ["is", "are", "can", "could", "ca"]}, "OP": "?"},
            {"LOWER": {"IN": ["not", "n't"]}, "OP": "?"},
            {"LOWER": "be", "OP": "?"},
            {"LOWER": "excluded"},
            {"LOWER": "clinically"},
        ],
    ),
    (
        "clinically suspected",
        "FORWARD",
        [{"LOWER": "clinically"}, {"LOWER": {"IN": ["suspected", "suggested", "presumed"]}}],
    ),
    (
        "clinical suspicion",
        "FORWARD",
        [
            {"LOWER": "clinical"},
            {"LOWER": {"IN": ["suspicion", "concern", "question", "picture", "diagnosis"]}},
        ],
    ),
    (
        "symptoms of",
        "FORWARD",
        [
            {"LOWER": {"IN": ["symptoms", "symptom", "signs"]}},
            {"LOWER": {"IN": ["of", "suggesting", "suggestive", "concerning"]}},
        ],
    ),
    # "CES is a clinical diagnosis": said of the syndrome after it
    (
        "is a clinical diagnosis",
        "BACKWARD",
        [
            {"LOWER": {"IN": ["is", "remains"]}},
            {"LOWER": {"IN": ["a", "primarily"]}, "OP": "?"},
            {"LOWER": {"IN": ["clinical", "clinically"]}},
            {"LOWER": {"IN": ["diagnosis", "determination", "based"]}},
        ],
    ),
    # "cannot be excluded on imaging grounds alone": the imaging leaves the clinic to decide;
    # longer than "cannot be excluded", so it replaces that hedge
    (
        "excluded on imaging alone",
        "BACKWARD",
        [
            {"LOWER": {"IN": ["is", "are", "can", "could", "ca"]}, "OP": "?"},
            {"LOWER": {"IN": ["not", "n't"]}, "OP": "?"},
            {"LOWER": "be", "OP": "?"},
            {"LOWER": {"IN": ["excluded", "diagnosed", "confirmed"]}},
            {"LOWER": {"IN": ["on", "by"]}},
            {"LOWER": {"IN": ["imaging", "mri"]}},
            {"LOWER": "grounds", "OP": "?"},
            {"LOWER": "alone"},
        ],
    ),
    # "cannot be excluded on clinical grounds": the clinic decides, not the images
    (
        "excluded on clinical grounds",
        "BACKWARD",
        [
            {"LOWER": {"IN": ["is", "are", "can", "could", "ca"]}, "OP": "?"},
            {"LOWER": {"IN": ["not", "n't"]}, "OP": "?"},
            {"LOWER": "be", "OP": "?"},
            {"LOWER": {"IN": ["excluded", "diagnosed", "confirmed", "ruled"]}},
            {"LOWER": "out", "OP": "?"},
            {"LOWER": "on"},
            {"LOWER": {"IN": ["clinical", "clinically"]}},
            {"LOWER": {"IN": ["grounds", "basis", "assessment", "examination", "exam"]}},
        ],
    ),
    ("imaging correlate", "FORWARD", [{"LOWER": "imaging"}, {"LOWER": "correlate"}]),
    # "clinical ?CES": the clinician's question, shorthand
    ("clinical query", "FORWARD", [{"LOWER": {"IN": ["clinical", "clinically"]}}, {"ORTH": "?"}]),
    (
        "to explain",
        "FORWARD",
        [{"LOWER": "to"}, {"LOWER": {"IN": ["explain", "account"]}}, {"LOWER": "for", "OP": "?"}],
    ),
]
_SYNDROME = re.compile(r"\bsyndrome\b|^ces$", re.IGNORECASE)

_DROPPED_DEFAULTS = frozenset(
    {
        "free",
        "non diagnostic",
        "evaluate for",
        "to exclude",
        "rule out",
        "rule the patient out",
        "r/o",
        "ro",
        "ruled out",
        "unlikely",
        ": no",
        ": none",
        "no",
        "resolved",
    }
)

_ARTIFACT_KINDS = [
    "csf",
    "flow",
    "pulsation",
    "pulsatile",
    "motion",
    "susceptibility",
    "truncation",
    "gibbs",
    "phase",
    "ghosting",
    "chemical",
    "shift",
    "related",
    "-",
]

_ARTIFACT_VERBS = [
    "is",
    "are",
    "was",
    "were",
    "represents",
    "represent",
    "reflects",
    "reflect",
    "likely",
    "probably",
    "presumably",
    "compatible",
    "consistent",
]

_RADIOLOGY_CONTEXT = [
    # negation
    # medspaCy's "no" also takes a following "abnormal" or "new" into the cue, and a cue that
    # overlaps a target never modifies it: "No abnormal signal." (the target "abnormal signal")
    # and "No new lesions." were read as affirmed abnormalities
    _rule("no", _NEG, "FORWARD", [{"LOWER": "no"}]),
    _rule(
        "no evidence of",
        _NEG,
        "FORWARD",
        [
            {"LOWER": "no"},
            {
                "LOWER": {
                    "IN": [
                        "convincing",
                        "definite",
                        "definitive",
                        "significant",
                        "suspicious",
                        "acute",
                        "other",
                        "new",
                    ]
                },
                "OP": "?",
            },
            {"LOWER": "evidence"},
            {"LOWER": {"IN": ["of", "for"]}, "OP": "?"},
        ],
    ),
    _rule("neither", _NEG, "FORWARD"),
    # "non-compressive myelopathy", "non enhancing lesions": the prefix negates the next word
    # only, so the finding it qualifies ("myelopathy", "lesions") is still read.
    _rule("non-", _NEG, "FORWARD", [{"LOWER": "non"}, {"ORTH": "-", "OP": "?"}], max_scope=1),
    # "avascular necrosis, pre-collapse": the stage before the collapse, not a collapse
    _rule("pre-", _NEG, "FORWARD", [{"LOWER": "pre"}, {"ORTH": "-", "OP": "?"}], max_scope=1),
    # "demyelinating lesions, none enhancing", "none of which enhance": the lesions are read,
    # the word "none" denies what follows it closely (the enhancement)
    _rule(
        "none of which",
        _NEG,
        "FORWARD",
        [
            {"LOWER": "none"},
            {"LOWER": "of", "OP": "?"},
            {"LOWER": {"IN": ["which", "them", "these", "those"]}, "OP": "?"},
            {
                "LOWER": {"IN": ["is", "are", "shows", "show", "demonstrates", "demonstrate"]},
                "OP": "?",
            },
        ],
        max_scope=2,
    ),
    # "clinical myelopathy not explained": the word "clinical" right before a condition makes it
    # the clinician's diagnosis, which the study was asked about, not an imaging finding
    _rule(
        "clinical <condition>",
        _HYPO,
        "FORWARD",
        [{"LOWER": {"IN": ["clinical", "clinically"]}}],
        max_scope=1,
    ),
    # "no structural cause for the suspected myelopathy", "no imaging explanation for the
    # clinical myelopathy": the condition is the clinician's question, which the study answers
    # in the negative; the hedge word belongs to the cue, so it does not cut the negation short
    _rule(
        "no structural cause for",
        _NEG,
        "FORWARD",
        [
            {"LOWER": "no"},
            {
                "LOWER": {"IN": ["structural", "compressive", "imaging", "mri", "radiologic"]},
                "OP": "?",
            },
            {"LOWER": {"IN": ["cause", "explanation", "etiology", "source", "correlate"]}},
            {"LOWER": {"IN": ["for", "of"]}},
            {"LOWER": {"IN": ["the", "this", "a", "patient", "patient's", "'s"]}, "OP": "*"},
            {
                "LOWER": {"IN": ["suspected", "clinical", "clinically", "presumed", "reported"]},
                "OP": "*",
            },
        ],
        max_scope=4,
    ),
    # "Cord compression: none." - a checklist answer, so it must end the statement.
    _rule(
        ": no",
        _NEG,
        "BACKWARD",
        [{"ORTH": ":"}, {"LOWER": {"IN": ["no", "none"]}}, {"TEXT": {"REGEX": "^([.;,]|\\s+)$"}}],
    ),
    _rule(
        "interval resolution of",
        _NEG,
        "FORWARD",
        [{"LOWER": "interval", "OP": "?"}, {"LOWER": "resolution"}, {"LOWER": "of"}],
    ),
    _rule(
        "with interval resolution",
        _NEG,
        "BACKWARD",
        [{"LOWER": "interval"}, {"LOWER": {"IN": ["resolution", "resolved"]}}],
        max_scope=8,
    ),
    # "resolved abscess" (medspaCy's "resolved" scoped the whole sentence: "resolved hematoma,
    # residual cord compression" lost the compression) and, in telegraphic dictation,
    # "epidural abscess resolved, no residual collection": the longer backward cue wins where
    # both match, so a finding after "resolved," is left alone
    _rule("resolved", _NEG, "FORWARD", max_scope=3),
    # "resolved L3-4 discitis": the level is part of the cue, so the finding after it is in reach
    _rule(
        "resolved <level>",
        _NEG,
        "FORWARD",
        [
            {"LOWER": "resolved"},
            {"LOWER": {"REGEX": r"^([ctls]\d{1,2}|-|/|\d{1,2})$"}, "OP": "+"},
        ],
        max_scope=3,
    ),
    # "the apparent T7 abnormality is CSF flow artifact", "signal change, likely susceptibility
    # artefact": what the words just before it name is no finding
    _rule(
        "is artifact",
        _NEG,
        "BACKWARD",
        [
            {"LOWER": {"IN": _ARTIFACT_VERBS}},
            {"LOWER": {"IN": [*_ARTIFACT_KINDS, "with", "likely", "most", "a", "an"]}, "OP": "*"},
            {"LOWER": {"IN": ["artifact", "artifacts", "artefact", "artefacts", "artifactual"]}},
        ],
        max_scope=5,
    ),
    _rule("X resolved", _NEG, "BACKWARD", [{"LOWER": "resolved"}, _AFTER_RESOLVED], max_scope=4),
    # "epidural abscess, not resolved", "partially resolved": still there
    _rule(
        "not resolved",
        "PSEUDO",
        "PSEUDO",
        [
            {"LOWER": {"IN": ["not", "n't", "incompletely", "partially", "partly", "never"]}},
            {"LOWER": {"IN": ["completely", "fully", "yet", "entirely"]}, "OP": "?"},
            {"LOWER": "resolved"},
            _AFTER_RESOLVED,
        ],
    ),
    # a structured report's field: "Cord compression: none", "Retropulsion: absent"
    _rule(
        ": none",
        _NEG,
        "BACKWARD",
        [
            {"ORTH": {"IN": [":", "-", "–"]}},
            {"LOWER": {"IN": ["none", "absent", "negative", "nil"]}},
        ],
        max_scope=4,
    ),
    # ...but "Epidural space: negative for epidural abscess" denies what follows; the longer
    # cue replaces the one above
    _rule(
        ": negative for",
        _NEG,
        "FORWARD",
        [
            {"ORTH": {"IN": [":", "-", "–"]}},
            {"LOWER": {"IN": ["negative", "none", "nil"]}},
            {"LOWER": "for"},
        ],
    ),
    # "Diffusion-weighted images are negative for restricted diffusion": longer than medspaCy's
    # backward "are negative" (which would deny the images and leave the finding asserted)
    _rule(
        "is negative for",
        _NEG,
        "FORWARD",
        [
            {"LOWER": {"IN": ["is", "are", "was", "were", "remains", "remain"]}},
            {"LOWER": {"IN": ["negative", "neg"]}},
            {"LOWER": "for"},
        ],
    ),
    _rule(
        "has resolved",
        _NEG,
        "BACKWARD",
        [
            {"LOWER": {"IN": ["has", "have", "is", "are", "was", "were"]}},
            {
                "LOWER": {"IN": ["since", "now", "completely", "largely", "nearly", "entirely"]},
                "OP": "?",
            },
            {"LOWER": "resolved"},
        ],
        max_scope=8,
    ),
    _rule(
        "no longer seen",
        _NEG,
        "BACKWARD",
        [
            {"LOWER": "no"},
            {"LOWER": "longer"},
            {
                "LOWER": {
                    "IN": [
                        "seen",
                        "visualized",
                        "identified",
                        "evident",
                        "present",
                        "demonstrated",
                        "appreciated",
                    ]
                }
            },
        ],
        max_scope=8,
    ),
    _rule(
        "not seen",
        _NEG,
        "BACKWARD",
        [
            {**_BE, "OP": "?"},
            _NOT,
            {
                "LOWER": {
                    "IN": [
                        "seen",
                        "identified",
                        "visualized",
                        "demonstrated",
                        "evident",
                        "present",
                        "appreciated",
                        "detected",
                    ]
                }
            },
        ],
        max_scope=8,
    ),
    _rule(
        "not supported",
        _NEG,
        "BACKWARD",
        [{**_BE, "OP": "?"}, _NOT, {"LOWER": {"IN": ["supported", "confirmed", "substantiated"]}}],
        max_scope=8,
    ),
    _rule("is absent", _NEG, "BACKWARD", [_BE, {"LOWER": "absent"}], max_scope=6),
    # "Cord signal normal.", "cord signal is normal", "normal cord signal"; never "the cord is
    # compressed and normal in signal" (no "is" before, no statement end after)
    _rule(
        "is normal",
        _NEG,
        "BACKWARD",
        [_BE, {"LOWER": {"IN": ["normal", "unremarkable"]}}],
        max_scope=3,
    ),
    _rule(
        "normal.",
        _NEG,
        "BACKWARD",
        [{"LOWER": {"IN": ["normal", "unremarkable"]}}, {"TEXT": {"REGEX": "^[.;,]$"}}],
        max_scope=2,
    ),
    _rule("normal", _NEG, "FORWARD", max_scope=2),
    # "plexopathy cannot be assessed": the finding is a question the study could not answer
    _rule(
        "cannot be assessed",
        _HYPO,
        "BACKWARD",
        [
            {"LOWER": {"IN": ["can", "could", "ca", "is", "are", "was", "were"]}},
            _NOT,
            {"LOWER": "be", "OP": "?"},
            {"LOWER": {"IN": ["adequately", "fully", "reliably", "well"]}, "OP": "?"},
            {"LOWER": {"IN": ["assessed", "evaluated", "characterized", "visualized"]}},
        ],
        max_scope=6,
    ),
    _rule("is excluded", _NEG, "BACKWARD", [_BE, {"LOWER": "excluded"}], max_scope=8),
    _rule(
        "ruled out",
        _NEG,
        "BACKWARD",
        [{"LOWER": {"IN": ["ruled", "rules"]}}, {"LOWER": "out"}],
        max_scope=8,
    ),
    _rule("unlikely", _NEG, "BACKWARD", max_scope=8),
    _rule(
        "unlikely to represent",
        _NEG,
        "FORWARD",
        [
            {"LOWER": "unlikely"},
            {"LOWER": "to"},
            {"LOWER": {"IN": ["represent", "be", "reflect", "indicate"]}},
        ],
    ),
    # uncertainty
    *(
        _rule(literal, _POSS, "FORWARD")
        for literal in (
            "probable",
            "possibly",
            "questionable",
            "suspected",
            "suspect",
            "suspicious of",
            "suggests",
            "suggest",
            "suggesting",
            "may represent",
            "may reflect",
            "could represent",
            "could reflect",
            "might represent",
            "can represent",
            "compatible with",
            "equivocal",
            "indeterminate",
            "presumed",
            "presumably",
            "favored",
            "favor",
            "differential includes",
            "differential diagnosis includes",
            "raising concern for",
            "question of",
            "can be seen with",
            "can be seen in",
            "not able to exclude",
        )
    ),
    _rule("cannot exclude", _POSS, "FORWARD", [*_CAN_NOT, {"LOWER": "exclude"}]),
    _rule("cannot rule out", _POSS, "FORWARD", [*_CAN_NOT, {"LOWER": "rule"}, {"LOWER": "out"}]),
    _rule(
        "cannot be excluded",
        _POSS,
        "BACKWARD",
        [
            *_CAN_NOT,
            {"LOWER": "be"},
            _ENTIRELY,
            {"LOWER": {"IN": ["excluded", "ruled"]}},
            {"LOWER": "out", "OP": "?"},
        ],
    ),
    _rule(
        "not excluded",
        _POSS,
        "BACKWARD",
        [{**_BE, "OP": "?"}, _NOT, _ENTIRELY, {"LOWER": "excluded"}],
    ),
    # One modifier for the whole phrase, so "unlikely" does not negate and "but" does not cut.
    _rule(
        "unlikely but cannot be excluded",
        _POSS,
        "BACKWARD",
        [
            {"LOWER": "unlikely"},
            {"ORTH": ",", "OP": "?"},
            {"LOWER": {"IN": ["but", "though", "although", "however"]}},
            {"ORTH": ",", "OP": "?"},
            {"LOWER": {"IN": ["it", "this"]}, "OP": "?"},
            {"LOWER": {"IN": ["can", "could", "ca", "is"]}, "OP": "?"},
            _NOT,
            {"LOWER": "be", "OP": "?"},
            _ENTIRELY,
            {"LOWER": {"IN": ["excluded", "ruled"]}},
            {"LOWER": "out", "OP": "?"},
        ],
    ),
    _rule(
        "is possible",
        _POSS,
        "BACKWARD",
        [
            _BE,
            {
                "LOWER": {
                    "IN": [
                        "possible",
                        "likely",
                        "probable",
                        "suspected",
                        "questioned",
                        "considered",
                        "favored",
                    ]
                }
            },
        ],
        max_scope=8,
    ),
    _rule(
        "versus", _POSS, "BIDIRECTIONAL", [{"LOWER": {"IN": ["versus", "vs", "vs."]}}], max_scope=6
    ),
    # history ("stable"/"unchanged" findings are present: the CURRENT rules below win)
    *(
        _rule(literal, _HIST, "FORWARD")
        for literal in (
            "previously seen",
            "previously noted",
            "previously described",
            "previously demonstrated",
            "previously identified",
            "previously reported",
        )
    ),
    _rule("previous", _HIST, "FORWARD", max_scope=3),
    # present now
    *(
        _rule(literal, _CURRENT, "BIDIRECTIONAL")
        for literal in (
            "unchanged",
            "stable",
            "again seen",
            "again noted",
            "again demonstrated",
            "again identified",
            "redemonstrated",
            "re-demonstrated",
            "redemonstration",
            "persistent",
            "persists",
            "persisting",
            "residual",
            "remains",
            "similar",
            "increased",
            "increasing",
            "enlarged",
            "enlarging",
            "progressed",
            "progression",
            "progressive",
            "worsened",
            "worsening",
            "decreased",
            "decreasing",
            "smaller",
            "larger",
            "improved",
            "improving",
            "new",
            "interval development",
            "interval increase",
            "interval decrease",
        )
    ),
    # "no (significant) (interval) change in X" says X is there: longer than "no", so it wins.
    _rule(
        "no change",
        _CURRENT,
        "BIDIRECTIONAL",
        [
            {"LOWER": {"IN": ["no", "without"]}},
            {"LOWER": {"IN": ["significant", "interval", "appreciable", "substantial"]}, "OP": "*"},
            {"LOWER": "change"},
        ],
    ),
    _rule(
        "not significantly changed",
        _CURRENT,
        "BIDIRECTIONAL",
        [
            {"LOWER": {"IN": ["has", "have", "is", "are"]}, "OP": "?"},
            _NOT,
            {"LOWER": {"IN": ["significantly", "appreciably", "substantially"]}, "OP": "?"},
            {"LOWER": "changed"},
        ],
    ),
    # requests, not findings
    _rule(
        "rule out",
        _HYPO,
        "FORWARD",
        [
            {"LOWER": {"IN": ["may", "might", "must", "should", "will", "could", "to"]}, "OP": "?"},
            {"LOWER": "rule"},
            {"LOWER": {"IN": ["him", "her", "them", "patient", "pt"]}, "OP": "?"},
            {"LOWER": "out"},
            {"LOWER": {"IN": ["against", "for"]}, "OP": "?"},
        ],
    ),
    *(
        _rule(literal, _HYPO, "FORWARD")
        for literal in (
            "r/o",
            "to exclude",
            "evaluate for",
            "to evaluate for",
            "eval for",
            "assess for",
            "to assess for",
            "correlate for",
            "correlation for",
            "in case of",
            "if there is",
        )
    ),
    *(
        _rule(literal, _CLINICAL, direction, pattern, max_scope=8)
        for literal, direction, pattern in _CLINICAL_CUES
    ),
    # "patient with CES symptoms": the word right before it names the syndrome the patient has
    # ("consistent with CES given the patient's symptoms" stays an imaging finding)
    _rule(
        "syndrome symptoms",
        _CLINICAL,
        "BACKWARD",
        [{"LOWER": {"IN": ["symptoms", "symptom", "signs", "symptomatology", "presentation"]}}],
        max_scope=1,
    ),
    # "no signal abnormality to suggest X": the negation carries on; "suggest" is no hedge here
    *(_rule(literal, "PSEUDO", "PSEUDO") for literal in ("to suggest", "to indicate")),
    # "the patient could not complete the examination" is an incomplete study, not a negation;
    # so are "images were not obtained" and a device that is "not MR conditional"
    *(
        _rule(literal, "PSEUDO", "PSEUDO")
        for literal in (
            "could not complete",
            "did not complete",
            "not completed",
            "could not tolerate",
            "did not tolerate",
            "not tolerated",
            "not obtained",
            "not mr conditional",
            "not mri conditional",
            # "post-contrast images, not available at the time of the original read, show an
            # epidural abscess": a statement about the images
            "not available",
        )
    ),
    # What the study could not do is a finding of its own (rule localization), not a negation:
    # "the symptomatic level cannot be determined", "pain generator is not identified"
    _rule(
        "level cannot be localized",
        "PSEUDO",
        "PSEUDO",
        [
            {
                "LOWER": {
                    "IN": ["level", "levels", "segment", "segments", "generator", "generators"]
                }
            },
            {"LOWER": {"IN": ["can", "could", "ca", "is", "are", "was", "were"]}, "OP": "?"},
            _NOT,
            {"LOWER": "be", "OP": "?"},
            {"LOWER": {"IN": sorted(_COULD_NOT_LOCALIZE)}},
        ],
    ),
    # An addendum about the report itself: "the original report did not mention compression of
    # the cauda equina; this is present" affirms the compression
    _rule(
        "did not mention",
        "PSEUDO",
        "PSEUDO",
        [
            {"LOWER": {"IN": ["did", "does", "do"]}},
            _NOT,
            {"LOWER": {"IN": sorted(_REPORTING_VERBS)}},
        ],
    ),
    _rule(
        "failed to mention",
        "PSEUDO",
        "PSEUDO",
        [
            {"LOWER": {"IN": ["failed", "fails", "neglected"]}},
            {"LOWER": "to"},
            {"LOWER": {"IN": sorted(_REPORTING_VERBS)}},
        ],
    ),
    _rule(
        "not mentioned in the original report",
        "PSEUDO",
        "PSEUDO",
        [
            _NOT,
            {"LOWER": {"IN": ["mentioned", "described", "reported", "included"]}},
            {"LOWER": {"IN": ["in", "on", "by"]}},
            {"LOWER": {"IN": ["the", "this"]}},
            {"LOWER": {"IN": ["original", "initial", "preliminary", "first"]}},
            {"LOWER": {"IN": ["report", "dictation", "read", "interpretation"]}},
        ],
    ),
    # "concerning for" and "likely" are hedges DOMAIN.md §4 names that medspaCy lacks
    *(_rule(literal, _POSS, "FORWARD") for literal in ("concerning for", "concern for", "likely")),
    # scope terminators (medspaCy's defaults already stop at "but", "however", "secondary to")
    *(_rule(literal, "TERMINATE", "TERMINATE") for literal in ("which", "whereas")),
    # A closing parenthesis followed by "and", "with" or a comma ends a statement: "(no cord
    # compression) and severe foraminal stenosis". Alone it does not: "no active (enhancing)
    # lesions" negates the lesions.
    _rule(
        ") and",
        "TERMINATE",
        "TERMINATE",
        [{"ORTH": ")"}, {"LOWER": {"IN": ["and", "with", ",", "but", "also"]}}],
    ),
    # "and" / "with" followed by an article or a severity word start a new finding: "no cord
    # compression and a severe left foraminal stenosis". Bare "and"/"or" keep the scope: "no
    # compression of the cord and the cauda equina", "no herniation or stenosis".
    _rule(
        "and a",
        "TERMINATE",
        "TERMINATE",
        [{"LOWER": {"IN": ["and", "with"]}}, {"LOWER": {"IN": sorted(_NEW_FINDING_WORDS)}}],
    ),
    _rule("with a", "TERMINATE", "TERMINATE", [{"ORTH": ","}, {"LOWER": "with"}]),
    _rule(
        "there is", "TERMINATE", "TERMINATE", [{"LOWER": "there"}, {"LOWER": {"IN": ["is", "are"]}}]
    ),
]


def _context_rules() -> list[ConTextRule]:
    # The same file medspaCy's ConText(rules="default") reads.
    default_path = (
        Path(medspacy.__file__).resolve().parents[1] / "resources" / "en" / "context_rules.json"
    )
    defaults = [
        rule
        for rule in ConTextRule.from_json(str(default_path))
        if rule.literal not in _DROPPED_DEFAULTS and rule.category != "FAMILY"
    ]
    built = []
    for rule in [*defaults, *_RADIOLOGY_CONTEXT]:
        # "no X, possible Y" / "possible X, no Y": negation stops at the hedge and the hedge at
        # the negation. Set here rather than via ConText's `terminating_types` config, which
        # spaCy's config validation turns into one-shot iterators only the first rule reads.
        terminated_by = set(rule.terminated_by) | _OPPOSITE.get(rule.category, set())
        patterns = _expand_sets(rule.pattern) if isinstance(rule.pattern, list) else [rule.pattern]
        built += [
            ConTextRule(
                rule.literal,
                rule.category,
                pattern=pattern,
                direction=rule.direction,
                allowed_types=rule.allowed_types,
                excluded_types=rule.excluded_types,
                max_scope=rule.max_scope,
                max_targets=rule.max_targets,
                terminated_by=terminated_by,
            )
            for pattern in patterns
        ]
    return built


_OPPOSITE = {_NEG: {_POSS}, _POSS: {_NEG}}


@lru_cache(maxsize=4)
def _pipeline(rules: RoutingRules | None) -> Language:
    """The spaCy pipeline for a rules version (None: no targets, for `assertion_status`)."""
    # Only the tokenizer from medspacy.load: its sentence splitter and ConText are configured here.
    nlp = medspacy.load(medspacy_enable=["medspacy_tokenizer"])
    nlp.add_pipe("followup_sentences")
    sectionizer: Sectionizer = nlp.add_pipe(
        "medspacy_sectionizer",
        config={"rules": None, "apply_sentence_boundary": True, "span_attrs": None},
    )
    sectionizer.add(_section_rules())
    # Matches go to a span group, set once: with doc.ents the stock component re-sets the
    # entity list per match (quadratic, a third of the run time on a full-length report).
    matcher: TargetMatcher = nlp.add_pipe(
        "medspacy_target_matcher", config={"result_type": "group", "span_group_name": _TARGETS}
    )
    if rules is not None:
        matcher.add(list(_target_rules(nlp, rules)))
    context: ConText = nlp.add_pipe(
        "medspacy_context",
        config={
            "rules": None,
            "span_attrs": None,
            "input_span_type": "group",
            "span_group_name": _TARGETS,
        },
    )
    context.add(_context_rules())
    # Stage two runs per routed section (see _section_findings), not over the whole report.
    for name in _STAGE_TWO:
        nlp.disable_pipe(name)
    return nlp


def _rule_patterns(
    nlp: Language, rules: RoutingRules, rule: Rule
) -> Iterator[str | list[dict[str, Any]]]:
    """A rule's patterns as matched: literal phrases in every spelling, token patterns with
    spelling variants and their leading word sets expanded."""
    variants = dict(rules.spelling_variants)
    for pattern in rule.patterns:
        if isinstance(pattern, TokenPattern):
            try:
                # Surface a bad token pattern now, with its rule and line.
                Matcher(nlp.vocab, validate=True).add("check", [pattern.as_spacy()])
            except ValueError as exc:
                raise RulesError(
                    f"{rules.source}:{rule.line}: rule {rule.label}: invalid token pattern: {exc}"
                ) from exc
            spelled = [_with_variants(spec, variants) for spec in pattern.as_spacy()]
            yield from _expand_sets(spelled)
        else:
            yield from _spellings(nlp, pattern, variants)


def _target_rules(nlp: Language, rules: RoutingRules) -> Iterator[TargetRule]:
    variants = dict(rules.spelling_variants)
    rule_phrases: set[str] = set()
    for rule in rules.rules:
        for matched in _rule_patterns(nlp, rules, rule):
            if isinstance(matched, str):
                rule_phrases.add(matched.lower())
                yield TargetRule(matched, rule.label)
            else:
                yield TargetRule(rule.label, rule.label, pattern=matched)
    # Cue and qualifier words are matched too, so that ConText decides whether they are negated.
    cue_words = [_tokens(nlp, cue) for cue in rules.abnormal_cues]
    roles: dict[str, set[str]] = {phrase: set() for phrase in rules.abnormal_cues}
    for rule in rules.rules:
        if rule.qualifier is not None:
            for phrase in rule.qualifier.phrases:
                roles.setdefault(phrase, set()).add(rule.label)
    for phrase, qualifies in roles.items():
        if not qualifies and phrase.lower() in rule_phrases:
            # A cue that is itself a rule's phrase ("abscess") is routed by that rule. Matched
            # twice on the same span, the tie between the two would go by rule order, and the
            # cue could win and hide the finding.
            continue
        words = _tokens(nlp, phrase)
        metadata = {
            "cue": any(_contains(words, cue) for cue in cue_words),
            "qualifies": frozenset(qualifies),
        }
        for literal in _spellings(nlp, phrase, variants):
            yield TargetRule(literal, _AUX, metadata=metadata)


@lru_cache(maxsize=4)
def _critical_gate(rules: RoutingRules) -> Callable[[Span], bool]:
    """Whether a span holds any critical rule's pattern: a cheap test run straight on the
    report's FINDINGS before the full stage two (a copy of the section, every rule, ConText)."""
    nlp = _pipeline(rules)
    phrases = PhraseMatcher(nlp.vocab, attr="LOWER")
    tokens = Matcher(nlp.vocab)
    for rule in rules.rules:
        if rule.critical:
            for matched in _rule_patterns(nlp, rules, rule):
                if isinstance(matched, str):
                    phrases.add(rule.label, [nlp.make_doc(matched)])
                else:
                    tokens.add(rule.label, [matched])
    return lambda span: bool(phrases(span)) or bool(tokens(span))


def _expand_sets(pattern: list[dict[str, Any]], most: int = 32) -> list[list[dict[str, Any]]]:
    """Split a `{"LOWER": {"IN": [...]}}` set of up to `most` words on a pattern's leading
    token into one pattern per word (an optional leading token also yields the pattern without
    it).

    spaCy's Matcher tries every pattern at every token of a report. A plain LOWER there is
    compared in C; an IN set goes through a Python predicate, several times slower. Expanding
    a large set or later tokens would only multiply the patterns tried at every token: on the
    target matcher, best of 300 over a 5,500-character text, up to 8 words took 7.2-7.7 ms, up
    to 32 words 6.6-6.7 ms, every set 8.1-10 ms.
    """
    if not pattern:
        return [pattern]
    first, rest = pattern[0], pattern[1:]
    lower = first.get("LOWER")
    words = lower.get("IN") if isinstance(lower, dict) and set(lower) == {"IN"} else None
    op = first.get("OP")
    if words is None or len(words) > most or op in {"*", "+"} or set(first) - {"LOWER", "OP"}:
        return [pattern]
    expanded = [[{"LOWER": word}, *rest] for word in words]
    if op == "?":
        expanded += _expand_sets(rest, most) if rest else []
    return expanded


def _with_variants(spec: dict[str, Any], variants: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """A token spec whose LOWER word (or IN list) also accepts the words' spelling variants."""
    lower = spec.get("LOWER")
    if isinstance(lower, str) and lower in variants:
        return {**spec, "LOWER": {"IN": [lower, *variants[lower]]}}
    if isinstance(lower, dict) and set(lower) == {"IN"}:
        words = [form for word in lower["IN"] for form in (word, *variants.get(word, ()))]
        return {**spec, "LOWER": {"IN": list(dict.fromkeys(words))}}
    return spec


def _tokens(nlp: Language, phrase: str) -> list[str]:
    return [token.lower_ for token in nlp.tokenizer(phrase) if not token.is_space]


def _contains(words: list[str], part: list[str]) -> bool:
    width = len(part)
    return any(words[i : i + width] == part for i in range(len(words) - width + 1))


def _spellings(nlp: Language, phrase: str, variants: dict[str, tuple[str, ...]]) -> list[str]:
    """Every literal form of a phrase: with and without each hyphen, each spelling variant.

    Phrases go to spaCy's PhraseMatcher (hash lookups), not the token Matcher: with ~400
    phrases that is the difference between ~1 ms and ~10 ms on a full-length report.
    """
    forms: list[list[str]] = [[]]
    for word in _tokens(nlp, phrase):
        options: list[str | None] = [word, None] if word == "-" else [word, *variants.get(word, ())]
        forms = [[*form, option] if option else form for form in forms for option in options]
    return list(dict.fromkeys(" ".join(form) for form in forms))


# --- reading a processed report ---------------------------------------------------------------


def _assertion(span: Span, *, cues_inside_name_it: bool = False) -> tuple[bool, bool, bool, bool]:
    """(negated, uncertain, historical, hypothetical) from the span's ConText modifiers.

    With `cues_inside_name_it`, a cue wholly inside the span's own words names the concept and
    does not qualify it: "diverticulosis without diverticulitis", "neck supple, no
    lymphadenopathy". That holds for a concept named by a caller (`assertion_status`), not for
    a rule's match, whose pattern may take in a cue on purpose ("epidural enhancement without
    abscess" is the negated abscess)."""
    categories = {
        modifier.category
        for modifier in span._.modifiers
        if not (
            cues_inside_name_it
            and span.start <= modifier.modifier_span[0]
            and modifier.modifier_span[1] <= span.end
        )
        and not _shut_in_parentheses(span, modifier.modifier_span)
    }
    return (
        _NEG in categories,
        _POSS in categories,
        _HIST in categories and _CURRENT not in categories,
        _HYPO in categories,
    )


def _shut_in_parentheses(span: Span, cue: tuple[int, int]) -> bool:
    """Whether a cue stands inside parentheses that the concept is outside of: "L5-S1 extrusion
    (no evidence of cauda equina compression) contacting the descending S1 root" denies nothing
    of the root contact (DOMAIN.md §4: negation scope ends at a closing parenthesis). A cue
    outside them keeps its scope: "no active (enhancing) lesions"."""
    doc, sentence = span.doc, span.sent
    opened = next(
        (i for i in range(cue[0] - 1, sentence.start - 1, -1) if doc[i].text in "()"), None
    )
    if opened is None or doc[opened].text != "(":
        return False
    closed = next((i for i in range(cue[1], sentence.end) if doc[i].text in "()"), None)
    if closed is None or doc[closed].text != ")":
        return False
    return span.end <= opened or span.start > closed


def _analyze(nlp: Language, doc: Doc, rules: RoutingRules) -> ReportFindings:
    sections = [
        part
        for section in doc._.sections
        for part in _level_lines_apart(section.category, doc[section.body_start : section.body_end])
    ]
    routed = _routed_categories(sections)
    # Text beside an IMPRESSION (FINDINGS, or level lines without a header) is read for
    # critical findings only (DOMAIN.md §3 safety rules): a cord compression stated there
    # escalates even when the IMPRESSION is silent. An IMPRESSION that points to it ("as
    # above") routes it whole; one that names no finding with a referral while that text does
    # is routed from it too, and a human is told why.
    beside = [c for c in ("findings", None) if c not in routed] if "impression" in routed else []
    sections = [(category, body) for category, body in sections if _has_text(body)]
    read_whole = False  # the IMPRESSION points back to the text beside it
    if beside and any(
        category == "impression" and _REFERS_BACK.search(body.text) for category, body in sections
    ):
        routed, beside = [*routed, *beside], []
        read_whole = True
    # Text without a header, routed because the report has headers but no IMPRESSION or
    # FINDINGS (level lines under a HISTORY header): its first line may be the exam title
    instead_of_findings = (
        None in routed
        and not {"impression", "findings"} & set(routed)
        and any(category is not None for category, _ in sections)
    )
    findings: list[Finding] = []
    for category, body in sections:
        if category in routed:
            if category is None and instead_of_findings:
                body = _without_title(body)
            elif category is None and read_whole:
                body = _without_asking_title(body)
            findings += _section_findings(nlp, body, _section_name(category), rules)
    rule_of = {rule.label: rule for rule in rules.rules}
    # "Unremarkable MRI." above FINDINGS that name a root contact: the IMPRESSION names nothing
    # the rules know (not even a negated or nondiagnostic finding), so FINDINGS are routed.
    impression_refers = any(f.label in rule_of for f in findings)
    critical_labels = frozenset(rule.label for rule in rules.rules if rule.critical)
    beside_findings: list[Finding] = []
    details: list[Finding] = []  # the IMPRESSION names them in short: nothing left out
    # Text without a header beside the IMPRESSION may be the clinician's question or history
    # ("For evaluation of cord compression.", "Known L1 burst fracture, treated."): a finding
    # there that names no spinal level (a level line is a finding) and that the IMPRESSION
    # denies, or one in a sentence that speaks of the past, is not taken from it.
    denied = {f.label for f in findings if f.section == "IMPRESSION" and f.negated}

    def undenied(found: list[Finding], category: str | None) -> list[Finding]:
        if category is not None:
            return found
        return [
            f
            for f in found
            if (f.levels or f.label not in denied) and not _PAST.search(f.sentence_text)
        ]

    for category, body in sections:
        if category not in beside:
            continue
        if category is None:
            body = _without_title(body)
            if not _has_text(body):
                continue
        if not impression_refers:
            found = [
                f
                for f in _section_findings(nlp, body, "FINDINGS", rules)
                if f.label in rule_of
                and _affirmed(f)
                and (rule_of[f.label].referrals or rule_of[f.label].critical)
            ]
            beside_findings += undenied(found, category)
        else:
            if _critical_gate(rules)(body):
                found = [
                    finding
                    for finding in _section_findings(nlp, body, "FINDINGS", rules, critical_labels)
                    if _affirmed(finding)
                ]
                beside_findings += undenied(found, category)
            details += _details_of(nlp, body, findings, rules, critical_labels)
    findings += beside_findings + details
    # A critical finding is escalated to a person now; otherwise findings the IMPRESSION left
    # out are routed and a person is asked to read why.
    review = (
        []
        if any(rule_of[f.label].critical for f in findings if f.label in rule_of and _affirmed(f))
        else [
            f"FINDINGS name '{f.text}' ({f.label}) that the IMPRESSION leaves out: "
            f'"{f.sentence_text}"'
            for f in beside_findings
            # "IMPRESSION: L1 fracture." names it in short (abnormal words no rule routes)
            if not any(u.label == UNCLASSIFIED and restates(u, f) for u in findings)
        ]
    )
    return ReportFindings(
        findings=tuple(apply_addendum(findings, keep=critical_labels)),
        routed_sections=tuple(_section_name(category) for category in routed),
        region=_region(sections, routed, rules),
        review_reasons=tuple(dict.fromkeys(review)),
    )


def _details_of(
    nlp: Language,
    body: Span,
    stated: list[Finding],
    rules: RoutingRules,
    skip: frozenset[str],
) -> list[Finding]:
    """Findings beside the IMPRESSION that detail one it states: "L5-S1 extrusion with left S1
    radiculopathy" over FINDINGS "extrusion compressing the descending left S1 nerve root" is
    that root compression, which supersedes the extrusion (a finding of a rule in the stated
    finding's `superseded_by`, at the same spinal level, named on both: without levels a
    bursitis beside a tendon tear would be read as detailing it)."""
    known = {rule.label for rule in rules.rules}
    stated = [f for f in stated if _affirmed(f) and f.label in known]
    labels = {label for f in stated for label in rules.rule(f.label).superseded_by} - skip
    if not labels:
        return []
    return [
        finding
        for finding in _section_findings(nlp, body, "FINDINGS", rules, frozenset(labels))
        if _affirmed(finding)
        and any(
            finding.label in rules.rule(other.label).superseded_by
            and bool(other.levels and finding.levels)
            and levels_overlap(other.levels, finding.levels)
            for other in stated
        )
    ]


# "MRI L-SPINE FOR CES", "MRI C-SPINE: ?CORD COMPRESSION": the exam title names the question.
_TITLE = re.compile(r"\s*(?:mri?|mra|mr|ct|exam|examination|study)\b", re.IGNORECASE)


# A sentence without a header that speaks of the patient's past ("Known L1 burst fracture,
# treated.", "Prior SAH.", "Hx of SDH."), asks the clinician's question ("Query cauda equina
# syndrome.", "?cord compression.") or asks for a follow-up ("SAH follow-up."); not one that
# compares ("Compared with prior, new cord compression", "Previously seen abscess, larger")
_PAST = re.compile(
    r"^\W*(?:known|prior(?!\s+(?:study|studies|exam|examination|mri|mr|imaging|scan|ct)\b)"
    r"|history|hx|h/o|s/p|status post|query|queried|question of|r/o|rule out|evaluate|assess"
    r"|for (?:evaluation|assessment|exclusion))\b|^\W*\?"
    r"|\b(?:follow[- ]?up|f/u|treated|evacuated|repaired)\W*$",
    re.IGNORECASE,
)


def _without_title(body: Span) -> Span:
    """Text before the first header without its first line when that line is the exam title
    (text routed whole, in a report with no header at all, keeps it)."""
    if not _TITLE.match(body.text):
        return body
    for token in body:
        if "\n" in token.text and not token.text.strip():
            return body.doc[token.i + 1 : body.end]
        # a report dictated on one line: the title is its first sentence ("MRI C-SPINE.
        # Cord: compressed at C5-6 ... IMPRESSION: See checklist above.")
        if token.i > body.start and token.is_sent_start:
            return body.doc[token.i : body.end]
    return body.doc[body.end : body.end]


# "MRI L SPINE FOR ?CES", "MRI C-SPINE: R/O CORD COMPRESSION": the clinician's question
_QUESTION = re.compile(
    r"\?|\b(?:for|r/o|rule out|query|eval(?:uate|uation)?|exclude|assess(?:ment)?)\b",
    re.IGNORECASE,
)


def _without_asking_title(body: Span) -> Span:
    """Text routed whole without its title line when the title asks a question; a title
    that states a finding keeps it ("mri c-spine: cord compression C5-6. imp: as above")."""
    rest = _without_title(body)
    title = body.doc[body.start : rest.start] if rest.start > body.start else body
    return rest if _QUESTION.search(title.text) else body


def _region(
    sections: list[tuple[str | None, Span]], routed: list[str | None], rules: RoutingRules
) -> str | None:
    """The body region from the exam title, EXAM or TECHNIQUE text, else from the routed
    text; never from the history ("back pain radiating to the leg" is no leg study)."""
    for wanted in (("exam", "technique", None), tuple(routed)):
        text = " ".join(body.text for category, body in sections if category in wanted)
        region = body_region(text, rules) if text else None
        if region is not None:
            return region
    return None


# "IMPRESSION: Findings at C5-6 as above." points back to the text it summarises.
# So do "As detailed.", "see checklist above", "as per checklist", "see report body".
_REFERS_BACK = re.compile(
    r"\b(?:as (?:described |detailed |noted |discussed |outlined )?above"
    r"|as (?:described|detailed|outlined)(?=\s*(?:[.;]|$))"
    r"|as per (?:the )?(?:checklist|findings|report|body)"
    r"|see (?:the )?(?:(?:checklist|report|body|level[- ]by[- ]level|details?) )?"
    r"(?:above|findings|body|checklist))\b",
    re.IGNORECASE,
)


def _affirmed(finding: Finding) -> bool:
    return not (finding.negated or finding.historical or finding.hypothetical)


def _section_findings(
    nlp: Language,
    body: Span,
    name: str,
    rules: RoutingRules,
    only_labels: frozenset[str] | None = None,
) -> list[Finding]:
    """Stage two (target matching, ConText) on one section body; with `only_labels`, the
    findings of those rules only.

    Running it on the routed text alone, not the whole report, saves most of its cost on a
    full-length report; ConText scopes end at sentence ends, so nothing is lost. ConText is
    skipped where nothing (or nothing of `only_labels`) matched.
    """
    part = nlp.get_pipe("medspacy_target_matcher")(_sub_doc(body))
    targets = list(part.spans.get(_TARGETS, []))
    if only_labels is not None:
        targets = [span for span in targets if span.label_ in only_labels]
    if not targets:
        return []
    part.spans[_TARGETS] = targets
    part = nlp.get_pipe("medspacy_context")(part)
    offset = body.start_char
    by_sentence: dict[int, list[Span]] = {}
    for span in part.spans.get(_TARGETS, []):
        by_sentence.setdefault(span.sent.start, []).append(span)

    rule_by_label = {rule.label: rule for rule in rules.rules}
    findings: list[Finding] = []
    for spans in by_sentence.values():
        sentence = spans[0].sent
        sentence_span = (offset + sentence.start_char, offset + sentence.end_char)
        levels = spinal_levels(sentence.text)
        auxiliaries = [(span, _assertion(span)) for span in spans if span.label_ == _AUX]
        targets = [span for span in spans if span.label_ != _AUX]
        for span in targets:
            negated, uncertain, historical, hypothetical = _assertion(span)
            if _SYNDROME.search(span.text) and _about_the_clinical_syndrome(span):
                negated = True  # the clinical question, not an imaging finding
            label, qualifier = span.label_, ""
            rule = rule_by_label[label]
            if rule.qualifier is not None and not (negated or hypothetical or historical):
                for aux, (aux_negated, _, aux_historical, aux_hypothetical) in auxiliaries:
                    asserted = not (aux_negated or aux_historical or aux_hypothetical)
                    if asserted and label in aux._.target_rule.metadata["qualifies"]:
                        label, qualifier = rule.qualifier.label, aux.text
                        break
            findings.append(
                Finding(
                    label=label,
                    text=span.text,
                    negated=negated,
                    uncertain=uncertain,
                    historical=historical,
                    hypothetical=hypothetical,
                    start=offset + span.start_char,
                    end=offset + span.end_char,
                    section=name,
                    sentence=sentence_span,
                    sentence_text=sentence.text.strip(),
                    levels=levels,
                    qualifier=qualifier,
                )
            )
        # abnormal words next to a recognised finding are that finding's description; next to
        # denied ones only ("Acute C6 fracture (no retropulsion, no cord compression)", "spinal
        # epidural hematoma (no cord compression)") they name something no rule routes
        if any(_affirmed(finding) for finding in findings[len(findings) - len(targets) :]):
            continue
        asserted_aux = [
            (aux, uncertain)
            for aux, (negated, uncertain, historical, hypothetical) in auxiliaries
            if not (negated or historical or hypothetical)
        ]
        described = _qualify_from_another_sentence(findings, asserted_aux, rules)
        for aux, uncertain in asserted_aux:
            if aux._.target_rule.metadata["cue"] and not (
                described is not None
                and (
                    aux.text.lower() == described.qualifier.lower()
                    or _stem_words(aux.text) <= _stem_words(described.sentence_text)
                )
            ):
                findings.append(
                    Finding(
                        label=UNCLASSIFIED,
                        text=aux.text,
                        uncertain=uncertain,
                        start=offset + aux.start_char,
                        end=offset + aux.end_char,
                        section=name,
                        sentence=sentence_span,
                        sentence_text=sentence.text.strip(),
                        levels=levels,
                    )
                )
    return findings


def _qualify_from_another_sentence(
    findings: list[Finding], asserted_aux: list[tuple[Span, bool]], rules: RoutingRules
) -> Finding | None:
    """A qualifier in a sentence with no finding of its own ("2. Two enhancing lesions
    indicating active disease.") re-labels the section's finding it qualifies ("multiple
    sclerosis" in item 1), which is returned; abnormal words of that sentence that its
    sentence already names ("lesions") are its description, others are still reviewed."""
    for aux, _ in asserted_aux:
        qualifies = aux._.target_rule.metadata["qualifies"]
        for index, finding in enumerate(findings):
            rule = rules.rule(finding.label) if finding.label in qualifies else None
            if rule is None or rule.qualifier is None or not _affirmed(finding):
                continue
            findings[index] = dataclasses.replace(
                finding, label=rule.qualifier.label, qualifier=aux.text
            )
            return findings[index]
    return None


def _stem_words(text: str) -> set[str]:
    return {word.removesuffix("s") for word in re.findall(r"[a-z0-9']+", text.lower())}


def _sub_doc(body: Span) -> Doc:
    """A section body as a Doc of its own: its words and sentence starts, nothing else.

    What `Span.as_doc` gives too, without the copies stage two never reads (the span's
    vector, computed token by token, was most of its cost).
    """
    doc = Doc(
        body.doc.vocab,
        words=[token.text for token in body],
        spaces=[bool(token.whitespace_) for token in body],
    )
    if len(doc):
        starts = body.doc.to_array([SENT_START])[body.start : body.end].astype(numpy.int64)
        starts[0] = 1  # a section body starts a sentence
        doc.from_array([SENT_START], cast(Ints2d, starts.reshape(-1, 1).astype(numpy.uint64)))
    return doc


def _about_the_clinical_syndrome(span: Span) -> bool:
    return any(modifier.category == _CLINICAL for modifier in span._.modifiers)


def _has_text(span: Span) -> bool:
    return any(not (token.is_space or token.is_punct) for token in span)


# "HX: myelopathic sx\nC6-7: large HNP with cord deformity", "hx: back pain\nL3-4 huge
# herniation": a line that starts with a spinal level is the report's findings, whatever header
# came before it
_LEVEL_LINE = re.compile(
    r"[ctls]\d{1,2}(?:\s*[-/]\s*[ctls]?\d{1,2})?(?:\s*:|\s+[a-z])", re.IGNORECASE
)
_NEVER_ROUTED = frozenset(
    {"exam", "indication", "history", "clinical_information", "comparison", "technique"}
)


def _level_lines_apart(category: str | None, body: Span) -> list[tuple[str | None, Span]]:
    """A section whose text is never routed, with its level lines split off as text without
    a header (read as level lines are)."""
    if category not in _NEVER_ROUTED:
        return [(category, body)]
    doc = body.doc
    for token in body[1:]:
        previous = doc[token.i - 1]
        line_start = previous.is_space and "\n" in previous.text
        if line_start and _LEVEL_LINE.match(doc.text, token.idx):
            return [(category, doc[body.start : token.i]), (None, doc[token.i : body.end])]
    return [(category, body)]


def _routed_categories(sections: list[tuple[str | None, Span]]) -> list[str | None]:
    """Section categories to read, in the policy's order (see module docstring)."""
    bodies: dict[str | None, list[Span]] = {}
    for category, body in sections:
        bodies.setdefault(category, []).append(body)

    def has_text(category: str | None) -> bool:
        return any(_has_text(body) for body in bodies.get(category, []))

    if not any(category is not None for category in bodies):
        return [None] if has_text(None) else []
    routed: list[str | None] = []
    if has_text("impression"):
        routed.append("impression")
    elif has_text("findings"):
        routed.append("findings")
    elif any(_has_text(_without_title(body)) for body in bodies.get(None, [])):
        routed.append(None)  # level lines under a HISTORY header, or text before it
    if has_text("addendum"):
        routed.append("addendum")
    return routed


def _section_name(category: str | None) -> str:
    return _SECTION_NAMES[category] if category is not None else UNHEADED
