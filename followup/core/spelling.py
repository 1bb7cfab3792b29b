"""Re-spelling of misspelled and truncated concept words before a report is read.

Dictated reports carry one-letter typos ("cord compresion", "flatening") and truncations
("cord compr.", "flat."). A word that is one edit (insertion, deletion, substitution or
transposition of neighbours) away from a critical concept word of at least six letters, and is
itself no word the rules or the ordinary-word list know, is read as that word. A truncation of
at least four letters ending in "." (at least five without it) that starts exactly one critical
concept and no known word is read as that concept's full word. Any other word of a critical
rule is read through a truncation too, only with its period ("epid. absc.", "caud. equina"): the
truncation must start that one word (its spelling variants count as the word) and no other word
the rules or the ordinary-word list know. A truncation's period is dropped where the next word
goes on with a critical phrase ("epid. absc." is "epidural abscess"): there it is no sentence
end; elsewhere it may be one and is kept. A word of another routed rule of at least eight
letters is read through a one-edit typo too ("metastsis", "menicsus") when the typo is near that
one word only and is no word the rules, the ordinary-word list or the critical tables know;
a shorter word a pattern requires ("tear", "nerve") only through a swap of two neighbouring
letters ("tera", "nreve") that is one edit from no other known word. A truncation of three
letters ("abs.", "hem.") or one that starts two words ("coll.", "synd.") is read only after a
word that goes on, in one critical rule's patterns, with words of that rule starting with it
("epidural abs.", "cauda equina synd."). A one-edit typo of a shorter critical word (four or
five letters) is read only beside the word that goes on with it in a critical phrase: "caude
equina", "spinal crod". The tables are built once per
rules version from the critical rules' own vocabulary, so reading a report costs one regular
expression pass and dictionary look-ups.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise

from followup.core.rules import RoutingRules, Rule, TokenPattern

_MIN_TYPO_WORD = 6  # shorter words have too many real neighbours one edit away
# words of routed, non-critical rules: "marrow" is one edit from "narrow", "contact" from
# "contract"; from eight letters on the real neighbours are few and the ordinary-word list
# names them
_MIN_ROUTED_TYPO_WORD = 8
_MIN_TRUNCATION = 4
_MIN_BARE_TRUNCATION = 5  # without the period
_WORD = re.compile(r"[A-Za-z]{3,}\.?")
# a short truncation ("abs.", "hem.") or one that starts two words ("coll.", "synd.") is read
# only after a word that goes on with exactly one rule's word starting with it ("epidural
# abs.", "subarachnoid hem.", "cauda equina synd."); that word has at least this many letters,
# so "the", "of", "with" never decide it
_MIN_CONTEXT_WORD = 5
_MIN_CONTEXT_TRUNCATION = 3
_MAX_CONTEXT_TRUNCATION = 4
# words of routed rules shorter than _MIN_ROUTED_TYPO_WORD are read through a swap of two
# neighbouring letters only ("tera", "nreve"): deletions, insertions and substitutions of short
# words make real words ("nerve" - "serve", "tear" - "year") the rules cannot all list
_MIN_SWAP_WORD = 4
_PREVIOUS_WORD = re.compile(r"([A-Za-z]+)(\.?)[ \t]+$")
_PHRASE_WORD = re.compile(r"[a-z]+")
_PLACE_OR_SIZE = re.compile(
    r"[ \t]+(?:[CTLS]\d{1,2}(?:\s*[-/]\s*[CTLS]?\d{1,2})?(?![A-Za-z0-9])"
    r"|\d+(?:\.\d+)?\s*(?:x|mm|cm)\b)",
    re.IGNORECASE,
)
_NEXT_WORD = re.compile(r"[ \t]+([A-Za-z]+)")
_PIECE = re.compile(r"(?<![A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")
# a split word is joined only into a word this long: shorter joins ("a cute", "in tact") make
# too many real words out of two
_MIN_JOINED_WORD = 8
_MIN_JOINED_CRITICAL_WORD = 7
# a one-edit typo of the shortest joined word: nothing shorter is worth looking up
_MIN_JOINED_TYPO = _MIN_JOINED_CRITICAL_WORD - 1


@dataclass(frozen=True, slots=True)
class Respeller:
    typos: dict[str, str]  # misspelling → canonical word
    truncations: dict[str, str]  # truncation → full word
    # "epid." → epidural: a truncation of any other word of a critical concept, read only with
    # its period (a bare "later" is no "lateral")
    dotted: dict[str, str] = field(default_factory=dict)
    # word → the words that follow it inside a critical phrase ("epidural" → abscess, ...)
    followers: dict[str, frozenset[str]] = field(default_factory=dict)
    # previous word → truncation → word: truncations read only after that word ("epidural" →
    # "abs" → abscess)
    after: dict[str, dict[str, str]] = field(default_factory=dict)
    # typos of short critical words, read only beside their phrase's other word: typo → next
    # word → word ("caude" → equina → cauda), previous word → typo → word ("spinal" → "crod")
    typos_before: dict[str, dict[str, str]] = field(default_factory=dict)
    typos_after: dict[str, dict[str, str]] = field(default_factory=dict)
    # every typo some previous word reads: any other word needs no look back
    typos_read_after: frozenset[str] = field(init=False)
    # the words a word speech recognition split in two or three is read as, once its pieces
    # are joined ("cord come pression", "disk itis", "osteo my elitis")
    joins: frozenset[str] = frozenset()
    # words the rules know: a piece that is one ("infarct in", "no compressive") is never
    # joined into a typo ("infarctin" is one edit from "infarction")
    known: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        read_after = frozenset(typo for by_typo in self.typos_after.values() for typo in by_typo)
        object.__setattr__(self, "typos_read_after", read_after)

    def __call__(self, text: str) -> str:
        if self.joins:
            text = self._join_split_words(text)
        return _WORD.sub(self._replace, text)

    def _join_split_words(self, text: str) -> str:
        """Pieces of one word split by single spaces, each of two letters or more, whose
        joined letters are a concept word of at least `_MIN_JOINED_WORD` letters (or a typo
        of one, from pieces the rules do not know) are read as that word."""
        pieces = list(_PIECE.finditer(text))
        lowers = [piece.group().lower() for piece in pieces]
        # piece k and piece k + 1 are split by one space
        spaced = [
            pieces[k].end() + 1 == pieces[k + 1].start() and text[pieces[k].end()] == " "
            for k in range(len(pieces) - 1)
        ]
        out: list[str] = []
        done = 0
        i = 0
        while i < len(pieces):
            for count in (3, 2):
                if i + count > len(pieces) or not all(spaced[i : i + count - 1]):
                    continue
                group = lowers[i : i + count]
                joined = "".join(group)
                if len(joined) < _MIN_JOINED_TYPO:
                    continue
                word = joined if joined in self.joins else None
                if word is None and all(
                    len(piece) > 2 and piece not in self.known for piece in group
                ):
                    word = self.typos.get(joined)
                    word = word if word in self.joins else None
                if word is not None:
                    first, last = pieces[i], pieces[i + count - 1]
                    out += [text[done : first.start()], _same_case(first.group(), word)]
                    done = last.end()
                    i += count
                    break
            else:
                i += 1
        return "".join(out) + text[done:] if out else text

    def _replace(self, match: re.Match[str]) -> str:
        found = match.group()
        dotted = found.endswith(".")
        word = found[:-1] if dotted else found
        lower = word.lower()
        canonical = self.truncations.get(lower) if dotted else None
        if canonical is None and dotted:
            canonical = self.dotted.get(lower)
        if canonical is None:
            canonical = self.typos.get(lower)
        if canonical is None and len(lower) >= _MIN_BARE_TRUNCATION:
            canonical = self.truncations.get(lower)
        if canonical is None and dotted and self.after:
            canonical = self._after_previous(lower, match.string, match.start())
        if canonical is None and not dotted:
            canonical = self._beside_phrase_word(lower, match.string, match.start(), match.end())
        if canonical is None:
            return found
        # A truncation's period is no sentence end when the next word goes on with the same
        # critical phrase ("epid. absc.", "caud. equina"); elsewhere it may be one, as in
        # lower-case dictation ("no cord compr. severe stenosis at l4-5"), and is kept.
        # Nor when the finding's level or size follows ("Epidural absc. L4-5, 9 x 14 mm.").
        keep = (
            dotted
            and not self._goes_on(canonical, match.string, match.end())
            and not _PLACE_OR_SIZE.match(match.string, match.end())
        )
        return _same_case(word, canonical) + ("." if keep else "")

    def _after_previous(self, lower: str, text: str, start: int) -> str | None:
        """The word a truncation stands for after the word before it ("epidural abs.")."""
        before = _PREVIOUS_WORD.search(text, max(0, start - 40), start)
        if before is None:
            return None
        previous = before.group(1).lower()
        read = (
            (self.truncations.get(previous) or self.dotted.get(previous))
            if before.group(2)
            else None
        )
        read = read or self.typos.get(previous) or previous
        return self.after.get(read, {}).get(lower)

    def _beside_phrase_word(self, lower: str, text: str, start: int, end: int) -> str | None:
        """A short critical word's typo, read by the word after it or before it."""
        before_next = self.typos_before.get(lower)
        if before_next is not None:
            after = _NEXT_WORD.match(text, end)
            if after is not None:
                following = after.group(1).lower()
                read = before_next.get(self.typos.get(following, following))
                if read is not None:
                    return read
        if lower not in self.typos_read_after:
            return None
        before = _PREVIOUS_WORD.search(text, max(0, start - 40), start)
        if before is None or before.group(2):
            return None
        previous = before.group(1).lower()
        return self.typos_after.get(self.typos.get(previous, previous), {}).get(lower)

    def _goes_on(self, word: str, text: str, end: int) -> bool:
        following = self.followers.get(word)
        after = _NEXT_WORD.match(text, end)
        if not following or after is None:
            return False
        lower = after.group(1).lower()
        dotted = text.startswith(".", after.end())
        read = (self.truncations.get(lower) or self.dotted.get(lower)) if dotted else None
        read = read or self.typos.get(lower) or lower
        return read in following


