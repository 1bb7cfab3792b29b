"""Render patient SMS from the Jinja templates in `<templates_dir>/sms/<language>/<kind>.j2`.

Templates are site-editable files, so they run in Jinja's sandbox; context values are printed as
plain text (an SMS has no markup to escape) and are never parsed as template code.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from followup.core.messaging.policy import phi_terms_in
from followup.core.messaging.segments import Encoding, segment_count, sms_encoding
from followup.errors import TemplateProblem

SMS_KINDS = frozenset(
    {
        "confirmation",
        "reminder",
        "reschedule",
        "cancellation",
        "waitlist_offer",
        "reschedule_choices",
        "help",
        "opt_out_confirmation",
        "opt_in_confirmation",
        "urgent_advice",
        "visit_confirmed",
    }
)
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True, slots=True)
class RenderedSms:
    kind: str
    language: str  # the language actually rendered, after any fallback to DEFAULT_LANGUAGE
    body: str
    encoding: Encoding
    segments: int


# English abbreviations patients read on a small screen. Spanish names in full: "mar 8 dic"
# reads as martes or marzo. "sabado" without its accent: "á" is not in the GSM-7 alphabet and
# would turn the whole message into UCS-2 (70 characters a segment); "é" of miércoles is GSM-7.
_DAYS = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sabado", "domingo"),
}
_MONTHS = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
           "septiembre", "octubre", "noviembre", "diciembre"),
}  # fmt: skip
# How a zone is named when the patient's own differs from the clinic's: by a city patients know
# ("10:00 AM New York time"). Other zones by the city in their IANA name.
_ZONE_CITIES = {
    "America/New_York": ("New York", "Nueva York"),
    "America/Chicago": ("Chicago", "Chicago"),
    "America/Denver": ("Denver", "Denver"),
    "America/Phoenix": ("Phoenix", "Phoenix"),
    "America/Los_Angeles": ("Los Angeles", "Los Angeles"),
    "America/Anchorage": ("Anchorage", "Anchorage"),
    "Pacific/Honolulu": ("Honolulu", "Honolulu"),
    "America/Puerto_Rico": ("Puerto Rico", "Puerto Rico"),
}
# Spanish titles take their article: "con el Dr. Okafor", "El Dr. Okafor puede ...".
_ARTICLES = {"dr.": "el", "dra.": "la", "dr": "el", "dra": "la"}
_LANGUAGE_TAG = re.compile(r"[a-z]{2,3}")


def _language_code(language: str) -> str:
    """Primary subtag of a language tag ("es-MX" -> "es"); anything unusable -> the default."""
    primary = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]
    return primary if _LANGUAGE_TAG.fullmatch(primary) else DEFAULT_LANGUAGE


def format_visit_time(
    dt: datetime, zone: ZoneInfo, language: str, *, name_zone: bool = False
) -> str:
    """A visit time in `zone` (the clinic's): "Tue Dec 8 at 9:30 AM" (en), "martes 8 de
    diciembre a las 9:30" (es); with `name_zone` (the patient lives in another zone, or their
    zone is unknown) the zone follows: "... 9:30 AM New York time", "... 9:30, hora de Nueva
    York". Other languages get English.

    Tables rather than the C locale: locales differ between machines and may be missing.
    """
    if dt.utcoffset() is None:
        raise TemplateProblem(f"visit time must be timezone-aware, got {dt!r}")
    local = dt.astimezone(zone)
    code = _language_code(language)
    if code not in _DAYS:
        code = DEFAULT_LANGUAGE
    day = _DAYS[code][local.weekday()]
    month = _MONTHS[code][local.month - 1]
    city = zone_city(zone, code) if name_zone else None
    if code == "es":
        article = "la" if local.hour == 1 else "las"  # "a la 1:15", "a las 13:15"
        when = f"{day} {local.day} de {month} a {article} {local.hour}:{local.minute:02d}"
        return f"{when}, hora de {city}" if city else when
    hour12 = local.hour % 12 or 12
    meridiem = "AM" if local.hour < 12 else "PM"
    when = f"{day} {month} {local.day} at {hour12}:{local.minute:02d} {meridiem}"
    return f"{when} {city} time" if city else when


def zone_city(zone: ZoneInfo, language: str) -> str:
    """The city a zone is named by in a text ("New York", "Nueva York")."""
    fallback = zone.key.rsplit("/", 1)[-1].replace("_", " ")
    english, spanish = _ZONE_CITIES.get(zone.key, (fallback, fallback))
    return spanish if _language_code(language) == "es" else english


def with_article(name: str, capital: bool = False) -> str:
    """A Spanish title with its article: "Dr. Okafor" -> "el Dr. Okafor" ("El ..." at the
    start of a sentence); a name without a known title is left as it is."""
    title = name.split(" ", 1)[0].casefold()
    article = _ARTICLES.get(title)
    if article is None:
        return name
    return f"{article.capitalize() if capital else article} {name}"


@functools.cache
def _environment(templates_dir: Path) -> SandboxedEnvironment:
    environment = SandboxedEnvironment(
        loader=FileSystemLoader(templates_dir),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["format_visit_time"] = format_visit_time
    environment.filters["with_article"] = with_article
    return environment


def template_environment(templates_dir: Path) -> SandboxedEnvironment:
    """The one Jinja environment for a templates directory, shared by every caller."""
    return _environment(templates_dir.resolve())


def _template(environment: SandboxedEnvironment, kind: str, language: str) -> tuple[Template, str]:
    """The template for `kind` in `language`, else in the default language; and which it was."""
    for candidate in dict.fromkeys((language, DEFAULT_LANGUAGE)):
        name = f"sms/{candidate}/{kind}.j2"
        try:
            return environment.get_template(name), candidate
        except TemplateNotFound:
            continue
        except TemplateError as exc:  # a syntax error in a site-edited file
            raise TemplateProblem(f"{name}: {exc}") from exc
    raise TemplateProblem(f"no SMS template for {kind!r} in {language!r} or {DEFAULT_LANGUAGE!r}")


def render_sms(
    kind: str, language: str, context: Mapping[str, object], *, templates_dir: Path
) -> RenderedSms:
    """Render one SMS; whitespace is collapsed to single spaces so templates can wrap lines.

    Raises TemplateProblem for an unknown kind, a missing variable, a broken template, or a body
    with a deny-listed clinical word outside the clinic name (which the FCC exemption requires
    verbatim, and which the site chooses once rather than per patient).
    """
    if kind not in SMS_KINDS:
        raise TemplateProblem(f"unknown SMS kind {kind!r}")
    template, used_language = _template(
        template_environment(templates_dir), kind, _language_code(language)
    )
    try:
        body = " ".join(template.render(dict(context)).split())
    except TemplateError as exc:
        raise TemplateProblem(f"{template.name}: {exc}") from exc
    clinic_name = " ".join(str(context.get("clinic_name", "")).split())
    if terms := phi_terms_in(body.replace(clinic_name, " ") if clinic_name else body):
        # The body is not quoted: it would put the patient's message into the logs.
        raise TemplateProblem(f"{template.name}: clinical terms in the SMS body: {terms}")
    return RenderedSms(
        kind=kind,
        language=used_language,
        body=body,
        encoding=sms_encoding(body),
        segments=segment_count(body),
    )
