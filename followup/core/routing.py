"""Findings + rules → a decision: urgency, critical, referrals, suggested tests, review flag.

Policy (DOMAIN.md §2–4), with the rules file supplying every clinical fact:
- A finding counts when it is asserted: not negated, historical or hypothetical. An uncertain
  finding counts ("cord compression cannot be excluded" escalates; an uncertain herniation is
  referred, flagged `uncertain`).
- The most urgent tier wins; several referrals are possible; a critical finding makes the
  decision critical (emergent: escalate now, never a routine booking).
- A finding is not routed when a rule it is `superseded_by` is asserted in the same sentence or
  at the same spinal level (a herniation compressing the S1 root goes to neurology, not also to
  pain management); a critical superseding finding with no level given covers the whole report,
  and so does any finding for a rule superseded in the "report" (a joint effusion counts alone).
- A degenerative finding named as the cause of a finding in its rule's `cause_of` (a cord or
  cauda equina compression, a severe stenosis) is routed with it: in the same statement, or at
  its spinal levels only, or just before a compression that names no level. One that also speaks
  of other places ("multilevel spondylosis", "worst at C5-6", "L3-S1") in a statement of its own
  is a finding of those places too and is routed.
- Nondiagnostic studies suggest additional testing, the tests of the study's body region;
  normal or incidental-only reports refer to no one and stay routine.
- A human must read the report (`needs_review`) when abnormal language matched no rule, a code
  is unknown, a concept is both asserted and negated at the same place (in two sentences; a
  denial "elsewhere" or in the asserting sentence says where each holds), a critical finding is
  only asked about ("evaluate for epidural abscess"), or there is no routable text at all.
  The engine never turns "don't know" into a silent routine.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from followup.core.findings import (
    CODED,
    Finding,
    ReportFindings,
    levels_overlap,
    levels_within,
    restates,
    same_place,
    spinal_levels,
)
from followup.core.rules import TIERS, RoutingRules, Rule


@dataclass(frozen=True, slots=True)
class Decision:
    urgency: str  # "emergent" | "urgent" | "routine"
    critical: bool
    referrals: list[str]  # sorted, ⊆ the contract's four specialties
    additional_testing: list[str]
    needs_review: bool
    findings: list[Finding]  # every recognised finding, negated ones included (flagged)
    rules_version: str
    explanations: list[str]  # one sentence per referral, escalation, suggestion, review reason

    def to_contract(self) -> dict[str, Any]:
        """The design's JSON contract (`followup classify`), plus the explanations."""
        return {
            "urgency": self.urgency,
            "critical": self.critical,
            "referrals": list(self.referrals),
            "additional_testing": list(self.additional_testing),
            "needs_review": self.needs_review,
            "findings": [
                {
                    "label": finding.label,
                    "text": finding.text,
                    "negated": finding.negated,
                    "uncertain": finding.uncertain,
                    "section": finding.section,
                }
                for finding in self.findings
            ],
            "rules_version": self.rules_version,
            "explanations": list(self.explanations),
        }


def decide_report(
    analysis: ReportFindings, rules: RoutingRules, *, coded_findings: Sequence[Finding] = ()
) -> Decision:
    """The decision for one analysed report (and findings from the RIS's codes, if any)."""
    decision = decide(
        analysis.findings, rules, coded_findings=coded_findings, region=analysis.region
    )
    if analysis.review_reasons:
        reasons = [
            f"needs review: {reason}, v{rules.version}" for reason in analysis.review_reasons
        ]
        decision = dataclasses.replace(
            decision, needs_review=True, explanations=[*decision.explanations, *reasons]
        )
    return decision if analysis.routed_sections else _no_routable_text(decision, rules)


