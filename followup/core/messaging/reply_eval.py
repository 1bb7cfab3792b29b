"""Measure reply understanding on a labelled corpus of patient texts
(tests/corpus/replies_{dev,test}.jsonl).

A case is `{"id", "lang", "text", "intents": [...], "red_flag": bool}`, labelled from DOMAIN.md
§6 rather than from what the code answers. The report gives recall and precision per intent and
for red flags (the number that matters: a missed cauda equina is harm), and lists every case
whose intents were not exactly right.

    followup eval-replies tests/corpus/replies_dev.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from followup.core.messaging.policy import ReplyIntent, reply_intents
from followup.core.scoring import LabelScore

RED_FLAG = "red_flag"


@dataclass(frozen=True, slots=True)
class ReplyCase:
    id: str
    text: str
    intents: frozenset[str]
    red_flag: bool


@dataclass(frozen=True, slots=True)
class Understanding:
    """What the engine reads in one text: the `followup replies classify` contract."""

    intents: tuple[str, ...]
    red_flag: bool

    def to_contract(self) -> dict[str, object]:
        return {"intents": list(self.intents), "red_flag": self.red_flag}


@dataclass(frozen=True, slots=True)
class WrongReply:
    id: str
    text: str
    expected: tuple[str, ...]
    got: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReplyEvalReport:
    cases: int
    exact: int
    scores: tuple[LabelScore, ...]  # one per intent, then red_flag
    wrong: tuple[WrongReply, ...]

    def score(self, intent: str) -> LabelScore:
        return next(score for score in self.scores if score.label == intent)


def understand(text: str, *, opted_out: bool = False) -> Understanding:
    intents = tuple(str(intent) for intent in reply_intents(text, opted_out=opted_out))
    return Understanding(intents=intents, red_flag=ReplyIntent.WORSENING in intents)


def load_reply_cases(path: Path) -> list[ReplyCase]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        cases.append(
            ReplyCase(
                id=row["id"],
                text=row["text"],
                intents=frozenset(row["intents"]),
                red_flag=bool(row["red_flag"]),
            )
        )
    return cases


def evaluate_replies(cases: Iterable[ReplyCase]) -> ReplyEvalReport:
    names = [*(str(intent) for intent in ReplyIntent), RED_FLAG]
    counts = {name: [0, 0, 0] for name in names}  # true positives, false positives, misses
    wrong: list[WrongReply] = []
    total = 0
    for case in cases:
        total += 1
        got = understand(case.text)
        expected = set(case.intents) | ({RED_FLAG} if case.red_flag else set())
        found = set(got.intents) | ({RED_FLAG} if got.red_flag else set())
        for name in names:
            if name in found and name in expected:
                counts[name][0] += 1
            elif name in found:
                counts[name][1] += 1
            elif name in expected:
                counts[name][2] += 1
        if set(got.intents) != set(case.intents) or got.red_flag != case.red_flag:
            wrong.append(
                WrongReply(
                    id=case.id,
                    text=case.text,
                    expected=tuple(sorted(case.intents)),
                    got=tuple(sorted(got.intents)),
                )
            )
    scores = tuple(LabelScore(name, *counts[name]) for name in names)
    return ReplyEvalReport(cases=total, exact=total - len(wrong), scores=scores, wrong=tuple(wrong))


def format_reply_report(report: ReplyEvalReport) -> str:
    lines = [f"{report.cases} texts, {report.exact} with exactly the right intents", ""]
    lines.append(f"{'intent':<12} {'recall':>16} {'precision':>16}")
    for score in report.scores:
        actual = score.true_positives + score.false_negatives
        predicted = score.true_positives + score.false_positives
        lines.append(
            f"{score.label:<12} {score.true_positives:>4}/{actual:<4} {score.recall:6.1%}"
            f" {score.true_positives:>4}/{predicted:<4} {score.precision:6.1%}"
        )
    if report.wrong:
        lines += ["", "wrong:"]
        lines += [
            f"  {w.id}: {w.text!r} expected {', '.join(w.expected)}; got {', '.join(w.got)}"
            for w in report.wrong
        ]
    return "\n".join(lines)
