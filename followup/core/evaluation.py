"""Measure the classifier on a labelled corpus of reports (tests/corpus/*.jsonl).

A case is `{"id", "text", "expected": {"urgency", "critical", "referrals", "additional_testing",
"needs_review"}}`, optionally with "family" (the phrasing family), "region" (spine, brain, joint,
nerve) and "style" (the dictation style). The report gives per-specialty precision/recall,
critical recall (the number that matters most: a missed cord compression is harm) and
exact-decision accuracy (all five fields right), and lists every case that was not exactly right.

    followup eval tests/corpus/dev.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from followup.core.routing import Decision
from followup.core.rules import SPECIALTIES, RoutingRules
from followup.core.scoring import LabelScore
from followup.nlp import classify_reports

_FIELDS = ("urgency", "critical", "referrals", "additional_testing", "needs_review")
_REQUIRED_KEYS = frozenset({"id", "text", "expected"})
_OPTIONAL_KEYS = frozenset({"family", "region", "style"})


@dataclass(frozen=True, slots=True)
class GroupScore:
    """Exact decisions and critical recall within one phrasing family or body region."""

    name: str
    cases: int = 0
    exact: int = 0
    critical_expected: int = 0
    critical_found: int = 0
    false_alarms: int = 0


@dataclass(frozen=True, slots=True)
class WrongCase:
    id: str
    text: str
    expected: dict[str, Any]
    got: dict[str, Any]
    explanations: list[str]


@dataclass(frozen=True, slots=True)
class EvalReport:
    cases: int
    exact: int
    critical_expected: int
    critical_found: int
    critical_false_alarms: int
    review_expected: int
    review_found: int
    specialties: list[LabelScore]
    wrong: list[WrongCase]
    families: list[GroupScore] = field(default_factory=list)
    regions: list[GroupScore] = field(default_factory=list)
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)
    """(expected, referred) specialty → count. A specialty both expected and referred counts on
    the diagonal; a missed one is paired with each wrongly referred one (or "none"), a wrongly
    referred one with no miss counts in the "none" row; a case with no referral expected or made
    counts once in ("none", "none")."""

    @property
    def exact_accuracy(self) -> float:
        return self.exact / self.cases if self.cases else 1.0

    @property
    def critical_recall(self) -> float:
        return self.critical_found / self.critical_expected if self.critical_expected else 1.0

    @property
    def false_alarms_per_100(self) -> float:
        return 100 * self.critical_false_alarms / self.cases if self.cases else 0.0


def load_cases(path: Path) -> list[dict[str, Any]]:
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            case = json.loads(line)
            keys = set(case)
            if not _REQUIRED_KEYS <= keys <= _REQUIRED_KEYS | _OPTIONAL_KEYS or set(
                case["expected"]
            ) != set(_FIELDS):
                raise ValueError(
                    f"{path}:{number}: a case is {{id, text, expected{{{', '.join(_FIELDS)}}}}}"
                    f" and optionally {', '.join(sorted(_OPTIONAL_KEYS))}"
                )
            cases.append(case)
    return cases


def evaluate(cases: Iterable[Mapping[str, Any]], rules: RoutingRules) -> EvalReport:
    cases = list(cases)
    decisions = classify_reports((case["text"] for case in cases), rules)
    counts = {specialty: [0, 0, 0] for specialty in sorted(SPECIALTIES)}
    exact = critical_expected = critical_found = false_alarms = 0
    review_expected = review_found = 0
    wrong = []
    families: dict[str, GroupScore] = {}
    regions: dict[str, GroupScore] = {}
    confusion: dict[tuple[str, str], int] = {}
    for case, decision in zip(cases, decisions, strict=True):
        expected = _normalized(case["expected"])
        got = _normalized(_fields(decision))
        for groups, key in ((families, "family"), (regions, "region")):
            if key in case:
                name = case[key]
                groups[name] = _tally(groups.get(name, GroupScore(name)), expected, got)
        for pair in _referral_pairs(set(expected["referrals"]), set(got["referrals"])):
            confusion[pair] = confusion.get(pair, 0) + 1
        for specialty, tally in counts.items():
            want, have = specialty in expected["referrals"], specialty in got["referrals"]
            tally[0] += want and have
            tally[1] += have and not want
            tally[2] += want and not have
        critical_expected += expected["critical"]
        critical_found += expected["critical"] and got["critical"]
        false_alarms += got["critical"] and not expected["critical"]
        review_expected += expected["needs_review"]
        review_found += expected["needs_review"] and got["needs_review"]
        if got == expected:
            exact += 1
        else:
            wrong.append(
                WrongCase(case["id"], case["text"], expected, got, list(decision.explanations))
            )
    return EvalReport(
        cases=len(cases),
        exact=exact,
        critical_expected=critical_expected,
        critical_found=critical_found,
        critical_false_alarms=false_alarms,
        review_expected=review_expected,
        review_found=review_found,
        specialties=[LabelScore(name, *tally) for name, tally in counts.items()],
        wrong=wrong,
        families=sorted(families.values(), key=lambda group: group.name),
        regions=sorted(regions.values(), key=lambda group: group.name),
        confusion=confusion,
    )


def _referral_pairs(expected: set[str], got: set[str]) -> list[tuple[str, str]]:
    pairs = [(specialty, specialty) for specialty in sorted(expected & got)]
    missed, extra = sorted(expected - got), sorted(got - expected)
    pairs += [(want, have) for want in missed for have in extra or ["none"]]
    if not missed:
        pairs += [("none", have) for have in extra]
    if not expected and not got:
        pairs.append(("none", "none"))
    return pairs


def _tally(group: GroupScore, expected: dict[str, Any], got: dict[str, Any]) -> GroupScore:
    return replace(
        group,
        cases=group.cases + 1,
        exact=group.exact + (got == expected),
        critical_expected=group.critical_expected + expected["critical"],
        critical_found=group.critical_found + (expected["critical"] and got["critical"]),
        false_alarms=group.false_alarms + (got["critical"] and not expected["critical"]),
    )


def format_report(report: EvalReport) -> str:
    lines = [
        f"cases                  {report.cases}",
        f"exact decisions        {report.exact}/{report.cases} = {report.exact_accuracy:.1%}",
        f"critical recall        {report.critical_found}/{report.critical_expected}"
        f" = {report.critical_recall:.1%}  (false alarms: {report.critical_false_alarms},"
        f" {report.false_alarms_per_100:.1f} per 100 reports)",
        f"needs_review recall    {report.review_found}/{report.review_expected}",
        "",
        f"{'specialty':<18}{'precision':>10}{'recall':>8}{'tp':>5}{'fp':>5}{'fn':>5}",
    ]
    for score in report.specialties:
        lines.append(
            f"{score.label:<18}{score.precision:>10.1%}{score.recall:>8.1%}"
            f"{score.true_positives:>5}{score.false_positives:>5}{score.false_negatives:>5}"
        )
    for title, groups in (("phrasing family", report.families), ("body region", report.regions)):
        if groups:
            lines += ["", f"{title:<18}{'exact':>14}{'critical recall':>18}{'false alarms':>14}"]
            lines += [_group_line(group) for group in groups]
    names = [*sorted(SPECIALTIES), "none"]
    lines += ["", "referrals: expected (rows) × referred (columns)"]
    lines.append(f"{'':<18}" + "".join(f"{name[:12]:>14}" for name in names))
    for want in names:
        row = "".join(f"{report.confusion.get((want, have), 0):>14}" for have in names)
        lines.append(f"{want:<18}{row}")
    for case in report.wrong:
        differing = [f for f in _FIELDS if case.expected[f] != case.got[f]]
        lines += ["", f"WRONG {case.id}: {case.text[:160]!r}"]
        lines += [f"  {f}: expected {case.expected[f]!r}, got {case.got[f]!r}" for f in differing]
        lines += [f"  | {line}" for line in case.explanations]
    return "\n".join(lines)


def _group_line(group: GroupScore) -> str:
    exact = f"{group.exact}/{group.cases} {group.exact / group.cases:.0%}"
    critical = (
        f"{group.critical_found}/{group.critical_expected}" if group.critical_expected else "-"
    )
    return f"{group.name:<18}{exact:>14}{critical:>18}{group.false_alarms:>14}"


def _fields(decision: Decision) -> dict[str, Any]:
    return {field: getattr(decision, field) for field in _FIELDS}


def _normalized(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "urgency": values["urgency"],
        "critical": bool(values["critical"]),
        "referrals": sorted(values["referrals"]),
        # Test names as labellers spell them ("ct_myelography") or the rules do ("CT
        # myelography"): the same test either way.
        "additional_testing": sorted(_test_name(test) for test in values["additional_testing"]),
        "needs_review": bool(values["needs_review"]),
    }


def _test_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())
