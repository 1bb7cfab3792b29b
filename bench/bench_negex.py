"""The NegEx yardstick: `followup.nlp.assertion_status` on the NegEx annotated sentences.

    python bench/bench_negex.py --annotations PATH [--misses misses.tsv]

PATH is `rsAnnotations-1-120-random.txt` of the public NegEx distribution (Chapman et al., 2001;
github.com/chapmanbe/negex): 2,376 sentences from de-identified clinical reports, one concept
each, labelled Negated or Affirmed. The set is a yardstick, not training material, so it is
kept out of this repository, its corpus and its tests: scope is fixed in general and then
measured here. Reported: accuracy, and precision, recall and F1 of "negated", beside NegEx's
own published figures on the same sentences.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

# Chapman et al., "A simple algorithm for identifying negated findings and diseases in
# discharge summaries", J Biomed Inform 2001, on these sentences.
NEGEX_PUBLISHED = {"precision": 0.8449, "recall": 0.7784}
TARGETS = {"accuracy": 0.972, "precision": 0.95, "recall": 0.95}


@dataclass(frozen=True, slots=True)
class Sentence:
    number: str
    concept: str
    text: str
    negated: bool


def read_annotations(path: Path) -> list[Sentence]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quotechar='"'))
    return [
        Sentence(number=row[0], concept=row[1].strip(), text=row[2], negated=row[3] == "Negated")
        for row in rows[1:]
        if len(row) >= 4 and row[3] in {"Negated", "Affirmed"}
    ]


def concept_occurs(sentence: Sentence) -> bool:
    words = (re.escape(word) for word in sentence.concept.split())
    pattern = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
    return re.search(pattern, sentence.text, flags=re.IGNORECASE) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=Path, required=True)
    parser.add_argument("--misses", type=Path, help="write the disagreements here (TSV)")
    arguments = parser.parse_args()
    from rich.progress import track

    from followup.nlp import assertion_status

    annotated = read_annotations(arguments.annotations)
    # A few rows were cut at a sentence boundary inside their concept ("Neck:  Supple.  No
    # lymphadenopathy" against the sentence "Neck:  Supple."): there is nothing to assert.
    sentences = [sentence for sentence in annotated if concept_occurs(sentence)]
    skipped = len(annotated) - len(sentences)
    true_positive = false_positive = false_negative = true_negative = 0
    misses: list[tuple[str, str, str, str]] = []
    for sentence in track(sentences, description="sentences"):
        predicted = assertion_status(sentence.text, sentence.concept)["negated"]
        if predicted and sentence.negated:
            true_positive += 1
        elif predicted:
            false_positive += 1
            misses.append((sentence.number, "false negation", sentence.concept, sentence.text))
        elif sentence.negated:
            false_negative += 1
            misses.append((sentence.number, "missed negation", sentence.concept, sentence.text))
        else:
            true_negative += 1
    total = len(sentences)
    precision = true_positive / (true_positive + false_positive)
    recall = true_positive / (true_positive + false_negative)
    figures = {
        "accuracy": (true_positive + true_negative) / total,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
    }
    print(f"rows {len(annotated)}; {skipped} skipped (their concept is not in their sentence)")
    print(f"sentences {total}: {true_positive + false_negative} negated, ", end="")
    print(f"{false_positive + true_negative} affirmed")
    print(f"confusion: tp {true_positive}, fp {false_positive}, fn {false_negative}, ", end="")
    print(f"tn {true_negative}")
    print(f"{'':10} {'followup':>9} {'target':>7} {'NegEx 2001':>11}")
    for name, value in figures.items():
        target = f">={TARGETS[name]:.3f}" if name in TARGETS else ""
        published = NEGEX_PUBLISHED.get(name)
        print(
            f"{name:10} {value:9.3f} {target:>7} "
            f"{'' if published is None else f'{published:.3f}':>11}"
        )
    if arguments.misses:
        with arguments.misses.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter="\t").writerows(misses)
        print(f"{len(misses)} disagreements written to {arguments.misses}")


if __name__ == "__main__":
    main()
