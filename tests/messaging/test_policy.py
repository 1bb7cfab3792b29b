"""Send-time, cap, content and reply policy (DOMAIN.md §6)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.core.messaging.policy import (
    PHI_DENYLIST,
    US_STRICT_ZONES,
    ReplyIntent,
    apply_caps,
    is_send_allowed,
    next_allowed_send_time,
    phi_terms_in,
    reminder_send_times,
    reply_intents,
)

ZONE_NAMES = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
]
ZONES: list[ZoneInfo | None] = [*(ZoneInfo(name) for name in ZONE_NAMES), None]
NEW_YORK = ZoneInfo("America/New_York")

# US DST changes (second Sunday of March, first Sunday of November) and the days around them.
DST_DAYS = [
    date(2025, 3, 9), date(2025, 11, 2), date(2026, 3, 8), date(2026, 11, 1),
    date(2027, 3, 14), date(2027, 11, 7),
]  # fmt: skip

any_instant = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
near_dst_change = st.builds(
    lambda day, minutes: (
        datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(minutes=minutes)
    ),
    st.sampled_from(DST_DAYS),
    st.integers(min_value=-36 * 60, max_value=60 * 60),
)
instants = st.one_of(any_instant, near_dst_change)
# The same instants, expressed in a zone other than UTC: results must not depend on that.
instants_any_tz = st.builds(
    lambda moment, zone: moment.astimezone(zone), instants, st.sampled_from(ZONES[:-1])
)
zones = st.sampled_from(ZONES)


def local_hours(moment: datetime, zone: ZoneInfo | None) -> list[int]:
    return [moment.astimezone(z).hour for z in ((zone,) if zone else US_STRICT_ZONES)]


# --- content --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("Your neurology visit", ["neurology"]),
        ("Orthopedics (Spine) referral", ["orthopedics", "spine"]),
        ("See pain management", ["pain management"]),
        ("MRI shows cord compression", ["mri", "cord", "compression"]),
        ("L4-5 disc herniation, severe stenosis", ["disc", "herniation", "stenosis"]),
        ("possible spondyloarthritis; sacroiliitis", ["spondyloarthritis", "sacroiliitis"]),
        ("Metastatic tumor, epidural abscess, infection", ["metastatic", "tumor", "abscess",
                                                           "infection"]),
        ("multiple sclerosis", ["sclerosis"]),
        ("Cita de neurología por compresión medular", ["neurologia", "compresion"]),
        ("Reumatología: espondilitis, hernia discal", ["reumatologia", "espondilitis", "hernia"]),
        ("RESONANCIA MAGNÉTICA", ["resonancia"]),
        ("NEUROLOGY and neurology", ["neurology"]),
        # Word boundaries: no match inside ordinary words.
        ("Record the accord; Concord spinet; Dolores; discuss; painting; mrs", []),
        ("Reply STOP to opt out. Questions: 555-555-0100.", []),
        ("Bring a list of your current symptoms, their severity and how they affect daily "
         "activities. If symptoms get worse before your visit, contact your doctor right away.",
         []),
    ],
)  # fmt: skip
def test_phi_terms(text: str, terms: list[str]) -> None:
    assert phi_terms_in(text) == terms


DOMAIN_TERMS = (
    "neurology", "neurologist", "orthopedic", "orthopedics", "spine", "rheumatology", "MRI",
    "herniation", "stenosis", "compression", "cord", "fracture", "tumor", "metastasis",
    "sclerosis", "sacroiliitis", "spondylolisthesis", "infection", "abscess", "myelopathy",
    "syrinx", "cauda equina", "osteomyelitis", "estenosis", "fractura", "metástasis",
    "esclerosis", "infección", "absceso",
)  # fmt: skip


def test_denylist_covers_the_specialties_and_findings_of_the_domain() -> None:
    for word in DOMAIN_TERMS:
        assert phi_terms_in(f"x {word} y"), word
    assert "pain management" in PHI_DENYLIST


# --- quiet hours ----------------------------------------------------------------------------------


@given(when=instants_any_tz, zone=zones)
def test_next_allowed_send_time_properties(when: datetime, zone: ZoneInfo | None) -> None:
    result = next_allowed_send_time(when, zone)
    assert result >= when
    assert all(8 <= hour < 20 for hour in local_hours(result, zone))
    assert is_send_allowed(result, zone)
    if is_send_allowed(when, zone):
        assert result == when
    else:
        # The earliest allowed instant: one second before it is still forbidden somewhere.
        assert not is_send_allowed(result - timedelta(seconds=1), zone)
        assert result - when < timedelta(days=1)


@given(when=instants, zone=zones)
def test_next_allowed_send_time_is_idempotent(when: datetime, zone: ZoneInfo | None) -> None:
    once = next_allowed_send_time(when, zone)
    assert next_allowed_send_time(once, zone) == once


@given(when=instants, zone=zones, start=st.integers(0, 12), length=st.integers(1, 12))
def test_custom_windows(when: datetime, zone: ZoneInfo | None, start: int, length: int) -> None:
    end = start + length
    try:
        result = next_allowed_send_time(when, zone, start_hour=start, end_hour=end)
    except ValueError:
        # Only the all-US reading can run out of hours: Hawaii and Puerto Rico are 6 hours apart.
        assert zone is None and length <= 6
        return
    assert result >= when
    assert all(start <= hour < end for hour in local_hours(result, zone))


@pytest.mark.parametrize(
    ("local", "zone", "expected_local"),
    [
        # Already allowed: unchanged, including the first and last minute of the window.
        ("2026-06-01T08:00", "America/New_York", "2026-06-01T08:00"),
        ("2026-06-01T19:59", "America/New_York", "2026-06-01T19:59"),
        # 20:00 sharp already waits for the morning (Florida / Oklahoma read 8 pm).
        ("2026-06-01T20:00", "America/New_York", "2026-06-02T08:00"),
        ("2026-06-01T06:15", "America/Denver", "2026-06-01T08:00"),
        ("2026-06-01T23:30", "America/Phoenix", "2026-06-02T08:00"),
        # DST: the night the clocks spring forward and fall back, the opening stays 08:00 local.
        ("2026-03-07T21:00", "America/New_York", "2026-03-08T08:00"),
        ("2026-10-31T21:00", "America/Los_Angeles", "2026-11-01T08:00"),
        ("2026-11-01T01:30", "America/Chicago", "2026-11-01T08:00"),
    ],
)
def test_next_allowed_send_time_examples(local: str, zone: str, expected_local: str) -> None:
    tz = ZoneInfo(zone)
    when = datetime.fromisoformat(local).replace(tzinfo=tz)
    result = next_allowed_send_time(when, tz)
    assert result.astimezone(tz).replace(tzinfo=None) == datetime.fromisoformat(expected_local)


@pytest.mark.parametrize(
    ("utc", "expected_utc"),
    [
        # Unknown zone: 08:00-14:00 Hawaii, i.e. 18:00-24:00 UTC all year.
        ("2026-01-15T15:00", "2026-01-15T18:00"),  # 10:00 EST is 05:00 in Honolulu
        ("2026-01-15T18:30", "2026-01-15T18:30"),
        ("2026-01-15T23:59", "2026-01-15T23:59"),
        ("2026-01-16T00:00", "2026-01-16T18:00"),  # 20:00 in Puerto Rico
        ("2026-07-15T00:30", "2026-07-15T18:00"),  # 20:30 EDT
    ],
)
def test_unknown_zone_uses_the_window_every_us_zone_allows(utc: str, expected_utc: str) -> None:
    when = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    assert next_allowed_send_time(when, None) == datetime.fromisoformat(expected_utc).replace(
        tzinfo=UTC
    )


def test_result_keeps_the_callers_tzinfo() -> None:
    when = datetime(2026, 6, 1, 22, 0, tzinfo=NEW_YORK)
    assert next_allowed_send_time(when, ZoneInfo("Pacific/Honolulu")).tzinfo is NEW_YORK


def test_naive_datetimes_and_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_allowed_send_time(datetime(2026, 6, 1, 12, 0), NEW_YORK)
    with pytest.raises(ValueError, match="window"):
        next_allowed_send_time(datetime(2026, 6, 1, 12, 0, tzinfo=UTC), NEW_YORK, start_hour=20,
                               end_hour=8)  # fmt: skip


# --- reminders ------------------------------------------------------------------------------------


def test_reminders_at_ten_local_three_and_one_day_before() -> None:
    visit = datetime(2026, 12, 8, 9, 30, tzinfo=NEW_YORK)
    now = datetime(2026, 11, 30, 12, 0, tzinfo=NEW_YORK)
    assert reminder_send_times(visit, NEW_YORK, now=now) == [
        (3, datetime(2026, 12, 5, 10, 0, tzinfo=NEW_YORK)),
        (1, datetime(2026, 12, 7, 10, 0, tzinfo=NEW_YORK)),
    ]


def test_reminders_count_days_in_the_patients_zone() -> None:
    # 07:00 Tuesday in Honolulu is already Tuesday noon in New York; a late visit in New York
    # time can be the previous local day in Hawaii.
    honolulu = ZoneInfo("Pacific/Honolulu")
    visit = datetime(2026, 12, 8, 1, 0, tzinfo=NEW_YORK)  # Mon Dec 7, 20:00 in Honolulu
    now = datetime(2026, 11, 1, tzinfo=UTC)
    times = reminder_send_times(visit, honolulu, now=now)
    assert [t.astimezone(honolulu).replace(tzinfo=None) for _, t in times] == [
        datetime(2026, 12, 4, 10, 0),
        datetime(2026, 12, 6, 10, 0),
    ]


def test_reminder_across_a_dst_change_stays_at_ten_local() -> None:
    visit = datetime(2026, 3, 10, 9, 0, tzinfo=NEW_YORK)  # clocks spring forward on Mar 8
    now = datetime(2026, 3, 1, tzinfo=UTC)
    assert [t for _, t in reminder_send_times(visit, NEW_YORK, now=now)] == [
        datetime(2026, 3, 7, 10, 0, tzinfo=NEW_YORK),
        datetime(2026, 3, 9, 10, 0, tzinfo=NEW_YORK),
    ]


def test_past_and_too_late_reminders_are_skipped_not_sent_late() -> None:
    visit = datetime(2026, 12, 8, 9, 30, tzinfo=NEW_YORK)
    booked_late = datetime(2026, 12, 6, 9, 0, tzinfo=NEW_YORK)
    assert reminder_send_times(visit, NEW_YORK, now=booked_late) == [
        (1, datetime(2026, 12, 7, 10, 0, tzinfo=NEW_YORK))
    ]
    same_day = reminder_send_times(visit, NEW_YORK, days_before=(0,), now=booked_late)
    assert same_day == []  # 10:00 on the day is after a 09:30 visit


def test_reminder_hour_outside_the_window_is_moved_into_it() -> None:
    visit = datetime(2026, 12, 8, 15, 0, tzinfo=NEW_YORK)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    times = reminder_send_times(visit, NEW_YORK, days_before=(1,), now=now, send_hour=6)
    assert times == [(1, datetime(2026, 12, 7, 8, 0, tzinfo=NEW_YORK))]


def test_reminders_with_unknown_zone_use_the_clinic_day_and_the_strict_window() -> None:
    visit = datetime(2026, 12, 8, 9, 30, tzinfo=NEW_YORK)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    times = reminder_send_times(visit, None, now=now)
    # 10:00 EST is before 08:00 in Honolulu: moved to 13:00 EST the same day.
    assert [t for _, t in times] == [
        datetime(2026, 12, 5, 13, 0, tzinfo=NEW_YORK),
        datetime(2026, 12, 7, 13, 0, tzinfo=NEW_YORK),
    ]


@given(
    visit=instants,
    zone=zones,
    lead=st.integers(min_value=0, max_value=10 * 24 * 60),
    days=st.lists(st.integers(min_value=0, max_value=7), max_size=4),
)
def test_reminder_properties(visit: datetime, zone: ZoneInfo | None, lead: int,
                             days: list[int]) -> None:  # fmt: skip
    now = visit - timedelta(minutes=lead)
    times = reminder_send_times(visit, zone, days_before=days, now=now)
    assert [t for _, t in times] == sorted(t for _, t in times)
    assert len({n for n, _ in times}) == len(times)
    for n, send_at in times:
        assert n in days
        assert now <= send_at < visit
        assert is_send_allowed(send_at, zone)


# --- caps -----------------------------------------------------------------------------------------


def test_caps_one_a_day_three_a_week() -> None:
    def at(day: int, hour: int) -> datetime:
        return datetime(2026, 6, day, hour, 0, tzinfo=NEW_YORK)

    sends = [at(9, 9), at(1, 15), at(1, 9), at(2, 9), at(3, 9), at(4, 9), at(7, 9), at(8, 9)]
    # Any 7 consecutive days, not the calendar week: June 4 and 7 share a week with 1, 2 and 3.
    assert apply_caps(sends, NEW_YORK) == [at(1, 9), at(2, 9), at(3, 9), at(8, 9), at(9, 9)]
    assert apply_caps(sends, NEW_YORK, already_sent=[at(2, 19)]) == [
        at(1, 9), at(3, 9), at(8, 9), at(9, 9)
    ]  # fmt: skip


def test_caps_count_local_days() -> None:
    # 23:00 and 01:00 UTC are two UTC days but the same evening in New York.
    evening = datetime(2026, 6, 1, 23, 0, tzinfo=UTC)
    later = datetime(2026, 6, 2, 1, 0, tzinfo=UTC)
    assert apply_caps([later, evening], NEW_YORK) == [evening]
    # 16:00 and 01:00 EDT are two days in New York but both June 1 in Honolulu: with no zone,
    # two sends share a day when any US zone sees them on one day.
    afternoon = datetime(2026, 6, 1, 16, 0, tzinfo=NEW_YORK)
    night = datetime(2026, 6, 2, 1, 0, tzinfo=NEW_YORK)
    assert apply_caps([afternoon, night], NEW_YORK) == [afternoon, night]
    assert apply_caps([afternoon, night], None) == [afternoon]


def _violates(sends: list[datetime], zone: ZoneInfo, per_day: int, per_week: int) -> bool:
    days = sorted(s.astimezone(zone).date() for s in sends)
    if any(days.count(d) > per_day for d in days):
        return True
    return any(sum(d <= x <= d + timedelta(days=6) for x in days) > per_week for d in days)


@given(
    sends=st.lists(instants, max_size=12),
    history=st.lists(instants, max_size=4),
    zone=zones,
    per_day=st.integers(1, 2),
    per_week=st.integers(1, 4),
)
def test_caps_properties(sends: list[datetime], history: list[datetime], zone: ZoneInfo | None,
                         per_day: int, per_week: int) -> None:  # fmt: skip
    kept = apply_caps(sends, zone, per_day=per_day, per_week=per_week, already_sent=history)
    assert kept == sorted(kept)
    remaining = list(sends)
    for send in kept:
        remaining.remove(send)  # a sub-multiset of the input
    check_zones = [zone] if zone else list(US_STRICT_ZONES)
    # Kept sends never break the caps beyond what history already did ...
    if not any(_violates(history, z, per_day, per_week) for z in check_zones):
        assert not any(_violates(history + kept, z, per_day, per_week) for z in check_zones)
    # ... and nothing was dropped that would have fit.
    for dropped in remaining:
        assert any(_violates([*history, *kept, dropped], z, per_day, per_week)
                   for z in check_zones)  # fmt: skip


# --- replies --------------------------------------------------------------------------------------


OPT_OUT_REPLIES = (
    "STOP", "stop", " Stop. ", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE",
    "OPTOUT", "opt out", "Stop please", "BAJA", "Baja.", "ALTO",
    "Please stop texting me", "don't text me anymore", "Don\u2019t message this number",
    "No more messages!", "take me off your list", "wrong number",
    "No me envíen más mensajes", "no me envien mensajes", "quiero darme de baja",
    "stop sign on the way",  # a leading STOP is read as an opt-out, whatever follows
)  # fmt: skip
CONFIRM_REPLIES = (
    "C", "c", "CONFIRM", "Yes", "YES!", "y", "SI", "Sí", "sí.", "Yes see you then",
    "Si, ahí estaré",
)  # fmt: skip
RESCHEDULE_REPLIES = (
    "R", "RESCHEDULE", "Cambiar", "I need to re-schedule", "can't make it",
    "Yes but I cannot make it", "necesito cambiar la cita", "no puedo ir",
)  # fmt: skip
WORSENING_REPLIES = (
    "worse", "It's getting worse", "worsening numbness", "I can't walk", "I cannot walk",
    "cant walk since yesterday", "the numbness spreading to my other leg",
    "lost bladder control", "I can\u2019t feel my legs", "Estoy peor", "no puedo caminar",
    "perdí el control de la vejiga",
)  # fmt: skip
REPLY_TABLE = [
    *((text, ReplyIntent.OPT_OUT) for text in OPT_OUT_REPLIES),
    *((text, ReplyIntent.CONFIRM) for text in CONFIRM_REPLIES),
    *((text, ReplyIntent.RESCHEDULE) for text in RESCHEDULE_REPLIES),
    *((text, ReplyIntent.WORSENING) for text in WORSENING_REPLIES),
    ("NO", ReplyIntent.DECLINE),
    ("n", ReplyIntent.DECLINE),
    ("No, thanks!", ReplyIntent.DECLINE),
    ("No gracias", ReplyIntent.DECLINE),
    ("START", ReplyIntent.OPT_IN),
    ("unstop", ReplyIntent.OPT_IN),
    ("HELP", ReplyIntent.HELP),
    ("info", ReplyIntent.HELP),
    ("Ayuda", ReplyIntent.HELP),
    ("Thanks!", ReplyIntent.OTHER),
    ("Who is this?", ReplyIntent.OTHER),
    ("Can I bring my husband?", ReplyIntent.OTHER),
    # Not the bare carrier keyword: the patient means the visit (a scheduler calls to cancel).
    ("cancel my appointment please", ReplyIntent.DECLINE),
    # A number after R's choices ("reply 1, 2 or 3").
    ("2", ReplyIntent.CHOICE),
    ("#1", ReplyIntent.CHOICE),
    ("option 3 please", ReplyIntent.CHOICE),
    ("el 2 por favor", ReplyIntent.CHOICE),
    ("", ReplyIntent.OTHER),
]


@pytest.mark.parametrize(("text", "intent"), REPLY_TABLE)
def test_reply_intents(text: str, intent: ReplyIntent) -> None:
    assert reply_intents(text) == [intent]


def test_yes_confirms_unless_the_patient_is_opted_out() -> None:
    assert reply_intents("YES") == [ReplyIntent.CONFIRM]
    assert reply_intents("YES", opted_out=True) == [ReplyIntent.OPT_IN]
    assert reply_intents("START", opted_out=True) == [ReplyIntent.OPT_IN]


def test_worsening_comes_first_beside_a_confirmation() -> None:
    assert reply_intents("Yes, but I'm worse") == [ReplyIntent.WORSENING, ReplyIntent.CONFIRM]


def test_worsening_is_never_lost_behind_an_opt_out() -> None:
    text = "stop texting me, I'm getting worse"
    assert reply_intents(text) == [ReplyIntent.WORSENING, ReplyIntent.OPT_OUT]


def test_reply_intents_lists_only_other_when_nothing_matched() -> None:
    assert reply_intents("what is the address") == [ReplyIntent.OTHER]