def decide(
    findings: Sequence[Finding],
    rules: RoutingRules,
    *,
    coded_findings: Sequence[Finding] = (),
    region: str | None = None,
) -> Decision:
    """Apply the routing policy (module docstring) to a report's findings; `region` (the body
    region of the study) picks the tests a rule suggests."""
    version = f"v{rules.version}"
    rule_of = {rule.label: rule for rule in rules.rules}
    everything = [*findings, *coded_findings]
    known = [finding for finding in everything if finding.label in rule_of]
    asserted = [finding for finding in known if _asserted(finding)]
    routed = [finding for finding in asserted if _covering(finding, asserted, rules) is None]

    tier = max((TIERS.index(rule_of[f.label].tier) for f in routed), default=0)
    critical = any(rule_of[f.label].critical for f in routed)
    referrals = sorted({specialty for f in routed for specialty in rule_of[f.label].referrals})
    testing = list(
        dict.fromkeys(test for f in routed for test in rule_of[f.label].tests_for(region))
    )

    explanations = []
    if critical:
        explanations.append(
            f"emergent: {_describe(f for f in routed if rule_of[f.label].critical)}; "
            f"escalate to the ordering provider now, {version}"
        )
    elif TIERS[tier] == "urgent":
        urgent = (f for f in routed if rule_of[f.label].tier == "urgent")
        explanations.append(f"urgent: {_describe(urgent)}, {version}")
    for specialty in referrals:
        supporting = (f for f in routed if specialty in rule_of[f.label].referrals)
        explanations.append(f"{specialty}: {_describe(supporting)}, {version}")
    if testing:
        reasons = (f for f in routed if rule_of[f.label].tests_for(region))
        explanations.append(
            f"additional testing: {_describe(reasons)}; suggest {', '.join(testing)}, {version}"
        )
    if not referrals:
        explanations.append(
            f"no referral: no finding calls for a specialist; follow-up with the ordering "
            f"provider, {version}"
        )
    for finding in asserted:
        cover = _covering(finding, asserted, rules)
        if cover is not None:
            explanations.append(
                f"not routed separately: '{finding.text}' ({finding.label}) is covered by "
                f"'{cover.text}' ({cover.label}), {version}"
            )
    review = _review_reasons(everything, known, asserted, rules)
    explanations += [f"needs review: {reason}, {version}" for reason in review]
    return Decision(
        urgency=TIERS[tier],
        critical=critical,
        referrals=referrals,
        additional_testing=testing,
        needs_review=bool(review),
        findings=known,
        rules_version=rules.version,
        explanations=explanations,
    )


def _asserted(finding: Finding) -> bool:
    """Present for routing; an uncertain finding is present (DOMAIN.md §4)."""
    return not (finding.negated or finding.historical or finding.hypothetical)


def _covering(finding: Finding, asserted: Sequence[Finding], rules: RoutingRules) -> Finding | None:
    """The asserted finding that supersedes this one, if any (module docstring)."""
    rule = rules.rule(finding.label)
    superseders = rule.superseded_by
    for other in asserted:
        if other.label not in superseders:
            continue
        critical = rules.rule(other.label).critical
        same_sentence = other.section == finding.section != CODED and (
            other.sentence == finding.sentence
            or (critical and _clauses_of_one_sentence(finding, other))
        )
        known_levels_meet = bool(other.levels and finding.levels) and levels_overlap(
            other.levels, finding.levels
        )
        critical_here = critical and same_place(other.levels, finding.levels)
        if (
            same_sentence
            or rule.superseded_in == "report"
            or (rule.superseded_in == "place" and (known_levels_meet or critical_here))
        ):
            return other
    for other in asserted:
        if other.label in rule.cause_of and _named_as_cause(finding, other):
            return other
    return None


def _named_as_cause(cause: Finding, effect: Finding) -> bool:
    """Whether a degenerative finding is named as the cause of a compression or stenosis
    (module docstring): "Severe L4-5 stenosis from facet hypertrophy", "C5-6 disc osteophyte
    complex (no cord compression) and severe right C5-6 foraminal stenosis", FINDINGS "At C5-6
    a disc osteophyte complex flattens the cord" under IMPRESSION "C5-6 disc osteophyte
    complex", "C5-6 disc osteophyte with spin. cord compr." """
    if cause.section == effect.section != CODED:
        if cause.sentence == effect.sentence:
            # "Severe canal stenosis at L4-5 and facet arthropathy at L5-S1": two places
            return same_place(_clause_levels(cause), _clause_levels(effect))
        if _clauses_of_one_sentence(cause, effect):
            # "Severe left C5-6 foraminal stenosis; multilevel degenerative disc disease"
            return not _SEVERAL_PLACES.search(cause.sentence_text)
        next_sentence = 0 <= effect.sentence[0] - cause.sentence[1] <= 2
        if next_sentence and not effect.levels and not _SEVERAL_PLACES.search(cause.sentence_text):
            return True
    return levels_within(cause.levels, effect.levels) and not _SEVERAL_PLACES.search(
        cause.sentence_text
    )


