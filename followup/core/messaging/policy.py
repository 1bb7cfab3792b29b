"""What may be texted, when, how often, and what a patient's reply means (DOMAIN.md §6).

Pure functions over plain values: no clock, no database. Every datetime must be timezone-aware.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from followup.core.messaging.red_flags import has_red_flag

# --- content ------------------------------------------------------------------------------------

# Words that reveal a diagnosis, a finding, a body part under study or a specialty. Other people
# read phones, so none may appear in a patient SMS. Entries are matched on whole words after
# lowercasing and removing accents ("compresión" matches "compresion"); a trailing "*" matches
# any ending ("spondyl*": spondylosis, spondylolisthesis, spondyloarthritis).
PHI_DENYLIST: tuple[str, ...] = (
    # specialties and services
    "neuro", "neurolog*", "neurosurg*", "neurocirug*",
    "ortho", "orthop*", "ortop*", "traumatolog*",
    "spine", "spinal", "columna", "vertebra*",
    "pain", "pain management", "pain clinic", "dolor", "manejo del dolor",
    "rheumatolog*", "reumatolog*",
    "physical therapy", "physiotherap*", "fisioterap*",
    "surgery", "surgeon*", "surgical", "cirug*", "cirujan*",
    "oncolog*", "radiolog*",
    # the study itself
    "mri", "magnetic resonance", "resonancia",
    # findings and diagnoses
    "diagnos*", "finding*", "hallazgo*",
    "hernia*", "disc", "discs", "disk", "disks", "disco", "discos",
    "protrusion*", "extrusion*", "bulge*", "bulging",
    "stenosis", "estenosis", "compress*", "compresion*",
    "cord", "medula", "myelopath*", "mielopat*", "radiculopath*", "radiculopat*",
    "cauda equina", "syrinx", "syringomyelia", "siringomielia",
    "fractur*",
    "tumor*", "tumour*", "cancer*", "neoplas*", "malignan*", "metasta*", "lesion*",
    "sclerosis", "esclerosis", "demyelinat*", "desmielin*",
    "sacroiliitis", "sacroileitis", "spondyl*", "espondil*", "axspa", "ankylos*", "anquilos*",
    "arthrit*", "artritis", "arthropath*", "artropat*", "degenerat*", "modic",
    "infection*", "infeccion*", "abscess*", "absceso*", "osteomyelitis", "osteomielitis",
    "discitis", "stroke", "infarct*", "infarto*", "ictus",
    "hemorrhag*", "haemorrhag*", "hemorragia*",
    # symptoms that would tell a reader why the visit exists
    "sciatica", "ciatica", "numbness", "tingling", "entumec*", "incontinen*",
)  # fmt: skip


def _fold(text: str) -> str:
    """Lowercase without accents, so patients' and templates' spellings compare equal."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _term_pattern(term: str) -> str:
    stem = term.removesuffix("*")
    words = r"\s+".join(re.escape(word) for word in stem.split())
    return words + (r"\w*" if term.endswith("*") else "") + r"\b"


# Longest entries first, so "pain management" is reported as one term and not as "pain".
_PHI_RE = re.compile(
    r"\b(?:" + "|".join(_term_pattern(t) for t in sorted(PHI_DENYLIST, key=len, reverse=True)) + ")"
)


def phi_terms_in(text: str) -> list[str]:
    """Deny-listed words found in `text`: lowercased, unaccented, in order of first appearance."""
    found: list[str] = []
    for match in _PHI_RE.finditer(_fold(text)):
        term = " ".join(match.group().split())
        if term not in found:
            found.append(term)
    return found


# --- quiet hours --------------------------------------------------------------------------------

# With no known time zone a send must be allowed everywhere the patient might be. These zones
# cover the 50 states (Indiana, Detroit, Boise ... share an offset with one of them; Adak's clock
# is never behind Honolulu's) plus Puerto Rico and the US Virgin Islands (UTC-4 all year, an hour
# ahead of Eastern in winter; America/Puerto_Rico stands for both). Guam, the Northern Marianas
# and American Samoa are left out: with them no hour is inside 08:00-20:00 everywhere.
# Result with the default window: 08:00-14:00 Hawaii time (13:00-19:00 EST, 14:00-20:00 EDT).
US_STRICT_ZONES: tuple[ZoneInfo, ...] = tuple(
    ZoneInfo(name)
    for name in (
        "America/Puerto_Rico",
        "America/New_York",
        "America/Chicago",
        "America/Denver",
        "America/Phoenix",
        "America/Los_Angeles",
        "America/Anchorage",
        "Pacific/Honolulu",
    )
)