@lru_cache(maxsize=4)
def respeller(rules: RoutingRules) -> Respeller:
    """The re-speller for a rules version: its typo and truncation tables."""
    critical = {word for rule in rules.rules if rule.critical for word in _pattern_words(rule)}
    variants = {variant for _, forms in rules.spelling_variants for variant in forms}
    families: dict[str, str] = {}  # concept word → the stem it belongs to
    for stem, full in rules.typo_tolerant:
        families[full] = stem
        for word in critical | variants:
            if word.startswith(stem) and len(word) >= _MIN_TYPO_WORD:
                families.setdefault(word, stem)
    near: dict[str, set[str]] = {}
    for word in families:
        for typo in _one_edit(word):
            if typo not in families and len(typo) >= _MIN_TYPO_WORD - 1:
                near.setdefault(typo, set()).add(word)
    ordinary = set(rules.ordinary_words)
    # The rules list some misspellings as patterns ("compresive myelopathy"): a word the rules
    # know counts as a real word unless it is one edit from a concept word.
    known = {word for word in _known_words(rules) if word not in near} | ordinary
    # "heamorrhage" is one edit from "haemorrhage" and from "hemorrhage": two spellings of
    # one word, so no ambiguity; it is read as the word the variants are listed under.
    spelled = {form: word for word, forms in rules.spelling_variants for form in forms}
    chosen: dict[str, str] = {}
    for typo, words in near.items():
        meant = {spelled.get(word, word) for word in words}
        stems = {families.get(spelled.get(word, word), families[word]) for word in words}
        if typo not in ordinary and len(stems) == 1:
            # "flattend" is one edit from "flatten" and "flattened": the inflected form.
            chosen[typo] = max(meant, key=lambda word: (len(word), word))
    chosen = {**_routed_typos(rules, near.keys() | families.keys()), **chosen}
    prefixes: dict[str, set[str]] = {}
    for word, stem in families.items():
        for end in range(_MIN_TRUNCATION, len(word)):
            prefixes.setdefault(word[:end], set()).add(stem)
    # "comp." may be "comparison", "myeloma" is no truncation of "myelomalacia": a truncation
    # must start no ordinary word (words listed only as a typo's real neighbour, "flattering",
    # do not count). A truncation shared with a non-critical rule word ("compr.", "compromise")
    # is read as the critical concept: a missed cord compression costs more than a review.
    blocked = {
        word[:end]
        for word in ordinary - near.keys() - families.keys()
        for end in range(1, len(word) + 1)
    }
    expansion = dict(rules.typo_tolerant)
    truncations = {
        prefix: expansion[next(iter(stems))]
        for prefix, stems in prefixes.items()
        if len(stems) == 1 and prefix not in blocked and prefix not in known
    }
    return Respeller(
        typos=chosen,
        truncations=truncations,
        dotted=_dotted_truncations(critical, known, spelled),
        followers=_followers(rules, spelled),
        after=_truncations_after(rules, known | critical, spelled),
        **_short_word_typos(rules, known | critical | near.keys(), spelled),
        joins=_joins(rules, families.keys()),
        known=frozenset(known | critical),
    )


