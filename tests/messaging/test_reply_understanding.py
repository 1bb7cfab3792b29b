"""Reply understanding measured on the labelled corpus, and the red-flag rules' edges."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from followup.core.messaging.red_flags import has_red_flag, normalize, red_flags_in
from followup.core.messaging.reply_eval import evaluate_replies, load_reply_cases, understand

ROOT = Path(__file__).resolve().parents[2]
TEST_SPLIT = ROOT / "tests" / "corpus" / "replies_test.jsonl"
DEV_SPLIT = ROOT / "tests" / "corpus" / "replies_dev.jsonl"
DEV_V2_SPLIT = ROOT / "tests" / "corpus" / "replies_dev_v2.jsonl"


def test_corpus_splits_are_big_enough_and_labelled_for_both_languages() -> None:
    for split in (TEST_SPLIT, DEV_SPLIT, DEV_V2_SPLIT):
        rows = [json.loads(line) for line in split.read_text(encoding="utf-8").splitlines()]
        assert len(rows) >= 150
        assert {row["lang"] for row in rows} == {"en", "es"}
        assert all(row["red_flag"] == ("worsening" in row["intents"]) for row in rows)


@pytest.mark.parametrize("probe", [f"replies_probe{n}.jsonl" for n in ("", "2", "3", "4")])
def test_red_flags_on_the_probes_all_found_and_at_least_nine_in_ten_right(probe: str) -> None:
    # The probes were scored once at first sight (see the commits that added them), then
    # tuned on: this holds what tuning reached, not an estimate of unseen wording.
    report = evaluate_replies(load_reply_cases(TEST_SPLIT.parent / probe))

    red_flag = report.score("red_flag")
    assert red_flag.false_negatives == 0, [w.text for w in report.wrong]
    assert red_flag.precision >= 0.9


def test_red_flags_on_the_test_split_all_found_and_at_least_nine_in_ten_right() -> None:
    report = evaluate_replies(load_reply_cases(TEST_SPLIT))

    red_flag = report.score("red_flag")
    assert red_flag.false_negatives == 0, [w.text for w in report.wrong]
    assert red_flag.precision >= 0.9


def test_every_intent_on_the_second_dev_split_found_and_at_least_nine_in_ten_right() -> None:
    # Tuned on: this holds what tuning reached on the ordinary intents in free wording
    # ("I'll be there", "can we do friday instead", "no voy a ir", "ya no quiero mensajes").
    report = evaluate_replies(load_reply_cases(DEV_V2_SPLIT))

    assert report.score("red_flag").false_negatives == 0, [w.text for w in report.wrong]
    for score in report.scores:
        assert (score.label, score.recall >= 0.9, score.precision >= 0.9) == (
            score.label,
            True,
            True,
        ), [w.text for w in report.wrong]


@pytest.mark.parametrize(
    "text",
    [
        "my legs went numb and I peed myself",
        "numb between my legs",
        "the pain is unbearable",
        "me duele mucho más",
        "cant wlak",
        "pain unbearabel",
        "no numbness but I can't pee",  # a denial does not reach past "but"
        "no estoy peor, pero no puedo orinar",
        "stop texting me, I'm getting worse",
        # the safety net: new wording about the body, said as news
        "my legs feel like jelly and i fell twice",
        "mis piernas ya no me sostienen",
    ],
)
def test_red_flags(text: str) -> None:
    assert has_red_flag(text)


@pytest.mark.parametrize(
    "text",
    [
        "I'm not worse, just asking about parking",
        "no numbness, just wondering what time",
        "the pain isn't unbearable anymore",
        "what should I do if it gets worse",
        "my legs are numb, same as before",
        "no estoy peor",
        "sin fiebre",
        "cancel my appointment please",
        "I was talking to my sister, I'll be there",
        "pero gracias",  # "peor" one swap away, deliberately not corrected
        "wrong number",  # "number" is not "numb"
        # the net leaves questions and stable news alone
        "do I need to bring my pain diary",
        "my foot is in a cast, is there a ramp?",
        "me duele la espalda como siempre, nos vemos el martes",
        "my back still aches a bit",
    ],
)
def test_not_red_flags(text: str) -> None:
    assert red_flags_in(text) == []


def test_normalize_keeps_clause_breaks_and_corrects_slips_on_key_words() -> None:
    assert normalize("Can't WLAK, it's unbearabel!") == "cant walk | its unbearable |"


def test_replies_classify_prints_the_contract_from_stdin_and_from_a_file(tmp_path: Path) -> None:
    text_file = tmp_path / "reply.txt"
    text_file.write_text("no puedo caminar", encoding="utf-8")
    command = [sys.executable, "-m", "followup.cli", "replies", "classify"]

    from_stdin = subprocess.run(
        [*command, "-"], input="R", capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    from_file = subprocess.run(
        [*command, str(text_file)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )

    assert json.loads(from_stdin.stdout) == {"intents": ["reschedule"], "red_flag": False}
    assert json.loads(from_file.stdout) == {"intents": ["worsening"], "red_flag": True}


def test_eval_replies_prints_recall_and_precision_per_intent() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "followup.cli", "eval-replies", str(DEV_SPLIT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    for intent in ("red_flag", "worsening", "opt_out", "confirm", "reschedule", "other"):
        assert intent in result.stdout


def test_understand_reads_yes_as_opt_in_only_for_an_opted_out_patient() -> None:
    assert understand("YES").intents == ("confirm",)
    assert understand("YES", opted_out=True).intents == ("opt_in",)
