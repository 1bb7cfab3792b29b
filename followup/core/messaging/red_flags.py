"""Red flags in a patient's text (DOMAIN.md §6): cauda equina and cord compromise, in English and
Spanish, as patients type them (typos, no punctuation), with negation ("not worse", "no
numbness", "no estoy peor").

A reply is not a diagnosis: any one of these is enough for the call-now answer and an urgent
clinician task. The balance is deliberately towards recall: a false alarm costs one phone call,
a missed cauda equina does not. Measured on tests/corpus/replies_*.jsonl (`followup
eval-replies`); tune on the dev split only.

Pure functions over text: no clock, no database.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

# Cues that, a few words before a flag in the same clause, deny or suppose it: "not worse",
# "no fever", "never had bladder trouble", "what if it gets worse", "no estoy peor", "sin fiebre".
_NEGATION_CUES = frozenset(
    {"not", "no", "never", "nothing", "none", "without", "isnt", "arent", "wasnt", "dont",
     "doesnt", "didnt", "nor", "if", "nunca", "sin", "ni", "nada", "tampoco"}
)  # fmt: skip
_NEGATION_WINDOW = 4  # words before the flag; further back the cue is about something else
# Said after a flag in the same clause, these make it old news: "numb legs, same as before".
_RESOLVED_RE = re.compile(
    r"\b(?:same as (?:before|always|usual)|no change|unchanged|went away|is gone|gone now"
    r"|(?:is|are|feels?) (?:fine|ok|okay|normal|better)|like before|igual que antes|ya paso"
    r"|se me quito|(?:esta|estan) bien|como antes"
    r"|now (?:im |i am |its |it is |i feel |feeling )?(?:fine|ok|okay|better|good|normal)"
    r"|ya (?:estoy|me siento|camino) (?:bien|mejor))\b"
)
# Said before a flag in its clause, these suppose it rather than report it: "what do I do if
# I get a fever", "si me pongo peor a quien llamo?". Spanish "si" is also "yes" ("si me duele
# mas"), so it counts as "if" only after a question's words or in a text that asks. Not "in
# case": "texting in case it matters, my legs went numb" reports; a false alarm costs a call.
_SUPPOSING_RE = re.compile(r"\b(?:what if|(?:que hago|a quien (?:llamo|le hablo)|y|solo) si)\b")
_SUPPOSING_IF_ASKED_RE = re.compile(
    r"(?:^| )si (?:me|te|se|le|empiezo|tengo|llego|no)\b"
    r"|\b(?:make|makes|making) (?:it|this|things) $"
)
# Sayings that hold a flag's word and mean nothing about the body: "peor es nada" (better than
# nothing), "worst case", "at worst". Blanked before the flags are read.
_IDIOM_RE = re.compile(r"\b(?:peor es nada|worst case|at worst|if worse comes to worst)\b")
# Where one clause ends: punctuation (kept as "|" by the normaliser) and words that turn the
# sentence ("not worse but I can't walk", "no estoy peor, pero no puedo orinar").
_CLAUSE_BREAKS = frozenset({"|", "but", "pero", "just", "solo", "though", "however", "aunque"})

_CANT = (
    r"(?:cant|cannot|can not|couldnt|could not|unable to|not able to|can barely|can hardly"
    r"|barely|hardly|(?:havent|hasnt|have not|has not) been able to|wont let me)"
)
_CANT_ES = r"(?:(?:ya )?no (?:me )?(?:puedo|logro|puede)|apenas (?:puedo|me puedo)|sin poder)"
_LEGS = r"(?:legs|feet|both legs|both feet|my legs|my feet)"
_SADDLE = (
    r"(?:between (?:my |the )?legs|groin|saddle|privates?|private (?:area|parts)|genitals?"
    r"|crotch|bottom|butt|butt cheeks|buttocks|bum|inner thighs?|down there|down below"
    r"|when i wipe|legs|both feet|feet|lower half|waist down|lower body)"
)
_SADDLE_ES = (
    r"(?:entrepierna|entre (?:las|mis) piernas|zona intima|partes intimas|genitales|nalgas"
    r"|ahi abajo|abajo|(?:las|mis|dos) piernas|los pies|al limpiarme)"
)
_NUMB = r"(?:numb\w*|no feeling|no sensation|tingl\w*|pins and needles|dead|asleep)"
_NUMB_ES = r"(?:entumec\w*|adormec\w*|dormid[oa]s?|duerm\w*|durmi\w*|hormigue\w*|muert[oa]s?)"
_NEAR = r"(?: \w+){0,5} "  # up to five words between the two halves of a flag

_FLAG_PATTERNS: tuple[tuple[str, str], ...] = (
    # worse, in any words
    ("worse", r"worse|worst|worsening|worsened"),
    ("worse", r"peor|empeor\w*|cada vez (?:mas|peor)|duele\w*(?: \w+){0,2} mas|mas dolor"),
    # can't walk or stand, legs giving way, weakness
    ("walk", rf"{_CANT} (?:even )?(?:walk|stand|stand up|get up|move|get out of bed)"),
    ("walk", r"crawl\w*|dragging my (?:foot|feet|leg|legs)|foot drop|wont hold me"),
    ("walk", r"(?:no|lost|losing) (?:strength|power) in (?:my |both )?(?:legs?|feet)"),
    ("walk", rf"{_CANT}(?: \w+){{0,2}} (?:my |the )?{_LEGS}"),
    ("walk", rf"{_CANT_ES} (?:caminar|andar|pararme|parar|levantarme|levantar|mover\w*)"),
    ("walk", r"no (?:siento|me siento) (?:las|mis|los) (?:piernas|pies)"),
    ("walk", r"(?:legs?|knees?) (?:\w+ )?(?:gave|give|giving|gives|buckl\w*|collaps\w*)"),
    ("walk", r"(?:legs?|knees?) (?:\w+ )?(?:wouldnt|wont|dont|do not|are not|arent) work\w*"),
    ("walk", r"piernas no me responden|no me responden las piernas|se me doblan"),
    ("weak", rf"weak\w*{_NEAR}legs?|legs?(?: \w+){{0,4}} weak\w*|new weakness"),
    ("weak", r"debil\w*(?: \w+){0,4} piernas|piernas(?: \w+){0,4} debil\w*"),
    ("weak", r"(?:no tengo|sin|perdi(?: la)?) fuerza\w*(?: \w+){0,3} (?:piernas|pies)"),
    # numbness between the legs, in the saddle area, or of both legs
    ("numb", rf"{_NUMB}{_NEAR}{_SADDLE}|{_SADDLE}{_NEAR}{_NUMB}|{_NUMB} {_SADDLE}"),
    ("numb", rf"{_SADDLE} {_NUMB}|numbness (?:is )?spreading|spreading numbness"),
    ("numb", rf"{_CANT} feel (?:anything|a thing) (?:down there|when i wipe)"),
    ("numb", rf"{_NUMB_ES}(?: \w+){{0,5}} {_SADDLE_ES}|{_SADDLE_ES}(?: \w+){{0,5}} {_NUMB_ES}"),
    ("numb", r"no siento nada (?:al limpiarme|ahi abajo|abajo)"),
    ("numb", rf"{_CANT} feel (?:my |the |both |either )?{_SADDLE}"),
    (
        "numb",
        r"(?:no|dont have|do not have|lost|losing|lost all|lost the) (?:feeling|sensation)"
        rf" (?:in|on|of|at|down) (?:my |the |both )?{_SADDLE}",
    ),
    (
        "numb",
        rf"{_CANT} feel (?:it|anything|a thing)(?: \w+){{0,3}}"
        rf"|{_SADDLE}(?: \w+){{0,6}} {_CANT} feel",
    ),
    # bladder and bowel control
    ("bladder", r"bladder|bowels?|urine|urinat\w*|incontinen\w*|pee|peed|peeing|pooped|poop"),
    ("bladder", r"wet\w* (?:myself|my self|my pants|the bed|me)|soiled"),
    ("bladder", r"(?:had|having) (?:an )?accidents?"),
    ("bladder", rf"{_CANT} (?:hold it|feel when i (?:need|have) to go|go number (?:2|two|1|one))"),
    (
        "bladder",
        r"(?:no|lost|losing|lose) control (?:over|of) (?:my )?(?:pee|poop|urine|bowels?|bladder)"
        r"|leak\w*",
    ),
    ("bladder", r"orin\w*|pipi|vejiga|popo|intestin\w*|me hice (?:en|encima)|me moje\w*"),
    ("bladder", r"(?:going|went|go|peeing|pooping) in my (?:pants|underwear|diaper)"),
    (
        "bladder",
        r"no siento cuando (?:tengo que|necesito) ir"
        rf"|(?:{_CANT}|didnt|did not|never) (?:\w+ )?(?:make it|get) to the (?:toilet|bathroom)",
    ),
    (
        "bladder",
        rf"(?:{_CANT_ES}|no (?:controlo|retengo|aguanto)) (?:\w+ ){{0,2}}"
        r"(?:orinar|orina|pipi|vejiga|popo|intestinos?)",
    ),
    # pain past bearing, or climbing fast
    ("pain", r"unbearable|excruciating|agony|agonizing|killing me|out of control|nothing helps"),
    (
        "pain",
        r"screaming (?:in )?pain|crying in pain|(?:8|9|10) (?:out of )?10|and climbing"
        r"|through the roof",
    ),
    (
        "pain",
        r"(?:meds|medication|medicine|pills) (?:\w+ )?(?:not|arent|dont|do not)"
        r" (?:touching|helping|working)",
    ),
    ("pain", rf"{_CANT} (?:take|stand|bear) (?:the pain|it)|so bad i"),
    ("pain", r"insoportable|inaguantable|no (?:aguanto|soporto)|muchisimo dolor|duele muchisimo"),
    # fever (these patients have back pain; with it, fever is a red flag)
    ("fever", r"fever|feverish|chills|fiebre|escalofrios|calentura"),
    ("fever", r"(?:temp|temperature) (?:of |is |at )?(?:10[0-9]|3[89])"),
    # the patient says it themselves
    ("emergency", r"emergency|emergencia|urgencias|911|ambulance|ambulancia"),
    ("emergency", r"(?:go|going|went|take me|taking me) to (?:the )?(?:er|hospital)"),
)

# The safety net under the phrases above, which miss new wording ("legs feel like jelly",
# "went limp", "no se me quita con nada"): a statement that talks about the body and does not
# say it is better, the same, mild or fine counts as a red flag too; it errs towards the phone
# call. Questions are left out ("do I need to bring my pain diary?", "is there a ramp, my foot
# is in a cast"): asking about the visit is not reporting a change, and a net that also fires
# on them raised more false alarms than it caught red flags (tests/corpus/replies_probe3).
_BODY_RE = re.compile(
    r"\b(?:pain\w*|hurt\w*|ache\w*|aching|legs?|feet|foot|toes?|knees?|hips?|back|spine"
    r"|numb|numbness|numbed|tingl\w*|weak\w*|walk\w*|limp\w*|fell|falling|pee\w*|bladder|bowels?|fever\w*"
    r"|feeling|sensation|wipe|vomit\w*|spasm\w*|dolor\w*|duele\w*|piernas?|pies?|espalda"
    r"|caminar|debil\w*|fiebre|sostien\w*|entumec\w*|hormigue\w*|orin\w*)\b"
)
_STABLE_RE = re.compile(
    r"\b(?:better|same|fine|good|great|ok|okay|no change|unchanged|improv\w*|went away|gone"
    r"|like before|as before|usual|still|a little|a bit|just sore|mild\w*|anymore|no longer"
    r"|for (?:months|years|weeks)|always|as usual|comes and goes|manageable"
    r"|mejor|igual|bien|ya no (?:me )?duele|como siempre|de siempre"
    r"|un poco|leve|solo molest\w*|como antes|todavia|sigue|se me quito|ya paso)\b"
)

# Spellings within one or two typing errors of the words most flags hang on ("wlak",
# "unbearabel", "woorse"). Words that one slip turns into a common word are left out: "peor"
# into "pero" (but), "fever" into "never", "caminar" into "cambiar" at two.
_TYPO_TARGETS = (
    "worse", "walk", "unbearable", "excruciating", "emergency", "bladder", "numbness",
    "insoportable", "caminar", "piernas", "entumecimiento", "orinar", "vejiga", "emergencia",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RedFlag:
    kind: str  # worse, walk, weak, numb, bladder, pain, fever, emergency; body (the net)
    phrase: str  # the words matched, normalised; for tests and the corpus report, never logs


def normalize(text: str) -> str:
    """Lowercase, unaccented, apostrophes dropped ("can't" → "cant"), clause punctuation kept as
    "|", typing slips on key words corrected."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    folded = re.sub(r"['\u2019\u2018`]", "", folded)
    tokens = re.findall(r"\w+|[.,;:!?\n]+", folded)
    return " ".join("|" if not token[0].isalnum() else _corrected(token) for token in tokens)


def red_flags_in(text: str) -> list[RedFlag]:
    """Every red flag in `text` that is not denied or supposed ("not worse", "if it gets worse")
    and not said to be unchanged ("numb legs, same as before")."""
    said = _IDIOM_RE.sub("~", normalize(text))
    asks = "?" in text
    found: list[RedFlag] = []
    for kind, pattern in _compiled():
        for match in pattern.finditer(said):
            if not (
                _negated(said, match.start())
                or _supposed(said, match.start(), asks=asks)
                or _resolved(said, match.end())
            ):
                found.append(RedFlag(kind=kind, phrase=match.group()))
    if not found and not _STABLE_RE.search(said) and not _asks(text, said):
        found += [
            RedFlag(kind="body", phrase=match.group())
            for match in _BODY_RE.finditer(said)
            if not (_negated(said, match.start()) or _supposed(said, match.start(), asks=asks))
        ][:1]
    return found


_QUESTION_START = frozenset(
    {"can", "could", "do", "does", "should", "is", "are", "will", "would", "how", "what",
     "where", "when", "who", "which", "may", "puedo", "puede", "debo", "donde", "cuando",
     "como", "cual", "hay"}
)  # fmt: skip


def _asks(text: str, said: str) -> bool:
    """A question (a question mark, or a question's first word in its last sentence)."""
    if "?" in text:
        return True
    last = said.rstrip(" |").rsplit("|", 1)[-1].split()
    first_words = {said.split()[0] if said.split() else "", last[0] if last else ""}
    return bool(first_words & _QUESTION_START)


def has_red_flag(text: str) -> bool:
    return bool(red_flags_in(text))


@lru_cache(maxsize=1)
def _compiled() -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((kind, re.compile(rf"\b(?:{pattern})\b")) for kind, pattern in _FLAG_PATTERNS)


def _negated(said: str, start: int) -> bool:
    before = said[:start].split()
    window: list[str] = []
    for word in reversed(before):
        if word in _CLAUSE_BREAKS or len(window) == _NEGATION_WINDOW:
            break
        window.append(word)
    return any(word in _NEGATION_CUES for word in window)


def _supposed(said: str, start: int, *, asks: bool) -> bool:
    """A flag the patient asks about or supposes, in its own clause: "if I get worse who do I
    call?" is a question, not a report (with no report beside it, a scheduler reads it)."""
    clause = said[:start].rsplit("|", 1)[-1]
    return bool(_SUPPOSING_RE.search(clause) or (asks and _SUPPOSING_IF_ASKED_RE.search(clause)))


def _resolved(said: str, end: int) -> bool:
    """Old news: said later in the flag's clause, or as the whole next clause ("numb legs, same
    as before")."""
    clause, *rest = said[end:].split("|", 2)
    following = rest[0].strip() if rest else ""
    return bool(_RESOLVED_RE.search(clause) or _RESOLVED_RE.fullmatch(following))


def _corrected(token: str) -> str:
    if token in _TYPO_TARGETS or len(token) < 4:
        return token
    for target in _TYPO_TARGETS:
        if _within_slips(token, target):
            return target
    return token


def _within_slips(token: str, target: str) -> bool:
    """One slip (a letter added, dropped, changed or two swapped) for words of five letters or
    more, two for words of eight or more; only a swap for four-letter words ("wlak")."""
    if len(target) < 5 or len(token) < 5:
        return len(token) == len(target) and _one_swap(token, target)
    allowed = 2 if len(target) >= 8 else 1
    return abs(len(token) - len(target)) <= allowed and _distance(token, target) <= allowed


def _one_swap(a: str, b: str) -> bool:
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return (
        len(diff) == 2
        and diff[1] == diff[0] + 1
        and a[diff[0]] == b[diff[1]]
        and (a[diff[1]] == b[diff[0]])
    )


def _distance(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein plus adjacent swaps)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]