def _joins(rules: RoutingRules, critical: Iterable[str]) -> frozenset[str]:
    """The words split pieces are joined into: the words of critical and routed rules and
    their spelling variants of at least `_MIN_JOINED_WORD` letters. A typo of one of them is
    joined too ("come pression" is "comepression", one edit from "compression") when no piece
    is a word the rules know or of two letters (see `Respeller._join_split_words`)."""
    words = {
        word
        for rule in rules.rules
        if rule.referrals or rule.critical
        for word in _pattern_words(rule)
        if word.isalpha()
    } | set(critical)
    for word, forms in rules.spelling_variants:
        if word in words:
            words |= set(forms)
    # a critical concept word one letter shorter too: "acute in farct"
    return frozenset(
        {word for word in words if len(word) >= _MIN_JOINED_WORD}
        | {word for word in critical if len(word) >= _MIN_JOINED_CRITICAL_WORD}
    )


def _routed_typos(rules: RoutingRules, critical: Iterable[str]) -> dict[str, str]:
    """One-edit typos of the longer words of the other routed rules ("metastsis", "menicsus").

    A missed word there costs a referral, not an escalation, so the guards are stricter than
    for critical words: the word has at least `_MIN_ROUTED_TYPO_WORD` letters, the typo is one
    edit from that one routed word only, and it is no word the rules or the ordinary-word list
    know, nor a typo or word of a critical concept (those tables win).
    """
    words = {
        word
        for rule in rules.rules
        if rule.referrals and not rule.critical
        for word in _pattern_words(rule)
        if word.isalpha() and len(word) >= _MIN_ROUTED_TYPO_WORD
    }
    blocked = _known_words(rules) | set(critical)
    near: dict[str, set[str]] = {}
    for word in words:
        for typo in _one_edit(word):
            if typo not in blocked:
                near.setdefault(typo, set()).add(word)
    typos = {typo: next(iter(meant)) for typo, meant in near.items() if len(meant) == 1}
    for word in _head_words(rules):
        for typo in _swaps(word):
            # no other word the rules know is one edit away ("tera" is only "tear")
            if (
                typo not in blocked
                and typo not in typos
                and not any(other in blocked and other != word for other in _one_edit(typo))
            ):
                typos[typo] = word
    return typos