# Each step jumps to the opening of a window in some zone; a handful suffice when the windows
# overlap at all, so running out means they never do.
_MAX_STRICT_STEPS = 32


def _require_aware(name: str, value: datetime) -> None:
    if value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")


def _check_window(start_hour: int, end_hour: int) -> None:
    if not 0 <= start_hour < end_hour <= 24:
        raise ValueError(f"bad send window {start_hour}:00-{end_hour}:00")


def _next_in_zone(when: datetime, zone: ZoneInfo, start_hour: int, end_hour: int) -> datetime:
    local = when.astimezone(zone)
    if start_hour <= local.hour < end_hour:
        return when
    day = local.date() if local.hour < start_hour else local.date() + timedelta(days=1)
    # Built from the local calendar day, not by adding 24 hours, so a DST change in between does
    # not shift the opening by an hour. Read back through UTC, a wall time in a DST gap lands
    # just after the gap, still inside the window.
    opening = datetime.combine(day, time(start_hour), tzinfo=zone)
    return opening.astimezone(when.tzinfo)


def _zones_for(zone: ZoneInfo | None) -> tuple[ZoneInfo, ...]:
    return (zone,) if zone is not None else US_STRICT_ZONES


def is_send_allowed(
    when: datetime, zone: ZoneInfo | None, *, start_hour: int = 8, end_hour: int = 20
) -> bool:
    """Whether `when` is inside start_hour:00 (inclusive) .. end_hour:00 (exclusive) local time;
    with no zone, inside that window in every zone of US_STRICT_ZONES."""
    _require_aware("when", when)
    _check_window(start_hour, end_hour)
    return all(start_hour <= when.astimezone(z).hour < end_hour for z in _zones_for(zone))


def next_allowed_send_time(
    when: datetime, zone: ZoneInfo | None, *, start_hour: int = 8, end_hour: int = 20
) -> datetime:
    """The earliest instant at or after `when` that `is_send_allowed`; `when` itself if allowed.

    The result is expressed in `when`'s tzinfo. An end of 20 means a send at 20:00:00 sharp
    already waits for the next morning: TCPA allows until 21:00, Florida and Oklahoma until 20:00.
    """
    _require_aware("when", when)
    _check_window(start_hour, end_hour)
    candidate = when
    for _ in range(_MAX_STRICT_STEPS):
        # Every instant before a zone's next opening is forbidden in that zone, so jumping to
        # the latest opening never skips an instant that all zones allow.
        moved = max(_next_in_zone(candidate, z, start_hour, end_hour) for z in _zones_for(zone))
        if moved == candidate:
            return candidate
        candidate = moved
    raise ValueError(
        f"no hour is inside {start_hour}:00-{end_hour}:00 in every zone of US_STRICT_ZONES"
    )


# --- reminders and caps -------------------------------------------------------------------------


def reminder_send_times(
    appointment_start: datetime,
    zone: ZoneInfo | None,
    *,
    days_before: Iterable[int] = (3, 1),
    now: datetime,
    send_hour: int = 10,
    start_hour: int = 8,
    end_hour: int = 20,
) -> list[tuple[int, datetime]]:
    """(days_before, send time) for each reminder still worth sending, earliest first.

    Each reminder goes at send_hour on the local calendar day N days before the appointment,
    moved into the allowed window. With no zone the days are counted in the appointment's own
    time zone (the clinic's) and the strict all-US window applies. A reminder whose time is
    already before `now`, or not before the appointment, is skipped, not sent late.
    """
    _require_aware("appointment_start", appointment_start)
    _require_aware("now", now)
    visit = appointment_start if zone is None else appointment_start.astimezone(zone)
    planned: list[tuple[int, datetime]] = []
    for days in sorted(set(days_before), reverse=True):
        if days < 0:
            raise ValueError(f"days_before must not be negative, got {days}")
        nominal = datetime.combine(
            visit.date() - timedelta(days=days), time(send_hour), tzinfo=visit.tzinfo
        )
        send_at = next_allowed_send_time(nominal, zone, start_hour=start_hour, end_hour=end_hour)
        if now <= send_at < appointment_start:
            planned.append((days, send_at))
    return sorted(planned, key=lambda item: item[1])


