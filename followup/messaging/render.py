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

from followup.errors import TemplateProblem
from followup.messaging.policy import phi_terms_in
from followup.messaging.segments import Encoding, segment_count, sms_encoding

SMS_KINDS = frozenset(
    {
        "confirmation",
        "reminder",
        "reschedule",
        "cancellation",
        "waitlist_offer",
        "help",
        "opt_out_confirmation",
        "opt_in_confirmation",
        "urgent_advice",
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


# Abbreviations patients read on a small screen. Spanish "sáb" is written "sab": "á" is not in
# the GSM-7 alphabet and would turn the whole message into UCS-2 (70 characters a segment).
_DAYS = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "es": ("lun", "mar", "mié", "jue", "vie", "sab", "dom"),
}
_MONTHS = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "es": ("ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sep", "oct", "nov", "dic"),
}
_LANGUAGE_TAG = re.compile(r"[a-z]{2,3}")


def _language_code(language: str) -> str:
    """Primary subtag of a language tag ("es-MX" -> "es"); anything unusable -> the default."""
    primary = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]
    return primary if _LANGUAGE_TAG.fullmatch(primary) else DEFAULT_LANGUAGE


def format_visit_time(dt: datetime, zone: ZoneInfo, language: str) -> str:
    """A visit time as the patient reads it, in their zone: "Tue Dec 8 at 9:30 AM" (en),
    "mar 8 dic a las 9:30" (es). Other languages get English.

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
    if code == "es":
        article = "la" if local.hour == 1 else "las"  # "a la 1:15", "a las 13:15"
        return f"{day} {local.day} {month} a {article} {local.hour}:{local.minute:02d}"
    hour12 = local.hour % 12 or 12
    meridiem = "AM" if local.hour < 12 else "PM"
    return f"{day} {month} {local.day} at {hour12}:{local.minute:02d} {meridiem}"


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