def _clause_levels(finding: Finding) -> tuple[str, ...]:
    """The spinal levels of the clause of its sentence that holds a finding ("and", "with", a
    comma or a parenthesis ends one), when its sentence names places apart from each other;
    else the sentence's levels."""
    levels = finding.levels
    if all(levels_overlap((a,), (b,)) for a in levels for b in levels):
        return levels
    for clause in _CLAUSE_END.split(finding.sentence_text):
        if finding.text in clause:
            return spinal_levels(clause) or levels
    return levels


_CLAUSE_END = re.compile(r"[,;()]|\b(?:and|with|while|but)\b", re.IGNORECASE)

# "Multilevel spondylosis", "Cervical spondylosis, worst at C5-6": degeneration at other levels
_SEVERAL_PLACES = re.compile(
    r"\b(?:multi-?level|multiple levels|several levels|diffuse(?:ly)?|throughout|elsewhere"
    r"|(?:other|remaining) levels|(?:worst|greatest|most (?:pronounced|severe|marked|prominent|"
    r"advanced))(?:\s+at|\s+[ctls]\d))\b",
    re.IGNORECASE,
)


def _clauses_of_one_sentence(a: Finding, b: Finding) -> bool:
    """Two clauses that a semicolon joins ("C5-6 osteophyte bar; early cord compression cannot
    be excluded"): the sentencizer splits them, but a critical compression in the one speaks of
    the other's place unless both name levels that differ. Only for a critical superseder: a
    "full-thickness tear; bursitis" is two findings, each routed."""
    first, second = sorted((a, b), key=lambda f: f.sentence)
    return (
        first.sentence_text.rstrip().endswith(";")
        and 0 <= second.sentence[0] - first.sentence[1] <= 2
        and same_place(first.levels, second.levels)
    )


def _review_reasons(
    everything: Sequence[Finding],
    known: Sequence[Finding],
    asserted: Sequence[Finding],
    rules: RoutingRules,
) -> list[str]:
    reasons = []
    for finding in everything:
        if finding not in known and _asserted(finding) and not _described(finding, asserted, rules):
            quoted = f': "{finding.sentence_text}"' if finding.sentence_text else ""
            reasons.append(f"'{finding.text}' in {finding.section} matched no rule{quoted}")
    # "No cord compression elsewhere" denies it only at the places the report does not name
    denied = [
        f
        for f in known
        if f.negated
        and not (f.historical or f.hypothetical)
        and not _ELSEWHERE.search(f.sentence_text)
    ]
    conflicted: set[str] = set()
    for finding in asserted:
        for negation in denied:
            if (
                negation.label == finding.label
                and finding.label not in conflicted
                # one sentence that asserts and denies a concept says where each holds: "cord
                # compression at T8 (no cord compression at other levels)"
                and not (
                    negation.section == finding.section and negation.sentence == finding.sentence
                )
                and _same_concept(negation.text, finding.text)
                # "No X" with no level denies X everywhere; "no X at C3-4" only there.
                and (not negation.levels or levels_overlap(negation.levels, finding.levels))
            ):
                conflicted.add(finding.label)
                reasons.append(
                    f"'{finding.text}' is both asserted and negated in {finding.section}"
                )
    asserted_labels = {f.label for f in asserted}
    for finding in known:
        if (
            finding.hypothetical
            and not finding.negated
            and rules.rule(finding.label).critical
            and finding.label not in asserted_labels
        ):
            reasons.append(
                f"critical finding '{finding.text}' is raised only as a question in "
                f"{finding.section}"
            )
    return list(dict.fromkeys(reasons))


_ELSEWHERE = re.compile(
    r"\b(?:elsewhere|(?:other|remaining) (?:levels?|segments?|sites?))\b",
    re.IGNORECASE,
)


