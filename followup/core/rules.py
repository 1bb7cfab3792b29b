"""Routing rules: the versioned YAML table (rules/routing.yaml) as validated, frozen values.

The table is clinical data that needs sign-off, so it lives in a file with a `version` and a
`reviewer`, never in code. Every mistake a reviewer can make in that file (an unknown specialty
or tier, a duplicate label, a rule with no patterns, a typo in a key) is reported with the file
and line, because a rules file that half-loads would route silently wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

import yaml

from followup.errors import RulesError

SPECIALTIES = frozenset({"neurology", "orthopedics", "pain_management", "rheumatology"})
"""The referral targets the design contract allows; a rules file may use a subset."""

TIERS = ("routine", "urgent", "emergent")
"""Urgency tiers, least to most urgent: the index is the rank used to pick the most urgent."""

# Code systems as RIS feeds spell them (HL7 v2 table 0396 names, FHIR URIs, common variants),
# normalised to the three names the rules file uses.
_SYSTEM_ALIASES = {
    "SCT": "SCT",
    "SNOMED": "SCT",
    "SNOMEDCT": "SCT",
    "SNOMED-CT": "SCT",
    "SNOMED CT": "SCT",
    "HTTP://SNOMED.INFO/SCT": "SCT",
    "ICD10CM": "ICD10CM",
    "ICD-10-CM": "ICD10CM",
    "I10C": "ICD10CM",
    "HTTP://HL7.ORG/FHIR/SID/ICD-10-CM": "ICD10CM",
    "RADLEX": "RADLEX",
    "RID": "RADLEX",
    "HTTP://RADLEX.ORG": "RADLEX",
    "HTTP://WWW.RADLEX.ORG": "RADLEX",
}
CODE_SYSTEMS = frozenset(_SYSTEM_ALIASES.values())

# spaCy token-pattern keys a reviewer may use; anything else is almost certainly a typo that
# spaCy would only reject later, without a line number.
_TOKEN_KEYS = frozenset(
    {
        "LOWER",
        "ORTH",
        "TEXT",
        "IS_DIGIT",
        "IS_ALPHA",
        "IS_PUNCT",
        "IS_SPACE",
        "LIKE_NUM",
        "LENGTH",
        "OP",
    }
)
_TOKEN_OPS = frozenset({"?", "*", "+", "!"})
_LABEL_RE = re.compile(r"^[a-z][a-z0-9_]*$")

_TOP_KEYS = frozenset(
    {
        "version",
        "reviewer",
        "effective_date",
        "specialties",
        "abnormal_cues",
        "spelling_variants",
        "typo_tolerant",
        "ordinary_words",
        "rules",
        "fragments",
        "regions",
    }
)
_RULE_KEYS = frozenset(
    {
        "label",
        "description",
        "referrals",
        "tier",
        "critical",
        "patterns",
        "codes",
        "additional_testing",
        "additional_testing_by_region",
        "superseded_by",
        "superseded_in",
        "cause_of",
        "qualifier",
    }
)


@dataclass(frozen=True, slots=True)
class TokenPattern:
    """A spaCy Matcher token pattern, kept as canonical JSON so rules stay immutable/hashable."""

    json: str

    def as_spacy(self) -> list[dict[str, Any]]:
        return list(json.loads(self.json))


Pattern = str | TokenPattern
"""A phrase (matched case-insensitively, token by token) or a token pattern."""


@dataclass(frozen=True, slots=True)
class Code:
    system: str  # one of CODE_SYSTEMS
    code: str


@dataclass(frozen=True, slots=True)
class Qualifier:
    """Words that, asserted in the same sentence as this rule's finding, re-label it.

    E.g. demyelination + "enhancing" → enhancing_demyelination (urgent instead of routine).
    """

    label: str
    phrases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    label: str
    description: str
    referrals: tuple[str, ...]
    tier: str
    critical: bool
    patterns: tuple[Pattern, ...]
    codes: tuple[Code, ...] = ()
    additional_testing: tuple[str, ...] = ()
    additional_testing_by_region: tuple[tuple[str, tuple[str, ...]], ...] = ()
    superseded_by: tuple[str, ...] = ()
    superseded_in: str = "place"
    """Where a superseding finding covers this one: "place" (the same sentence, the same
    spinal level, or anywhere for a critical finding with no level), "sentence" only, or
    "report" (anywhere in it: a joint effusion is routed only when it is the sole finding)."""
    cause_of: tuple[str, ...] = ()
    """Rules whose finding this one is routed with when it is named as that finding's cause: in
    the same statement, or at that finding's spinal levels only (a disc osteophyte complex
    compressing the cord is the compression, not also a pain-management finding)."""
    qualifier: Qualifier | None = None
    line: int = 0

    def tests_for(self, region: str | None) -> tuple[str, ...]:
        """The tests to suggest for a study of this body region (`additional_testing` when
        the region is unknown or has no entry of its own)."""
        return dict(self.additional_testing_by_region).get(region or "", self.additional_testing)


@dataclass(frozen=True, slots=True)
class RoutingRules:
    version: str
    reviewer: str
    effective_date: str
    specialties: tuple[str, ...]
    rules: tuple[Rule, ...]
    abnormal_cues: tuple[str, ...]
    spelling_variants: tuple[tuple[str, tuple[str, ...]], ...] = ()
    regions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Body region → words that name it in the exam title or text ("knee", "lumbar")."""
    typo_tolerant: tuple[tuple[str, str], ...] = ()
    """Stem of a critical concept word read through a one-letter typo → the word a truncation
    of it ("compr.") stands for."""
    ordinary_words: tuple[str, ...] = ()
    """Real words a typo of a critical concept word could be confused with; never re-spelled."""
    source: str = ""
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        # Computed once: the NLP pipeline cache hashes the table on every report, and hashing
        # every rule's patterns each time cost ~0.3 ms a report.
        if self._hash is None:
            fields = (
                self.version,
                self.reviewer,
                self.effective_date,
                self.specialties,
                self.rules,
                self.abnormal_cues,
                self.spelling_variants,
                self.regions,
                self.typo_tolerant,
                self.ordinary_words,
                self.source,
            )
            object.__setattr__(self, "_hash", hash(fields))
        assert self._hash is not None
        return self._hash

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(rule.label for rule in self.rules)

    def rule(self, label: str) -> Rule:
        for rule in self.rules:
            if rule.label == label:
                return rule
        raise KeyError(f"no routing rule {label!r} in rules v{self.version}")

    def rule_for_code(self, system: str, code: str) -> Rule | None:
        """The rule a coded finding belongs to, or None.

        ICD-10-CM is hierarchical, so a rule code also matches its subcodes (rule "M51.2"
        matches "M51.26"); dots are ignored because HL7 feeds often drop them. SNOMED CT and
        RadLex codes match exactly.
        """
        wanted_system = normalize_system(system)
        wanted = _normalize_code(wanted_system, code)
        for rule in self.rules:
            for rule_code in rule.codes:
                if rule_code.system != wanted_system:
                    continue
                have = _normalize_code(rule_code.system, rule_code.code)
                if wanted == have or (wanted_system == "ICD10CM" and wanted.startswith(have)):
                    return rule
        return None