def _head_words(rules: RoutingRules) -> set[str]:
    """Words of routed, non-critical rules of `_MIN_SWAP_WORD` up to `_MIN_ROUTED_TYPO_WORD`
    letters that a pattern requires ("tear", "nerve", "ulnar"), not its optional fillers."""
    words: set[str] = set()
    for rule in rules.rules:
        if not rule.referrals or rule.critical:
            continue
        for pattern in rule.patterns:
            if isinstance(pattern, TokenPattern):
                for spec in pattern.as_spacy():
                    if spec.get("OP") not in ("*", "?"):
                        words.update(_spec_words(spec))
            else:
                words.update(_PHRASE_WORD.findall(pattern.lower()))
    return {
        word
        for word in words
        if word.isalpha() and _MIN_SWAP_WORD <= len(word) < _MIN_ROUTED_TYPO_WORD
    }


def _swaps(word: str) -> Iterator[str]:
    for i in range(len(word) - 1):
        if word[i] != word[i + 1]:
            yield word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _followers(rules: RoutingRules, spelled: dict[str, str]) -> dict[str, frozenset[str]]:
    """Each word of a critical rule → the words (and their spellings) that follow it in a
    phrase, or as the next required word of a token pattern."""
    forms: dict[str, set[str]] = {}
    for word, variants in rules.spelling_variants:
        forms.setdefault(word, {word}).update(variants)
    pairs: dict[str, set[str]] = {}
    for rule in rules.rules:
        if not rule.critical:
            continue
        for first, then in _word_pairs(rule):
            spelt = {form for word in then for form in forms.get(spelled.get(word, word), {word})}
            for word in first:
                pairs.setdefault(spelled.get(word, word), set()).update(spelt)
    return {word: frozenset(then) for word, then in pairs.items()}


