"""SMS rendering: golden texts, content rules, strictness and hostile input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from followup.core.messaging.plan import display_phone
from followup.core.messaging.policy import phi_terms_in
from followup.core.messaging.render import (
    SMS_KINDS,
    RenderedSms,
    format_visit_time,
    render_sms,
    template_environment,
)
from followup.errors import TemplateProblem
from followup.settings import Settings

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
NEW_YORK = ZoneInfo("America/New_York")
VISIT = datetime(2026, 12, 8, 14, 30, tzinfo=UTC)  # Tue Dec 8, 9:30 EST
OFFER_ENDS = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)  # Mon Dec 7, 17:00 EST


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def sample_context(language: str, **extra: object) -> dict[str, object]:
    return {
        "clinic_name": "Riverside Clinic",
        "clinic_phone": "555-555-0100",
        "provider_name": "Dr. Okafor",
        "visit_time": format_visit_time(VISIT, NEW_YORK, language),
        "offer_expires": format_visit_time(OFFER_ENDS, NEW_YORK, language),
        "days_before": 3,
        "choices": [
            format_visit_time(VISIT + timedelta(days=days), NEW_YORK, language)
            for days in (1, 2, 3)
        ],
        **extra,
    }


# Every kind in every language, exactly as the patient's phone shows it. Changing a template
# changes this table on purpose; check the segment count when you do.
GOLDEN: list[tuple[str, str, int, str, int]] = [
    (
        "en", "confirmation", 3,
        "Riverside Clinic: Your visit with Dr. Okafor is booked for Tue Dec 8 at 9:30 AM. "
        "Reply R to reschedule. Questions: 555-555-0100. Reply STOP to opt out.",
        1,
    ),
    (
        "en", "reminder", 3,
        "Riverside Clinic: Reminder of your visit with Dr. Okafor in 3 days, Tue Dec 8 at 9:30 AM. "
        "Bring a list of your current symptoms, their severity and how they affect daily "
        "activities. If symptoms get worse before your visit, contact your doctor right away. "
        "Reply C to confirm, R to reschedule. Questions: 555-555-0100. Reply STOP to opt out.",
        3,
    ),
    (
        "en", "reminder", 1,
        "Riverside Clinic: Reminder of your visit with Dr. Okafor tomorrow, Tue Dec 8 at 9:30 AM. "
        "Bring a list of your current symptoms, their severity and how they affect daily "
        "activities. If symptoms get worse before your visit, contact your doctor right away. "
        "Reply C to confirm, R to reschedule. Questions: 555-555-0100. Reply STOP to opt out.",
        3,
    ),
    (
        "en", "reschedule", 3,
        "Riverside Clinic: Your visit with Dr. Okafor is now Tue Dec 8 at 9:30 AM. "
        "Questions: 555-555-0100. Reply STOP to opt out.",
        1,
    ),
    (
        "en", "cancellation", 3,
        "Riverside Clinic: Your visit with Dr. Okafor on Tue Dec 8 at 9:30 AM is cancelled. "
        "To book again call 555-555-0100. Reply STOP to opt out.",
        1,
    ),
    (
        "en", "waitlist_offer", 3,
        "Riverside Clinic: Dr. Okafor can see you Tue Dec 8 at 9:30 AM. "
        "Reply C by Mon Dec 7 at 5:00 PM to book. Call 555-555-0100. Reply STOP to opt out.",
        1,
    ),
    (
        "en", "reschedule_choices", 3,
        "Riverside Clinic: To move your visit with Dr. Okafor, reply 1 for Wed Dec 9 at 9:30 AM, "
        "2 for Thu Dec 10 at 9:30 AM, 3 for Fri Dec 11 at 9:30 AM. Held until Mon Dec 7 at "
        "5:00 PM. Questions: 555-555-0100. Reply STOP to opt out.",
        2,
    ),
    (
        "en", "help", 3,
        "Riverside Clinic: appointment texts. For help call 555-555-0100. Reply STOP to opt out.",
        1,
    ),
    (
        "en", "opt_out_confirmation", 3,
        "Riverside Clinic: You are unsubscribed and will get no more texts from us. "
        "Reply START to subscribe again. Questions: 555-555-0100.",
        1,
    ),
    (
        "en", "opt_in_confirmation", 3,
        "Riverside Clinic: You are subscribed again to appointment texts from us. "
        "Questions: 555-555-0100. Reply STOP to opt out.",
        1,
    ),
    (
        "en", "urgent_advice", 3,
        "Riverside Clinic: Please call us now at 555-555-0100. If this is an emergency, "
        "call 911 or go to the nearest emergency room. Reply STOP to opt out.",
        1,
    ),
    (
        "en", "visit_confirmed", 3,
        "Riverside Clinic: Thank you. Your visit with Dr. Okafor on Tue Dec 8 at 9:30 AM is "
        "confirmed. Questions: 555-555-0100. Reply STOP to opt out.",
        1,
    ),
    (
        "es", "visit_confirmed", 3,
        "Riverside Clinic: Gracias. Su cita con el Dr. Okafor el martes 8 de diciembre a las "
        "9:30 queda confirmada. Preguntas: 555-555-0100. Responda STOP para darse de baja.",
        2,
    ),
    (
        "es", "confirmation", 3,
        "Riverside Clinic: Su cita con el Dr. Okafor es el martes 8 de diciembre a las 9:30. "
        "Para cambiarla responda R. Preguntas: 555-555-0100. Responda STOP para darse de baja.",
        2,
    ),
    (
        "es", "reminder", 3,
        "Riverside Clinic: Recordatorio de su cita con el Dr. Okafor el martes 8 de diciembre "
        "a las 9:30. "
        "Traiga una lista de sus molestias actuales, su intensidad y el efecto en sus "
        "actividades diarias. Si empeoran antes de la cita, llame a su médico de inmediato. "
        "Responda C para confirmar o R para cambiarla. Preguntas: 555-555-0100. "
        "Responda STOP para darse de baja.",
        3,
    ),
    (
        "es", "reminder", 1,
        "Riverside Clinic: Recordatorio de su cita con el Dr. Okafor mañana, martes 8 de "
        "diciembre a las 9:30. "
        "Traiga una lista de sus molestias actuales, su intensidad y el efecto en sus "
        "actividades diarias. Si empeoran antes de la cita, llame a su médico de inmediato. "
        "Responda C para confirmar o R para cambiarla. Preguntas: 555-555-0100. "
        "Responda STOP para darse de baja.",
        3,
    ),
    (
        "es", "reschedule", 3,
        "Riverside Clinic: Su cita con el Dr. Okafor ahora es el martes 8 de diciembre a las 9:30. "
        "Preguntas: 555-555-0100. Responda STOP para darse de baja.",
        1,
    ),
    (
        "es", "cancellation", 3,
        "Riverside Clinic: Su cita con el Dr. Okafor del martes 8 de diciembre a las 9:30 fue "
        "cancelada. Para una nueva cita llame al 555-555-0100. Responda STOP para darse de baja.",
        2,
    ),
    (
        "es", "waitlist_offer", 3,
        "Riverside Clinic: El Dr. Okafor puede atenderle el martes 8 de diciembre a las 9:30. "
        "Para reservar, responda C antes del lunes 7 de diciembre a las 17:00. "
        "Preguntas: 555-555-0100. "
        "Responda STOP para darse de baja.",
        2,
    ),
    (
        "es", "reschedule_choices", 3,
        "Riverside Clinic: Para cambiar su cita con el Dr. Okafor, responda 1 para el miércoles "
        "9 de diciembre a las 9:30, 2 para el jueves 10 de diciembre a las 9:30, 3 para el "
        "viernes 11 de diciembre a las 9:30. Se guardan hasta el lunes 7 de diciembre a las "
        "17:00. Preguntas: 555-555-0100. Responda STOP para darse de baja.",
        3,
    ),
    (
        "es", "help", 3,
        "Riverside Clinic: mensajes sobre sus citas. Para ayuda llame al 555-555-0100. "
        "Responda STOP para darse de baja.",
        1,
    ),
    (
        "es", "opt_out_confirmation", 3,
        "Riverside Clinic: Usted se dio de baja y no le enviaremos otros mensajes. "
        "Responda START para volver a recibirlos. Preguntas: 555-555-0100.",
        1,
    ),
    (
        "es", "opt_in_confirmation", 3,
        "Riverside Clinic: De nuevo le enviaremos mensajes sobre sus citas. "
        "Preguntas: 555-555-0100. Responda STOP para darse de baja.",
        1,
    ),
    (
        "es", "urgent_advice", 3,
        "Riverside Clinic: Llame ahora al 555-555-0100. Si es una emergencia, llame al 911 "
        "o vaya a urgencias de inmediato. Responda STOP para darse de baja.",
        1,
    ),
]  # fmt: skip


def render_sample(kind: str, language: str, days_before: int = 3) -> RenderedSms:
    context = sample_context(language, days_before=days_before)
    return render_sms(kind, language, context, templates_dir=TEMPLATES)


@pytest.mark.parametrize(("language", "kind", "days_before", "body", "segments"), GOLDEN)
def test_golden_text(language: str, kind: str, days_before: int, body: str, segments: int) -> None:
    rendered = render_sample(kind, language, days_before)
    # Every template is worded to stay in GSM-7, Spanish included (no á í ó ú).
    assert rendered == RenderedSms(kind, language, body, "GSM-7", segments)


def test_golden_table_covers_every_kind_and_language() -> None:
    assert {(language, kind) for language, kind, *_ in GOLDEN} == {
        (language, kind) for language in ("en", "es") for kind in SMS_KINDS
    }


def test_template_files_are_exactly_the_known_kinds() -> None:
    for language in ("en", "es"):
        names = {path.stem for path in (TEMPLATES / "sms" / language).glob("*.j2")}
        assert names == SMS_KINDS


@pytest.mark.parametrize("path", sorted((TEMPLATES / "sms").glob("*/*.j2")), ids=str)
def test_template_source_has_no_clinical_terms(path: Path) -> None:
    assert phi_terms_in(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(("language", "kind", "days_before"), [g[:3] for g in GOLDEN])
def test_required_content(language: str, kind: str, days_before: int) -> None:
    body = render_sample(kind, language, days_before).body
    assert phi_terms_in(body) == []
    assert "Riverside Clinic" in body
    assert "555-555-0100" in body
    if kind not in {"help", "opt_out_confirmation", "opt_in_confirmation", "urgent_advice"}:
        assert "Dr. Okafor" in body  # FCC exemption: provider name in the text
        assert "9:30" in body
    stop_text = "Reply STOP to opt out" if language == "en" else "Responda STOP"
    # The confirmation of an opt-out is the one text that must not ask for it again.
    assert (stop_text in body) is (kind != "opt_out_confirmation")


@pytest.mark.parametrize(
    ("language", "visit", "expires", "segments"),
    [
        ("en", VISIT, OFFER_ENDS, 1),
        # The longest times: a two-digit day and 12 o'clock, on both.
        ("en", utc(2026, 12, 30, 17, 0), utc(2026, 12, 30, 5, 0), 1),
        # Spanish needs more words than one segment holds (kept in GSM-7: two, not UCS-2's 3).
        ("es", VISIT, OFFER_ENDS, 2),
    ],
)
def test_the_waitlist_offer_fits_its_segments_with_the_default_site(
    language: str, visit: datetime, expires: datetime, segments: int
) -> None:
    """The site name and callback number the engine ships with, not the short sample ones."""
    shipped = Settings.model_fields
    context = {
        "clinic_name": shipped["site_name"].default,
        "clinic_phone": display_phone(shipped["clinic_phone"].default),
        "provider_name": "Dr. Okafor",
        "visit_time": format_visit_time(visit, NEW_YORK, language),
        "offer_expires": format_visit_time(expires, NEW_YORK, language),
    }
    rendered = render_sms("waitlist_offer", language, context, templates_dir=TEMPLATES)
    assert (rendered.encoding, rendered.segments) == ("GSM-7", segments)


def test_reminders_carry_the_preparation_advice() -> None:
    body = render_sample("reminder", "en").body
    assert "list of your current symptoms, their severity and how they affect daily" in body
    assert "If symptoms get worse before your visit, contact your doctor right away." in body


@pytest.mark.parametrize(("language", "kind", "days_before"), [g[:3] for g in GOLDEN])
def test_every_variable_is_required(language: str, kind: str, days_before: int) -> None:
    context = sample_context(language, days_before=days_before)
    used = [key for key in context if _uses(kind, language, key)]
    assert used, "a template with no variables cannot carry the clinic name"
    for key in used:
        partial = {k: v for k, v in context.items() if k != key}
        with pytest.raises(TemplateProblem, match=key):
            render_sms(kind, language, partial, templates_dir=TEMPLATES)


def _uses(kind: str, language: str, key: str) -> bool:
    return key in (TEMPLATES / "sms" / language / f"{kind}.j2").read_text(encoding="utf-8")


def test_unknown_kind_is_a_template_problem() -> None:
    with pytest.raises(TemplateProblem, match="unknown SMS kind"):
        render_sms("lab_results", "en", sample_context("en"), templates_dir=TEMPLATES)


@pytest.mark.parametrize(
    ("asked", "used"),
    [("es", "es"), ("ES", "es"), ("es-MX", "es"), ("es_US", "es"), ("fr", "en"),
     ("", "en"), ("../../etc", "en"), ("en-US", "en")],
)  # fmt: skip
def test_language_resolution(asked: str, used: str) -> None:
    rendered = render_sms("help", asked, sample_context("en"), templates_dir=TEMPLATES)
    assert rendered.language == used


def _site_templates(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "sms" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_missing_translation_falls_back_to_english(tmp_path: Path) -> None:
    templates = _site_templates(tmp_path, {"en/help.j2": "{{ clinic_name }} help"})
    rendered = render_sms("help", "es", {"clinic_name": "Riverside"}, templates_dir=templates)
    assert (rendered.language, rendered.body) == ("en", "Riverside help")


def test_missing_template_everywhere_is_a_template_problem(tmp_path: Path) -> None:
    templates = _site_templates(tmp_path, {"en/help.j2": "help"})
    with pytest.raises(TemplateProblem, match="reminder"):
        render_sms("reminder", "es", {}, templates_dir=templates)


def test_broken_template_is_a_template_problem(tmp_path: Path) -> None:
    templates = _site_templates(tmp_path, {"en/help.j2": "{% if %}"})
    with pytest.raises(TemplateProblem, match=r"help\.j2"):
        render_sms("help", "en", {}, templates_dir=templates)


def test_sandbox_blocks_template_code_reaching_python(tmp_path: Path) -> None:
    templates = _site_templates(
        tmp_path, {"en/help.j2": "{{ clinic_name.__class__.__mro__[1].__subclasses__() }}"}
    )
    with pytest.raises(TemplateProblem):
        render_sms("help", "en", {"clinic_name": "x"}, templates_dir=templates)


def test_whitespace_is_collapsed(tmp_path: Path) -> None:
    templates = _site_templates(
        tmp_path,
        {"en/help.j2": "  {{ clinic_name }}\n\n  {% if True %}\n  line\t two \n{% endif %}\n"},
    )
    rendered = render_sms("help", "en", {"clinic_name": "A\n B"}, templates_dir=templates)
    assert rendered.body == "A B line two"


@pytest.mark.parametrize(
    "hostile",
    ["{{ 7*7 }}", "{% raw %}x", "<script>alert(1)</script>", "{{ config }}", "${7*7}", "&amp;"],
)
def test_hostile_values_render_as_inert_text(hostile: str) -> None:
    context = sample_context("en", provider_name=hostile, clinic_name=hostile)
    body = render_sms("confirmation", "en", context, templates_dir=TEMPLATES).body
    assert body.startswith(f"{hostile}: Your visit with {hostile} is booked")
    assert "49" not in body


def test_clinical_term_in_a_value_is_refused_without_echoing_the_body() -> None:
    context = sample_context("en", provider_name="Neurology Team")
    with pytest.raises(TemplateProblem, match="neurology") as raised:
        render_sms("confirmation", "en", context, templates_dir=TEMPLATES)
    assert "Your visit" not in str(raised.value)


def test_clinic_name_is_exempt_from_the_clinical_term_check() -> None:
    # The site's legal name is required verbatim; choosing a neutral one is the site's decision.
    context = sample_context("en", clinic_name="Demo Spine & Neuro Clinic")
    body = render_sms("confirmation", "en", context, templates_dir=TEMPLATES).body
    assert body.startswith("Demo Spine & Neuro Clinic: ")


def test_environment_is_one_per_directory() -> None:
    environment = template_environment(TEMPLATES)
    assert template_environment(TEMPLATES / "sms" / "..") is environment
    assert environment.undefined.__name__ == "StrictUndefined"
    assert environment.autoescape is False


def test_environment_offers_the_time_filter(tmp_path: Path) -> None:
    templates = _site_templates(
        tmp_path, {"en/help.j2": "{{ start | format_visit_time(zone, 'es') }}"}
    )
    rendered = render_sms("help", "en", {"start": VISIT, "zone": NEW_YORK}, templates_dir=templates)
    assert rendered.body == "martes 8 de diciembre a las 9:30"


@pytest.mark.parametrize(
    ("moment", "zone", "language", "expected"),
    [
        (VISIT, "America/New_York", "en", "Tue Dec 8 at 9:30 AM"),
        (VISIT, "America/New_York", "es", "martes 8 de diciembre a las 9:30"),
        (VISIT, "America/New_York", "es-MX", "martes 8 de diciembre a las 9:30"),
        (VISIT, "America/New_York", "de", "Tue Dec 8 at 9:30 AM"),
        (VISIT, "Pacific/Honolulu", "en", "Tue Dec 8 at 4:30 AM"),
        (VISIT, "America/Los_Angeles", "en", "Tue Dec 8 at 6:30 AM"),
        (utc(2026, 7, 4, 16, 0), "America/New_York", "en", "Sat Jul 4 at 12:00 PM"),
        (utc(2026, 7, 4, 16, 0), "America/New_York", "es", "sabado 4 de julio a las 12:00"),
        (utc(2026, 7, 4, 4, 5), "America/New_York", "en", "Sat Jul 4 at 12:05 AM"),
        (utc(2026, 7, 4, 5, 5), "America/New_York", "es", "sabado 4 de julio a la 1:05"),
        # Unambiguous: "mar" read as martes or as marzo.
        (utc(2026, 3, 3, 22, 0), "America/Chicago", "es", "martes 3 de marzo a las 16:00"),
        (utc(2026, 3, 4, 22, 0), "America/Chicago", "es", "miércoles 4 de marzo a las 16:00"),
        (utc(2026, 3, 8, 7, 30), "America/New_York", "en", "Sun Mar 8 at 3:30 AM"),
    ],
)  # fmt: skip
def test_format_visit_time(moment: datetime, zone: str, language: str, expected: str) -> None:
    assert format_visit_time(moment, ZoneInfo(zone), language) == expected


@pytest.mark.parametrize(
    ("zone", "language", "expected"),
    [
        ("America/New_York", "en", "Tue Dec 8 at 9:30 AM New York time"),
        ("America/New_York", "es", "martes 8 de diciembre a las 9:30, hora de Nueva York"),
        ("America/Chicago", "en", "Tue Dec 8 at 8:30 AM Chicago time"),
        ("Europe/Madrid", "es", "martes 8 de diciembre a las 15:30, hora de Madrid"),
    ],
)
def test_format_visit_time_names_the_zone_when_asked(
    zone: str, language: str, expected: str
) -> None:
    assert format_visit_time(VISIT, ZoneInfo(zone), language, name_zone=True) == expected


def test_format_visit_time_refuses_naive_datetimes() -> None:
    with pytest.raises(TemplateProblem, match="timezone-aware"):
        format_visit_time(datetime(2026, 12, 8, 9, 30), NEW_YORK, "en")