def normalize_system(system: str) -> str:
    """Map a feed's code-system name to SCT / ICD10CM / RADLEX (unknown names pass through)."""
    cleaned = system.strip().upper().rstrip("/")
    return _SYSTEM_ALIASES.get(cleaned, cleaned)


def _normalize_code(system: str, code: str) -> str:
    cleaned = code.strip().upper()
    return cleaned.replace(".", "") if system == "ICD10CM" else cleaned


def load_rules(path: Path) -> RoutingRules:
    """Load and validate a rules file; cached per path and modification time.

    Editing the file is picked up by the next call (new mtime → new entry), so a long-running
    worker routes with the reviewed table on disk without a restart.
    """
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules file: {exc.strerror}") from exc
    return _load_cached(resolved, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load_cached(path: Path, _mtime_ns: int, _size: int) -> RoutingRules:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: cannot read rules file: {exc}") from exc
    return parse_rules(text, source=str(path))


def parse_rules(text: str, *, source: str) -> RoutingRules:
    """Validate rules YAML text; `source` names the file in error messages."""
    try:
        document = yaml.load(text, Loader=_LineLoader)
    except _LocatedYAMLError as exc:
        raise RulesError(f"{source}:{exc.line}: {exc.message}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        raise RulesError(f"{source}:{line}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: invalid YAML: {exc}") from exc
    return _Validator(source).document(document)


# --- YAML with line numbers ------------------------------------------------------------------


class _Map(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys were (1-based lines)."""

    line: int
    key_lines: dict[str, int]


class _Seq(list[Any]):
    """A YAML sequence that remembers where it and each item were (1-based lines)."""

    line: int
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records line numbers and rejects duplicate keys."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merges like SafeLoader does
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise _LocatedYAMLError(line, f"mapping key {key!r} must be a string")
        if key in result:
            raise _LocatedYAMLError(line, f"duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


class _LocatedYAMLError(yaml.YAMLError):
    """A structural problem found while constructing (duplicate key, ...), with its line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


# --- validation -------------------------------------------------------------------------------


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, line: int, message: str) -> NoReturn:
        raise RulesError(f"{self.source}:{line}: {message}")

    def document(self, document: object) -> RoutingRules:
        if not isinstance(document, _Map):
            self.fail(1, "the rules file must be a mapping with version, reviewer and rules")
        for key in document:
            if key not in _TOP_KEYS:
                self.fail(document.key_lines[key], f"unknown top-level key {key!r}")
        version = self.text(document, "version")
        reviewer = self.text(document, "reviewer")
        effective = document.get("effective_date")
        if isinstance(effective, date):
            effective_date = effective.isoformat()
        else:
            effective_date = self.text(document, "effective_date")
        specialties = self.strings(document, "specialties")
        for specialty, line in zip(
            specialties, self.item_lines(document, "specialties"), strict=True
        ):
            if specialty not in SPECIALTIES:
                self.fail(
                    line,
                    f"unknown specialty {specialty!r}; the contract allows {sorted(SPECIALTIES)}",
                )
        cues = self.strings(document, "abnormal_cues")
        variants = self.variants(document)
        regions = self.word_lists(document, "regions")
        typo_tolerant = self.typo_tolerant(document)
        ordinary_words = [
            w.lower() for w in self.strings(document, "ordinary_words", required=False)
        ]
        rules_node = document.get("rules")
        if not isinstance(rules_node, _Seq) or not rules_node:
            self.fail(
                document.key_lines.get("rules", document.line), "'rules' must be a non-empty list"
            )
        rules = tuple(
            self.rule(node, line, frozenset(specialties))
            for node, line in zip(rules_node, rules_node.item_lines, strict=True)
        )
        self.cross_check(rules, rules_node)
        known_regions = {name for name, _ in regions}
        for rule in rules:
            for region, _ in rule.additional_testing_by_region:
                if region not in known_regions:
                    self.fail(
                        rule.line,
                        f"rule {rule.label}: unknown region {region!r}; "
                        f"'regions' names {sorted(known_regions)}",
                    )
        return RoutingRules(
            version=version,
            reviewer=reviewer,
            effective_date=effective_date,
            specialties=tuple(specialties),
            rules=rules,
            abnormal_cues=tuple(cues),
            spelling_variants=variants,
            regions=regions,
            typo_tolerant=typo_tolerant,
            ordinary_words=tuple(ordinary_words),
            source=self.source,
        )

    def rule(self, node: object, line: int, specialties: frozenset[str]) -> Rule:
        if not isinstance(node, _Map):
            self.fail(line, "each rule must be a mapping")
        for key in node:
            if key not in _RULE_KEYS:
                self.fail(node.key_lines[key], f"unknown rule key {key!r}")
        label = self.text(node, "label")
        if not _LABEL_RE.match(label):
            self.fail(node.key_lines["label"], f"label {label!r} must be snake_case")
        tier = self.text(node, "tier")
        if tier not in TIERS:
            self.fail(
                node.key_lines["tier"],
                f"rule {label}: unknown tier {tier!r}; use one of {list(TIERS)}",
            )
        critical = node.get("critical", False)
        if not isinstance(critical, bool):
            self.fail(
                node.key_lines.get("critical", node.line),
                f"rule {label}: 'critical' must be true or false",
            )
        if critical != (tier == "emergent"):
            # DOMAIN.md §2: emergent is exactly the tier of critical findings.
            self.fail(
                node.key_lines.get("critical", node.key_lines["tier"]),
                f"rule {label}: critical must be true exactly when tier is emergent",
            )
        referrals = self.strings(node, "referrals", required=False)
        for referral, ref_line in zip(referrals, self.item_lines(node, "referrals"), strict=True):
            if referral not in specialties:
                self.fail(ref_line, f"rule {label}: unknown specialty {referral!r}")
        return Rule(
            label=label,
            description=self.text(node, "description", required=False),
            referrals=tuple(referrals),
            tier=tier,
            critical=critical,
            patterns=self.patterns(node, label),
            codes=self.codes(node, label),
            additional_testing=tuple(self.strings(node, "additional_testing", required=False)),
            additional_testing_by_region=self.by_region(node, label),
            superseded_by=tuple(self.strings(node, "superseded_by", required=False)),
            superseded_in=self.superseded_in(node, label),
            cause_of=tuple(self.strings(node, "cause_of", required=False)),
            qualifier=self.qualifier(node, label),
            line=node.line,
        )

    def patterns(self, node: _Map, label: str) -> tuple[Pattern, ...]:
        raw = node.get("patterns")
        line = node.key_lines.get("patterns", node.line)
        if not isinstance(raw, _Seq) or not raw:
            self.fail(line, f"rule {label}: 'patterns' must be a non-empty list")
        patterns: list[Pattern] = []
        for item, item_line in zip(raw, raw.item_lines, strict=True):
            if isinstance(item, str):
                if not item.strip():
                    self.fail(item_line, f"rule {label}: empty pattern")
                patterns.append(" ".join(item.lower().split()))
            elif isinstance(item, _Seq):
                patterns.append(self.token_pattern(item, item_line, label))
            else:
                self.fail(
                    item_line, f"rule {label}: a pattern is a phrase or a list of token specs"
                )
        return tuple(patterns)

    def token_pattern(self, specs: _Seq, line: int, label: str) -> TokenPattern:
        if not specs:
            self.fail(line, f"rule {label}: empty token pattern")
        for spec, spec_line in zip(specs, specs.item_lines, strict=True):
            if not isinstance(spec, _Map) or not spec:
                self.fail(spec_line, f"rule {label}: each token spec must be a non-empty mapping")
            for key, value in spec.items():
                if key not in _TOKEN_KEYS:
                    self.fail(spec.key_lines[key], f"rule {label}: unknown token attribute {key!r}")
                if key == "OP" and value not in _TOKEN_OPS:
                    self.fail(spec.key_lines[key], f"rule {label}: unknown OP {value!r}")
                if isinstance(value, Mapping) and "REGEX" in value:
                    try:
                        re.compile(str(value["REGEX"]))
                    except re.error as exc:
                        self.fail(spec.key_lines[key], f"rule {label}: bad REGEX: {exc}")
                if isinstance(value, Mapping) and "IN" in value:
                    words = value["IN"]
                    # YAML reads unquoted on/no/yes as booleans and 1 as a number: such an
                    # entry would silently never match a token.
                    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                        self.fail(
                            spec.key_lines[key],
                            f"rule {label}: IN must list strings (quote on, no, yes and numbers)",
                        )
        if all(spec.get("OP") in {"?", "*"} for spec in specs):
            self.fail(line, f"rule {label}: a token pattern needs at least one required token")
        return TokenPattern(json.dumps(_plain(specs), sort_keys=True))

    def codes(self, node: _Map, label: str) -> tuple[Code, ...]:
        raw = node.get("codes", _Seq())
        if not isinstance(raw, list):
            self.fail(
                node.key_lines.get("codes", node.line), f"rule {label}: 'codes' must be a list"
            )
        codes = []
        for item, line in zip(raw, getattr(raw, "item_lines", []), strict=True):
            if not isinstance(item, _Map) or set(item) != {"system", "code"}:
                self.fail(line, f"rule {label}: a code is {{system: ..., code: ...}}")
            system, code = item["system"], item["code"]
            if system not in CODE_SYSTEMS:
                self.fail(
                    line,
                    f"rule {label}: unknown code system {system!r}; use {sorted(CODE_SYSTEMS)}",
                )
            if not isinstance(code, str) or not code.strip():
                # An unquoted code is read as a number and loses leading zeros.
                self.fail(line, f"rule {label}: code must be a quoted, non-empty string")
            codes.append(Code(system=system, code=code.strip()))
        return tuple(codes)

    def qualifier(self, node: _Map, label: str) -> Qualifier | None:
        raw = node.get("qualifier")
        if raw is None:
            return None
        line = node.key_lines["qualifier"]
        if not isinstance(raw, _Map) or set(raw) != {"label", "phrases"}:
            self.fail(line, f"rule {label}: qualifier is {{label: ..., phrases: [...]}}")
        phrases = self.strings(raw, "phrases")
        if not phrases:
            self.fail(line, f"rule {label}: qualifier phrases must not be empty")
        return Qualifier(
            label=self.text(raw, "label"),
            phrases=tuple(" ".join(p.lower().split()) for p in phrases),
        )

    def variants(self, document: _Map) -> tuple[tuple[str, tuple[str, ...]], ...]:
        raw = document.get("spelling_variants")
        if raw is None:
            return ()
        line = document.key_lines["spelling_variants"]
        if not isinstance(raw, _Map):
            self.fail(line, "'spelling_variants' maps a word to its alternative spellings")
        return tuple(
            (word.lower(), tuple(v.lower() for v in self.strings(raw, word))) for word in raw
        )

    def typo_tolerant(self, document: _Map) -> tuple[tuple[str, str], ...]:
        raw = document.get("typo_tolerant")
        if raw is None:
            return ()
        line = document.key_lines["typo_tolerant"]
        if not isinstance(raw, _Map) or not all(
            isinstance(stem, str)
            and isinstance(word, str)
            and word.lower().startswith(stem.lower())
            for stem, word in raw.items()
        ):
            self.fail(line, "'typo_tolerant' maps a word stem to the full word that starts with it")
        return tuple((stem.lower(), word.lower()) for stem, word in raw.items())

    def superseded_in(self, node: _Map, label: str) -> str:
        value = node.get("superseded_in", "place")
        if value not in {"place", "sentence", "report"}:
            self.fail(
                node.key_lines.get("superseded_in", node.line),
                f"rule {label}: superseded_in is 'place', 'sentence' or 'report'",
            )
        return str(value)

    def word_lists(self, document: _Map, key: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        raw = document.get(key)
        if raw is None:
            return ()
        if not isinstance(raw, _Map):
            self.fail(document.key_lines[key], f"{key!r} maps a name to a list of words")
        return tuple(
            (name.lower(), tuple(" ".join(w.lower().split()) for w in self.strings(raw, name)))
            for name in raw
        )

    def by_region(self, node: _Map, label: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        raw = node.get("additional_testing_by_region")
        if raw is None:
            return ()
        if not isinstance(raw, _Map):
            self.fail(
                node.key_lines["additional_testing_by_region"],
                f"rule {label}: additional_testing_by_region maps a region to a list of tests",
            )
        return tuple((region.lower(), tuple(self.strings(raw, region))) for region in raw)

    def cross_check(self, rules: tuple[Rule, ...], rules_node: _Seq) -> None:
        seen: dict[str, int] = {}
        codes: dict[tuple[str, str], str] = {}
        for rule in rules:
            if rule.label in seen:
                self.fail(
                    rule.line,
                    f"duplicate label {rule.label!r} (first defined at line {seen[rule.label]})",
                )
            seen[rule.label] = rule.line
            for code in rule.codes:
                key = (code.system, _normalize_code(code.system, code.code))
                if key in codes:
                    self.fail(
                        rule.line,
                        f"rule {rule.label}: code {code.system} {code.code} "
                        f"already belongs to {codes[key]}",
                    )
                codes[key] = rule.label
        for rule in rules:
            referenced = [
                *rule.superseded_by,
                *rule.cause_of,
                *([rule.qualifier.label] if rule.qualifier else []),
            ]
            for other in referenced:
                if other not in seen:
                    self.fail(rule.line, f"rule {rule.label}: refers to unknown rule {other!r}")

    # --- small typed getters

    def text(self, node: _Map, key: str, *, required: bool = True) -> str:
        value = node.get(key)
        if value is None and not required:
            return ""
        if (
            not isinstance(value, str | int | float)
            or isinstance(value, bool)
            or not str(value).strip()
        ):
            self.fail(node.key_lines.get(key, node.line), f"{key!r} must be a non-empty string")
        return str(value).strip()

    def strings(self, node: _Map, key: str, *, required: bool = True) -> list[str]:
        value = node.get(key)
        line = node.key_lines.get(key, node.line)
        if value is None and not required:
            return []
        if not isinstance(value, _Seq) or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(line, f"{key!r} must be a list of non-empty strings")
        return [v.strip() for v in value]

    def item_lines(self, node: _Map, key: str) -> list[int]:
        value = node.get(key)
        return list(value.item_lines) if isinstance(value, _Seq) else []


def _plain(value: object) -> object:
    """Strip the line-tracking containers so the value serialises as plain JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