def _fits_caps(
    send: datetime, history: Sequence[datetime], zone: ZoneInfo, per_day: int, per_week: int
) -> bool:
    day = send.astimezone(zone).date()
    days = [sent.astimezone(zone).date() for sent in history]
    if sum(d == day for d in days) + 1 > per_day:
        return False
    # "A week" is any 7 consecutive local days, not a calendar week: a calendar week would allow
    # three sends on a Saturday's side and three more on the Sunday's.
    for first in (day - timedelta(days=offset) for offset in range(7)):
        last = first + timedelta(days=6)
        if sum(first <= d <= last for d in days) + 1 > per_week:
            return False
    return True


def apply_caps(
    times: Iterable[datetime],
    zone: ZoneInfo | None,
    *,
    per_day: int = 1,
    per_week: int = 3,
    already_sent: Iterable[datetime] = (),
) -> list[datetime]:
    """The sends that keep one patient at ≤per_day per local day and ≤per_week in any 7 local
    days, earliest first; `already_sent` (sent or scheduled messages) count but are not returned.

    Earlier sends win. With no zone a send must fit the caps in every zone of US_STRICT_ZONES.
    Replies the carriers require (HELP, the opt-out confirmation) are not capped: do not pass them.
    """
    history = list(already_sent)
    candidates = sorted(times)
    for value in (*history, *candidates):
        _require_aware("send time", value)
    kept: list[datetime] = []
    for send in candidates:
        if all(_fits_caps(send, history, z, per_day, per_week) for z in _zones_for(zone)):
            kept.append(send)
            history.append(send)
    return kept


# --- replies ------------------------------------------------------------------------------------

# Answers to a patient's own text (idempotency key "reply:<inbound sid>:<kind>"): sent at any
# hour and outside the caps, since the patient asked.
REPLY_KEY_PREFIX = "reply:"
# The only texts an opted-out number may still get, each once, as the answer to its own text
# (carriers require both). Not a redelivery, not urgent advice queued before the STOP: after
# STOP nothing else is sent. A red flag's advice goes in the webhook's own response instead.
AFTER_OPT_OUT_KINDS = frozenset({"help", "opt_out_confirmation"})


