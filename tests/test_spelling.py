"""The re-speller's reading of short critical words: only beside their phrase's other word."""

from __future__ import annotations

import pytest

from followup.core.rules import RoutingRules, load_rules
from followup.core.spelling import respeller
from followup.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def rules() -> RoutingRules:
    return load_rules(PROJECT_ROOT / "rules" / "routing.yaml")


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("compression of the caude equina", "compression of the cauda equina"),
        ("Caude equina compressed", "Cauda equina compressed"),
        ("spinal crod compression", "spinal cord compression"),
        # alone, or beside a short word, a short word's typo decides nothing
        ("the caude of the pain", "the caude of the pain"),
        # an added last letter is an inflection, not a typo
        ("the spinal cords", "the spinal cords"),
        # a real word stays itself
        ("core decompression of the femoral head", "core decompression of the femoral head"),
    ],
)
def test_a_short_critical_word_is_read_beside_its_phrase(
    rules: RoutingRules, written: str, read: str
) -> None:
    assert respeller(rules)(written) == read