def _described(unrouted: Finding, asserted: Sequence[Finding], rules: RoutingRules) -> bool:
    """Whether abnormal language no rule matched names a recognised finding again: a word of
    its wording at the same spinal level ("L1 fracture." beside "L1 burst fracture"), in a
    clause a semicolon joins to it ("enhancing lesion ...; additional non-enhancing lesions"),
    or in another section restating a critical finding in short ("Left occipital hemorrhage,
    acute." over FINDINGS "acute hemorrhage within the left occipital lobe") at no other level
    or side. A word outside its wording ("mass" beside "conus compressed by a mass") is still
    reviewed."""
    word = _stems(unrouted.text)
    for finding in asserted:
        if _concluded_in_next_clause(unrouted, finding, rules) or _also_the_same(
            unrouted, finding, rules
        ):
            return True
        if not word <= _stems(finding.text):
            continue
        same_level = bool(unrouted.levels and finding.levels) and levels_overlap(
            unrouted.levels, finding.levels
        )
        joined = (
            finding.section == unrouted.section
            and finding.sentence_text.endswith(";")
            and 0 <= unrouted.sentence[0] - finding.sentence[1] <= 1
        )
        if same_level or joined or restates(unrouted, finding):
            return True
    return False


def _also_the_same(unrouted: Finding, finding: Finding, rules: RoutingRules) -> bool:
    """A word of the finding's own rule said "also" right after it names that finding at another
    structure: "Full-thickness pectoralis major tear. The sternal head is also torn." A word
    the rule does not use ("There is also a mass") is still reviewed."""
    return (
        finding.section == unrouted.section
        and 0 <= unrouted.sentence[0] - finding.sentence[1] <= 2
        and _ALSO.search(unrouted.sentence_text) is not None
        and _words(unrouted.text) <= _rule_words(rules.rule(finding.label))
    )


_ALSO = re.compile(r"\b(?:also|likewise|similarly)\b", re.IGNORECASE)


@lru_cache(maxsize=256)
def _rule_words(rule: Rule) -> frozenset[str]:
    """The words a rule's phrases and token patterns name."""
    text = " ".join(p if isinstance(p, str) else p.json for p in rule.patterns)
    return frozenset(re.findall(r"[a-z0-9']+", text.lower()))


def _concluded_in_next_clause(unrouted: Finding, finding: Finding, rules: RoutingRules) -> bool:
    """Signs in a clause that the next one, after a semicolon, reads as a likely urgent or
    critical diagnosis: "1st MTP effusion with synovial enhancement and a marginal erosion;
    septic arthritis is likely". The diagnosis is routed with its urgency; its signs are not
    another finding to review. A diagnosis stated outright beside them is not their reading
    ("fluid collection in the surgical bed; L4-5 discitis" is still reviewed)."""
    return (
        finding.uncertain
        and finding.section == unrouted.section
        and unrouted.sentence_text.endswith(";")
        and 0 <= finding.sentence[0] - unrouted.sentence[1] <= 1
        and rules.rule(finding.label).tier != "routine"
    )


def _stems(text: str) -> set[str]:
    """Words without a plural s ("lesions" and "lesion" are one word here)."""
    return {word.removesuffix("s") for word in _words(text)}


def _no_routable_text(decision: Decision, rules: RoutingRules) -> Decision:
    reason = (
        "needs review: the report has no IMPRESSION, FINDINGS or unheaded text to route, "
        f"v{rules.version}"
    )
    return dataclasses.replace(
        decision, needs_review=True, explanations=[*decision.explanations, reason]
    )


def _describe(findings: Iterable[Finding]) -> str:
    """ "'cord compression' in IMPRESSION matched rule cord_compression (uncertain); ..." """
    parts: dict[str, None] = {}
    for finding in findings:
        part = f"'{finding.text}' in {finding.section} matched rule {finding.label}"
        if finding.qualifier:
            part += f" (with '{finding.qualifier}')"
        if finding.uncertain:
            part += " (uncertain)"
        parts[part] = None
    return "; ".join(parts)


def _same_concept(a: str, b: str) -> bool:
    """One wording contains the other ("spondylolisthesis" / "grade 1 spondylolisthesis");
    different words under one rule ("metastasis" / "pathologic fracture") are not a conflict."""
    words_a, words_b = _words(a), _words(b)
    return words_a <= words_b or words_b <= words_a


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))
