"""What a scheduler reads of one scan in the Prefect UI: the summary artifact and the run tags."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from followup.core.routing import Decision
from followup.services import pipeline

NEW_YORK = ZoneInfo("America/New_York")


def summary(start: str) -> dict[str, object]:
    return {
        "accession": "ACC2026000101",
        "patient_initials": "T.W.",
        "status": "processed",
        "decision": {"urgency": "routine", "referrals": ["pain_management"]},
        "appointment": {
            "start": start,
            "provider": "Dr. Okafor",
            "provider_npi": "1000000001",
        },
        "escalations": [
            {
                "kind": "critical_finding",
                "status": "open",
                "target": "1000000005",
                "target_name": "Dr. Brennan (NPI 1000000005)",
            },
            {
                "kind": "unbookable",
                "status": "open",
                "target": "scheduler-queue",
                "target_name": None,
            },
        ],
    }


def test_the_visit_is_shown_in_the_site_s_time_with_its_zone_and_the_doctor_by_name() -> None:
    markdown = pipeline.scheduler_markdown(summary("2026-12-14T14:00:00+00:00"), zone=NEW_YORK)

    assert "| follow-up | Mon 2026-12-14 09:00 EST with Dr. Okafor (NPI 1000000001) |" in markdown
    assert "14:00" not in markdown
    assert "- critical_finding (open) → Dr. Brennan (NPI 1000000005)" in markdown
    assert "- unbookable (open) → scheduler-queue" in markdown


def test_summer_visits_name_daylight_time() -> None:
    markdown = pipeline.scheduler_markdown(summary("2027-06-14T13:00:00+00:00"), zone=NEW_YORK)

    assert "Mon 2027-06-14 09:00 EDT" in markdown


def decision(**changes: object) -> Decision:
    base: dict[str, object] = {
        "urgency": "routine",
        "critical": False,
        "referrals": [],
        "additional_testing": [],
        "needs_review": False,
        "findings": [],
        "rules_version": "test",
        "explanations": [],
    }
    return Decision(**{**base, **changes})  # type: ignore[arg-type]


def test_every_tag_has_one_spelling() -> None:
    tags = pipeline.run_tags(
        decision(referrals=["pain_management", "neurology"], needs_review=True, critical=True),
        site="Main_Campus",
        result_status="C",
    )

    assert tags == [
        "route:pain-management",
        "route:neurology",
        "route:critical-escalation",
        "route:needs-review",
        "urgency:routine",
        "site:main-campus",
        "result:corrected",
    ]