class ReplyIntent(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    CONFIRM = "confirm"
    RESCHEDULE = "reschedule"
    DECLINE = "decline"  # no to a waitlist offer, or "not coming" (a scheduler calls)
    CHOICE = "choice"  # 1, 2 or 3: one of the slots offered after R
    WORSENING = "worsening"
    OTHER = "other"


# Whole-message keywords. CANCEL, END and QUIT are carrier opt-out words: a carrier blocks the
# number on them whatever the patient meant, so the engine must agree.
_OPT_OUT_WORDS = frozenset(
    {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout",
     "baja", "alto", "parar", "pare", "cancelar"}
)  # fmt: skip
# Opt-out words that also count as the first word of a longer message ("STOP please").
_OPT_OUT_LEADING = frozenset({"stop", "stopall", "unsubscribe", "revoke", "optout"})
_OPT_IN_WORDS = frozenset({"start", "unstop"})
_HELP_WORDS = frozenset({"help", "info", "ayuda", "informacion"})
_CONFIRM_WORDS = frozenset(
    {"c", "confirm", "confirmed", "yes", "y", "si", "confirmo", "confirmar", "confirmado"}
)
_RESCHEDULE_WORDS = frozenset({"r", "reschedule", "cambiar", "reprogramar"})
# Said after a one-letter keyword, these keep it a keyword ("C thanks", "R please").
_PLEASANTRIES = frozenset(
    {"thanks", "thank", "you", "thx", "please", "pls", "ok", "gracias", "por", "favor"}
)
# Said right after a one-letter keyword, these start a second sentence and keep the letter a
# keyword ("C but my legs are numb now", "R, the pain is unbearable").
_SENTENCE_TURNS = frozenset({"but", "also", "and", "pero", "y", "tambien"})
_DECLINE_WORDS = frozenset({"n", "no", "no thanks", "no thank you", "no gracias"})

_CANT = r"(?:can'?t|cannot|can not|unable to)"
_DONT = r"(?:don'?t|do not)"
# Revocation "by any reasonable means" (FCC, 2025): free text counts as an opt-out.
_REVOCATION_RE = re.compile(
    r"\b(?:"
    r"stop (?:texting|messaging|sending|contacting|these|the texts|the messages|it)"
    rf"|{_DONT} (?:text|message|contact|send)"
    r"|no more (?:texts|messages|text messages|sms)"
    r"|(?:remove|take) me (?:off|from)"
    rf"|{_DONT} want (?:these|your|the|any more|anymore|any)? ?(?:texts|messages)"
    r"|unsubscribe|opt me out|opt out|wrong (?:number|person)|remove (?:my|this) number"
    r"|leave me alone|(?:no|not) (?:want|wanting) (?:any )?(?:more )?(?:texts|messages)"
    r"|no me (?:envien|manden|escriban|contacten)"
    r"|ya no (?:me )?(?:envien|manden|escriban)"
    r"|no quiero (?:recibir )?(?:mas )?(?:mensajes|textos)"
    r"|dejen de (?:escribir|mandar|enviar|contactar)\w*"
    r"|dar(?:me)? de baja|darse de baja|numero equivocado|equivoca\w* de numero"
    r")\b"
)
_RESCHEDULE_RE = re.compile(
    r"\b(?:"
    r"re ?schedule|change (?:my|the) (?:appointment|appt|visit|time|date|day)"
    r"|move (?:my|the|it) (?:appointment|appt|visit|to)|come (?:in )?(?:earlier|sooner)"
    r"|push (?:it|this|my appointment|the appointment) (?:back|out)"
    r"|(?:can|could) we (?:do|switch|change|make it)|(?:day|morning|afternoon|week) instead"
    r"|different (?:time|day|date)|another (?:time|day|date)|(?:any )?other (?:times|days|dates)"
    r"|(?:anything|something|any openings?|any slots?) (?:next|later|else|earlier|on)"
    rf"|{_CANT} make it(?! worse| better)"
    r"|cambiar\b(?! (?:de )?numero)|cambio de (?:cita|fecha|hora)|reprogram\w*"
    r"|otra (?:fecha|hora|cita)|otro dia|en vez de|mejor (?:el|otro)"
    r"|no puedo (?:ir|asistir|llegar|ese dia)"
    r")\b"
)
# Saying the patient will not come, or wants the visit cancelled: a scheduler confirms and
# cancels, or offers the waitlist offer's slot to the next patient.
_DECLINE_RE = re.compile(
    r"\b(?:"
    r"not (?:coming|going to (?:come|go|make it|be there))|no longer (?:coming|need\w*)"
    r"|(?:wont|will not|won't) be (?:coming|there|going|attending)|(?:wont|will not) (?:come|go)"
    rf"|{_DONT} need (?:it|this|that|the (?:visit|appointment|appt)|to come)(?: anymore)?"
    r"|cancel (?:my|the|this) (?:appointment|appt|visit)|cancel it"
    r"|(?:dont|do not) want (?:the|my|this) (?:appointment|visit|appt)"
    r"|no (?:voy a|vamos a) (?:ir|poder ir|asistir|venir)|no (?:ire|asistire|vendre)"
    r"|(?:ya )?no (?:necesito|quiero) (?:la|mi|esa) cita|cancel(?:en|ar|a) (?:mi|la) cita"
    r"|cancelen"
    r")\b"
)
_CONFIRM_RE = re.compile(
    r"\b(?:"
    r"(?:i'?ll|i will|ill|we'?ll|we will|will) be there|see you (?:then|there|on|tomorrow|soon"
    r"|monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
    r"|confirm(?:ed|ing)?(?: my| the)? (?:appointment|appt|visit)|count me in"
    r"|(?:ahi|alli|alla) (?:estare|estaremos|nos vemos)|nos vemos|si (?:voy|ire|asistire|vamos)"
    r"|confirmo"
    r")\b"
)
_AFFIRMATIVE_WORDS = frozenset({"yep", "yup", "yeah", "sure", "claro", "confirmed"})
# Asking to hear from the clinic again, in words: an opt-in like START.
_RESUBSCRIBE_RE = re.compile(
    r"\b(?:"
    r"re ?subscribe|subscribe (?:me )?again|sign me (?:back )?up"
    r"|start (?:sending|texting)|(?:texts|messages|reminders) again"
    r"|(?:get|receive|getting) (?:the |your )?(?:texts|messages|reminders) (?:again|back)"
    r"|volver a recibir|recibir (?:los |sus )?(?:mensajes|textos) (?:otra vez|de nuevo)"
    r")\b"
)


def _normalize_reply(text: str) -> str:
    folded = _fold(text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(re.findall(r"[\w']+", folded))


def is_keyword(text: str) -> bool:
    """Whether the whole text is one opt-out / opt-in / help keyword ("STOP", "start.")."""
    said = _normalize_reply(text)
    return said in _OPT_OUT_WORDS | _OPT_IN_WORDS | _HELP_WORDS


def reply_intents(text: str, *, opted_out: bool = False) -> list[ReplyIntent]:
    """Every intent found in one inbound SMS, most pressing first; [OTHER] when none.

    A message can carry two ("stop texting me, I'm getting worse"): the engine should act on all
    of them (suppress and escalate), not only on the first. WORSENING is any red flag of
    `red_flags` (negation-aware: "not worse" is not worse).
    """
    said = _normalize_reply(text)
    words = said.split()
    first = words[0] if words else ""
    keyword = first if set(words[1:]) <= _PLEASANTRIES or _letter_then_more(text) else None
    intents: list[ReplyIntent] = []
    if has_red_flag(text):
        intents.append(ReplyIntent.WORSENING)
    if said in _OPT_OUT_WORDS or first in _OPT_OUT_LEADING or _REVOCATION_RE.search(said):
        intents.append(ReplyIntent.OPT_OUT)
    if first in _OPT_IN_WORDS or (opted_out and said == "yes") or _RESUBSCRIBE_RE.search(said):
        # YES re-subscribes only someone opted out (carriers read it so); otherwise it confirms.
        intents.append(ReplyIntent.OPT_IN)
    if said in _HELP_WORDS:
        intents.append(ReplyIntent.HELP)
    declines = said in _DECLINE_WORDS or bool(_DECLINE_RE.search(said))
    if not declines and (keyword in _RESCHEDULE_WORDS or _RESCHEDULE_RE.search(said)):
        intents.append(ReplyIntent.RESCHEDULE)
    confirms = (
        keyword in _CONFIRM_WORDS
        or said in _AFFIRMATIVE_WORDS
        or (
            len(words) > 1
            and first in (_CONFIRM_WORDS | _AFFIRMATIVE_WORDS) - {"c", "y"}
            # "si me pongo peor, a quien llamo?": "if", not "yes"
            and not (first == "si" and "?" in text)
        )
        or bool(_CONFIRM_RE.search(said))
    )
    if confirms and not declines and not {ReplyIntent.OPT_IN, ReplyIntent.RESCHEDULE} & {*intents}:
        intents.append(ReplyIntent.CONFIRM)
    if declines and ReplyIntent.OPT_OUT not in intents:
        intents.append(ReplyIntent.DECLINE)
    if chosen_number(text) is not None:
        intents.append(ReplyIntent.CHOICE)
    return intents or [ReplyIntent.OTHER]


_CHOICE_RE = re.compile(r"(?:(?:option|opcion|number|numero|el|la) )?#? ?([1-9])")


def declines_visit(text: str) -> bool:
    """Whether a text says the patient will not come ("not coming", "cancel my appointment",
    "no voy a ir"), beyond a bare no (which may answer the text rather than the visit)."""
    return bool(_DECLINE_RE.search(_normalize_reply(text)))


def chosen_number(text: str) -> int | None:
    """The number of a reply that is only a choice ("2", "#2", "option 2 please", "el 3")."""
    words = _normalize_reply(text.replace("#", " ")).split()
    while words and words[-1] in _PLEASANTRIES:
        words.pop()
    match = _CHOICE_RE.fullmatch(" ".join(words))
    return int(match.group(1)) if match else None


def _letter_then_more(text: str) -> bool:
    """A one-letter keyword ending its own sentence before more is said: "C. also my pain is
    worse", "R - can't walk to the car", "C but my legs are numb now"."""
    head = re.match(r"\s*([A-Za-z])\s*(?:[.,;:!\-]|\s+(\w+))", text)
    if head is None:
        return False
    after = head.group(2)
    return after is None or after.casefold() in _SENTENCE_TURNS