def _word_pairs(rule: Rule) -> Iterator[tuple[list[str], list[str]]]:
    """Each word of a rule's patterns with the words that can follow it: the next word of a
    phrase, or the next word a token pattern requires (optional fillers, "severe", "the",
    between two words are no continuation of the first)."""
    for pattern in rule.patterns:
        if isinstance(pattern, TokenPattern):
            required = [spec for spec in pattern.as_spacy() if spec.get("OP") not in ("*", "?")]
            for spec, then in pairwise(required):
                yield _spec_words(spec), _spec_words(then)
        else:
            for first, then in pairwise(_PHRASE_WORD.findall(pattern.lower())):
                yield [first], [then]


def _truncations_after(
    rules: RoutingRules, known: set[str], spelled: dict[str, str]
) -> dict[str, dict[str, str]]:
    """Previous word → truncation → word, for truncations of critical concepts read only in
    context.

    "abs." alone may be "absent", "coll." "collateral": after "epidural" each starts words of
    one critical rule only (abscess, collection), and that rule's word is read. A truncation
    has `_MIN_CONTEXT_TRUNCATION` to `_MAX_CONTEXT_TRUNCATION` letters and is no known word (a
    longer real word, "fibula", is no truncation); the previous word has at least
    `_MIN_CONTEXT_WORD` letters; when the words it may start belong to more than one rule
    ("subdural hem." is hematoma or hemorrhage, one rule) it stays as written.
    """
    options: dict[tuple[str, str], dict[str, set[str]]] = {}
    for rule in rules.rules:
        if not rule.critical:
            continue
        for first, then in _word_pairs(rule):
            for previous in {spelled.get(word, word) for word in first}:
                if len(previous) < _MIN_CONTEXT_WORD or not previous.isalpha():
                    continue
                for word in {spelled.get(word, word) for word in then}:
                    # longer truncations are read without context (`_dotted_truncations`) or
                    # not at all: "fibula." after "distal" is a bone, no truncation of "fibular"
                    for end in range(
                        _MIN_CONTEXT_TRUNCATION, min(len(word), _MAX_CONTEXT_TRUNCATION + 1)
                    ):
                        by_rule = options.setdefault((previous, word[:end]), {})
                        by_rule.setdefault(rule.label, set()).add(word)
    after: dict[str, dict[str, str]] = {}
    for (previous, prefix), by_rule in options.items():
        if len(by_rule) == 1 and prefix not in known:
            (words,) = by_rule.values()
            after.setdefault(previous, {})[prefix] = min(words, key=lambda w: (len(w), w))
    return after


def _short_word_typos(
    rules: RoutingRules, known: set[str], spelled: dict[str, str]
) -> dict[str, dict[str, dict[str, str]]]:
    """One-edit typos of critical words of `_MIN_SWAP_WORD` to `_MIN_TYPO_WORD - 1` letters,
    each read only beside the word that goes on with it in a critical rule ("caude equina",
    "spinal crod"): alone, a short word has too many real neighbours. The neighbour has at
    least `_MIN_CONTEXT_WORD` letters ("the crod" decides nothing). A typo that is a known word,
    or that two words could mean beside the same neighbour, stays as written."""
    before: dict[str, dict[str, set[str]]] = {}
    after: dict[str, dict[str, set[str]]] = {}
    for rule in rules.rules:
        if not rule.critical:
            continue
        for first, then in _word_pairs(rule):
            firsts = {spelled.get(word, word) for word in first if word.isalpha()}
            thens = {spelled.get(word, word) for word in then if word.isalpha()}
            for word in firsts:
                if _MIN_SWAP_WORD <= len(word) < _MIN_TYPO_WORD:
                    for typo in _short_typos(word, known):
                        for following in thens:
                            if len(following) < _MIN_CONTEXT_WORD:
                                continue  # "the", "of" decide nothing
                            before.setdefault(typo, {}).setdefault(following, set()).add(word)
            for word in thens:
                if _MIN_SWAP_WORD <= len(word) < _MIN_TYPO_WORD:
                    for typo in _short_typos(word, known):
                        for previous in firsts:
                            if len(previous) < _MIN_CONTEXT_WORD:
                                continue
                            after.setdefault(previous, {}).setdefault(typo, set()).add(word)
    return {
        "typos_before": {
            typo: {nxt: min(words) for nxt, words in by_next.items() if len(words) == 1}
            for typo, by_next in before.items()
        },
        "typos_after": {
            previous: {typo: min(words) for typo, words in by_typo.items() if len(words) == 1}
            for previous, by_typo in after.items()
        },
    }


def _short_typos(word: str, known: set[str]) -> set[str]:
    # a letter added at the end is an inflection ("cords"), not a typo
    return {typo for typo in _one_edit(word) if typo not in known and not typo.startswith(word)}


def _spec_words(spec: dict[str, object]) -> list[str]:
    lower = spec.get("LOWER")
    if isinstance(lower, str):
        return [lower]
    if isinstance(lower, dict) and isinstance(lower.get("IN"), list):
        return [word for word in lower["IN"] if isinstance(word, str) and word.isalpha()]
    return []


def _dotted_truncations(
    critical: set[str], known: set[str], spelled: dict[str, str]
) -> dict[str, str]:
    """Truncations with a period of any word of a critical rule ("epid.", "caud.", "intracran.").

    A truncation starts exactly one word (spelling variants of a word count as that word:
    "caud." starts cauda and its variant caudal) among every word the rules and the
    ordinary-word list know, that word is a critical rule's, and the truncation is no known
    word itself.
    """
    starts: dict[str, set[str]] = {}
    for word in known | critical:
        if not word.isalpha():
            continue
        for end in range(_MIN_TRUNCATION, len(word)):
            starts.setdefault(word[:end], set()).add(spelled.get(word, word))
    return {
        prefix: next(iter(words))
        for prefix, words in starts.items()
        if len(words) == 1 and prefix not in known and next(iter(words)) in critical
    }


def _known_words(rules: RoutingRules) -> set[str]:
    """Every word the rules name, their spelling variants and the ordinary-word list."""
    words = {word for rule in rules.rules for word in _pattern_words(rule)}
    for rule in rules.rules:
        if rule.qualifier is not None:
            words |= {w for phrase in rule.qualifier.phrases for w in _PHRASE_WORD.findall(phrase)}
    words |= {w for cue in rules.abnormal_cues for w in _PHRASE_WORD.findall(cue.lower())}
    for word, forms in rules.spelling_variants:
        words |= {word, *forms}
    words |= set(rules.ordinary_words)
    return words


def _pattern_words(rule: Rule) -> Iterator[str]:
    for pattern in rule.patterns:
        if isinstance(pattern, TokenPattern):
            for spec in pattern.as_spacy():
                lower = spec.get("LOWER")
                if isinstance(lower, str):
                    yield lower
                elif isinstance(lower, dict) and isinstance(lower.get("IN"), list):
                    yield from (w for w in lower["IN"] if isinstance(w, str) and w.isalpha())
        else:
            yield from _PHRASE_WORD.findall(pattern.lower())


def _one_edit(word: str) -> Iterable[str]:
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    letters = string.ascii_lowercase
    for left, right in splits:
        if right:
            yield left + right[1:]
            yield from (left + c + right[1:] for c in letters if c != right[0])
        if len(right) > 1:
            yield left + right[1] + right[0] + right[2:]
        yield from (left + c + right for c in letters)


def _same_case(written: str, word: str) -> str:
    if written.isupper() and len(written) > 1:
        return word.upper()
    if written[0].isupper():
        return word.capitalize()
    return word
