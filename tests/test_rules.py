"""The routing rules file: the shipped table, validation errors with file:line, caching."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from followup.core.rules import SPECIALTIES, TIERS, load_rules, normalize_system, parse_rules
from followup.errors import RulesError
from followup.settings import PROJECT_ROOT

RULES_PATH = PROJECT_ROOT / "rules" / "routing.yaml"

# DOMAIN.md §3, one label per row (and the urgent "acute compression fracture with edema").
TABLE = {
    "cord_compression": ("emergent", ["orthopedics"]),
    "cauda_equina_compression": ("emergent", ["orthopedics"]),
    "epidural_abscess": ("emergent", ["orthopedics"]),
    "unstable_fracture": ("emergent", ["orthopedics"]),
    "acute_infarct": ("emergent", ["neurology"]),
    "intracranial_hemorrhage": ("emergent", ["neurology"]),
    "discitis_osteomyelitis": ("urgent", ["orthopedics"]),
    "metastasis": ("urgent", ["orthopedics"]),
    "enhancing_demyelination": ("urgent", ["neurology"]),
    "acute_compression_fracture": ("urgent", ["orthopedics"]),
    "demyelination": ("routine", ["neurology"]),
    "myelopathy_syrinx": ("routine", ["neurology"]),
    "nerve_root_compression": ("routine", ["neurology"]),
    "spondylolisthesis": ("routine", ["orthopedics"]),
    "severe_stenosis": ("routine", ["orthopedics"]),
    "compression_deformity": ("routine", ["orthopedics"]),
    "disc_herniation": ("routine", ["pain_management"]),
    "degenerative_disc_disease": ("routine", ["pain_management"]),
    "modic_change": ("routine", ["pain_management"]),
    "annular_fissure": ("routine", ["pain_management"]),
    "facet_arthropathy": ("routine", ["pain_management"]),
    "sacroiliitis": ("routine", ["rheumatology"]),
    "fatty_corner_lesion": ("routine", ["rheumatology"]),
    "fat_metaplasia": ("routine", ["rheumatology"]),
    "nondiagnostic": ("routine", []),
    "localization": ("routine", []),
    "incidental": ("routine", []),
    "disc_bulge": ("routine", []),
    "nonsevere_stenosis": ("routine", []),
    # DOMAIN.md §3, joints and peripheral nerves
    "soft_tissue_joint_infection": ("urgent", ["orthopedics"]),
    "displaced_fracture": ("urgent", ["orthopedics"]),
    "limb_fracture": ("routine", ["orthopedics"]),
    "osteonecrosis": ("routine", ["orthopedics"]),
    "osteonecrosis_collapse": ("urgent", ["orthopedics"]),
    "tendon_ligament_tear": ("routine", ["orthopedics"]),
    "partial_tear_tendinosis": ("routine", ["pain_management"]),
    "joint_effusion": ("routine", ["pain_management"]),
    "physiologic_joint_fluid": ("routine", []),
    "inflammatory_arthritis": ("routine", ["rheumatology"]),
    "peripheral_nerve": ("routine", ["neurology"]),
}


@pytest.fixture(scope="module")
def rules():
    return load_rules(RULES_PATH)


def test_shipped_rules_carry_version_and_sign_off_fields(rules) -> None:
    assert rules.version == "2026.12-22"
    assert rules.reviewer
    assert rules.effective_date == "2026-12-07"
    assert set(rules.specialties) == SPECIALTIES
    assert rules.source == str(RULES_PATH.resolve())


def test_shipped_rules_match_the_domain_table(rules) -> None:
    assert {rule.label: (rule.tier, list(rule.referrals)) for rule in rules.rules} == TABLE


def test_critical_is_exactly_the_emergent_tier(rules) -> None:
    for rule in rules.rules:
        assert rule.critical == (rule.tier == "emergent"), rule.label


def test_nondiagnostic_suggests_further_testing_without_referral(rules) -> None:
    nondiagnostic = rules.rule("nondiagnostic")
    assert nondiagnostic.additional_testing == ("CT myelography",)
    assert nondiagnostic.referrals == ()
    localization = rules.rule("localization")
    assert localization.additional_testing == ("SPECT/CT",)
    assert localization.referrals == ()


def test_disc_nomenclature_bulge_is_not_a_herniation(rules) -> None:
    herniation = rules.rule("disc_herniation").patterns
    for term in ("protrusion", "extrusion", "sequestration", "herniation"):
        assert term in herniation
    assert "bulge" not in herniation
    assert "bulge" in rules.rule("disc_bulge").patterns


def test_every_rule_has_patterns_and_abnormal_cues_exist(rules) -> None:
    assert all(rule.patterns for rule in rules.rules)
    assert {"lesion", "mass", "abnormal", "edema", "enhancement", "fracture"} <= set(
        rules.abnormal_cues
    )


@pytest.mark.parametrize(
    ("system", "code", "label"),
    [
        ("SCT", "76107001", "severe_stenosis"),
        ("SCT", "73589001", "disc_herniation"),
        ("SCT", "274152003", "spondylolisthesis"),
        ("SCT", "77547008", "degenerative_disc_disease"),
        ("SCT", "24700007", "demyelination"),
        ("SCT", "9631008", "sacroiliitis"),
        ("SCT", "111496009", "myelopathy_syrinx"),
        ("ICD10CM", "G83.4", "cauda_equina_compression"),
        # ICD-10-CM is hierarchical: a rule code covers its subcodes, dots optional.
        ("ICD10CM", "G35.B1", "demyelination"),
        ("I10C", "M45A5", "sacroiliitis"),
        ("http://hl7.org/fhir/sid/icd-10-cm", "M51.26", "disc_herniation"),
        ("http://snomed.info/sct", "24700007", "demyelination"),
        ("SNOMED CT", "274152003", "spondylolisthesis"),
    ],
)
def test_codes_from_the_domain_reference_map_to_rules(rules, system, code, label) -> None:
    rule = rules.rule_for_code(system, code)
    assert rule is not None and rule.label == label


@pytest.mark.parametrize(
    ("system", "code"),
    [
        ("ICD10CM", "G35"),  # bare G35 is invalid since 2025-10-01: not silently MS
        ("SCT", "7610700"),  # SNOMED codes match exactly, never by prefix
        ("LOINC", "24700007"),  # right code, wrong system
    ],
)
def test_codes_that_must_not_match(rules, system, code) -> None:
    assert rules.rule_for_code(system, code) is None


def test_system_aliases() -> None:
    assert normalize_system("snomed-ct") == "SCT"
    assert normalize_system(" http://snomed.info/sct/ ") == "SCT"
    assert normalize_system("ICD-10-CM") == "ICD10CM"
    assert normalize_system("RID") == "RADLEX"


def test_unknown_label_raises_key_error(rules) -> None:
    with pytest.raises(KeyError, match="no_such_rule"):
        rules.rule("no_such_rule")


# --- validation errors, each naming file and line -------------------------------------------

VALID = """\
version: "1"
reviewer: tester
effective_date: 2026-01-01
specialties: [neurology, orthopedics]
abnormal_cues: [lesion]
rules:
  - label: cord_compression
    referrals: [orthopedics]
    tier: emergent
    critical: true
    patterns: [cord compression]
  - label: syrinx
    referrals: [neurology]
    tier: routine
    critical: false
    patterns: [syrinx]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    return str(caught.value).replace(str(path.resolve()), "FILE")


def test_valid_minimal_file_loads(tmp_path: Path) -> None:
    rules = load_rules(_write(tmp_path, VALID))
    assert [rule.label for rule in rules.rules] == ["cord_compression", "syrinx"]
    assert rules.rule("syrinx").line == 12
    assert rules.effective_date == "2026-01-01"


def test_unknown_specialty_in_a_rule(tmp_path: Path) -> None:
    message = _error(tmp_path, VALID.replace("referrals: [neurology]", "referrals: [cardiology]"))
    assert message == "FILE:13: rule syrinx: unknown specialty 'cardiology'"


def test_unknown_specialty_in_the_list(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        VALID.replace(
            "specialties: [neurology, orthopedics]", "specialties:\n  - neurology\n  - podiatry"
        ),
    )
    assert message.startswith("FILE:6: unknown specialty 'podiatry'")


def test_unknown_tier(tmp_path: Path) -> None:
    message = _error(tmp_path, VALID.replace("tier: routine", "tier: soon"))
    assert message.startswith("FILE:14: rule syrinx: unknown tier 'soon'")


def test_duplicate_label(tmp_path: Path) -> None:
    message = _error(tmp_path, VALID.replace("label: syrinx", "label: cord_compression"))
    assert message == "FILE:12: duplicate label 'cord_compression' (first defined at line 7)"


def test_empty_pattern_list(tmp_path: Path) -> None:
    message = _error(tmp_path, VALID.replace("patterns: [syrinx]", "patterns: []"))
    assert message == "FILE:16: rule syrinx: 'patterns' must be a non-empty list"


def test_missing_patterns(tmp_path: Path) -> None:
    message = _error(tmp_path, VALID.replace("    patterns: [syrinx]\n", ""))
    assert message == "FILE:12: rule syrinx: 'patterns' must be a non-empty list"


def test_blank_pattern(tmp_path: Path) -> None:
    message = _error(
        tmp_path, VALID.replace("patterns: [syrinx]", 'patterns:\n      - syrinx\n      - "  "')
    )
    assert message == "FILE:18: rule syrinx: empty pattern"


def test_critical_must_match_tier(tmp_path: Path) -> None:
    message = _error(tmp_path, VALID.replace("critical: false", "critical: true"))
    assert message == "FILE:15: rule syrinx: critical must be true exactly when tier is emergent"


def test_unknown_key_is_a_typo(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        VALID.replace("    critical: false\n", "    critical: false\n    referal: [neurology]\n"),
    )
    assert message == "FILE:16: unknown rule key 'referal'"


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    message = _error(
        tmp_path, VALID.replace("    tier: routine\n", "    tier: routine\n    tier: urgent\n")
    )
    assert message == "FILE:15: duplicate key 'tier'"


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    message = _error(tmp_path, VALID.replace("patterns: [syrinx]", "patterns: [syrinx"))
    assert message.startswith("FILE:17: invalid YAML")


def test_unquoted_code_loses_leading_zeros(tmp_path: Path) -> None:
    text = VALID + "    codes:\n      - {system: SCT, code: 0123}\n"
    assert _error(tmp_path, text) == "FILE:18: rule syrinx: code must be a quoted, non-empty string"


def test_unknown_code_system(tmp_path: Path) -> None:
    text = VALID + '    codes:\n      - {system: LOINC, code: "1"}\n'
    assert _error(tmp_path, text).startswith("FILE:18: rule syrinx: unknown code system 'LOINC'")


def test_token_pattern_with_yaml_boolean_is_rejected(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted `on` as true: that word would silently never match.
    text = VALID.replace(
        "patterns: [syrinx]", "patterns:\n      - [{LOWER: {IN: [in, on]}}, {LOWER: cord}]"
    )
    assert _error(tmp_path, text).startswith("FILE:17: rule syrinx: IN must list strings")


def test_token_pattern_unknown_attribute(tmp_path: Path) -> None:
    text = VALID.replace("patterns: [syrinx]", "patterns:\n      - [{LEMMA: syrinx}]")
    assert _error(tmp_path, text) == "FILE:17: rule syrinx: unknown token attribute 'LEMMA'"


def test_reference_to_unknown_rule(tmp_path: Path) -> None:
    text = VALID + "    superseded_by: [nerve_root_compression]\n"
    assert (
        _error(tmp_path, text)
        == "FILE:12: rule syrinx: refers to unknown rule 'nerve_root_compression'"
    )


def test_cause_of_names_known_rules(tmp_path: Path) -> None:
    text = VALID + "    cause_of: [severe_stenosis]\n"
    assert (
        _error(tmp_path, text) == "FILE:12: rule syrinx: refers to unknown rule 'severe_stenosis'"
    )
    shipped = load_rules(RULES_PATH)
    for label in ("disc_herniation", "degenerative_disc_disease", "facet_arthropathy"):
        assert set(shipped.rule(label).cause_of) == {
            "cord_compression",
            "cauda_equina_compression",
            "severe_stenosis",
        }


def test_tests_per_region(tmp_path: Path) -> None:
    text = (
        VALID.replace("abnormal_cues:", "regions: {spine: [lumbar], joint: [knee]}\nabnormal_cues:")
        + "    additional_testing: [CT myelography]\n"
        + "    additional_testing_by_region: {joint: [repeat MRI]}\n"
    )
    rules = load_rules(_write(tmp_path, text))
    syrinx = rules.rule("syrinx")
    assert rules.regions == (("spine", ("lumbar",)), ("joint", ("knee",)))
    assert [syrinx.tests_for(r) for r in ("joint", "spine", None)] == [
        ("repeat MRI",),
        ("CT myelography",),
        ("CT myelography",),
    ]


def test_tests_for_an_unknown_region(tmp_path: Path) -> None:
    text = VALID + "    additional_testing_by_region: {knee: [repeat MRI]}\n"
    assert (
        _error(tmp_path, text) == "FILE:12: rule syrinx: unknown region 'knee'; 'regions' names []"
    )


def test_typo_tolerant_stems_and_ordinary_words(tmp_path: Path) -> None:
    text = VALID.replace(
        "abnormal_cues:",
        "typo_tolerant: {syrin: syrinx}\nordinary_words: [Syringe]\nabnormal_cues:",
    )
    rules = load_rules(_write(tmp_path, text))
    assert (rules.typo_tolerant, rules.ordinary_words) == ((("syrin", "syrinx"),), ("syringe",))


def test_typo_tolerant_word_must_start_with_its_stem(tmp_path: Path) -> None:
    text = VALID.replace("abnormal_cues:", "typo_tolerant: {abcess: abscess}\nabnormal_cues:")
    assert _error(tmp_path, text).endswith(
        "'typo_tolerant' maps a word stem to the full word that starts with it"
    )


def test_superseded_in_is_place_sentence_or_report(tmp_path: Path) -> None:
    assert load_rules(_write(tmp_path, VALID)).rule("syrinx").superseded_in == "place"
    text = VALID + "    superseded_in: paragraph\n"
    assert _error(tmp_path, text) == (
        "FILE:17: rule syrinx: superseded_in is 'place', 'sentence' or 'report'"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "absent.yaml")


def test_parse_rules_names_the_given_source() -> None:
    with pytest.raises(RulesError, match=r"^inline:1: "):
        parse_rules("- just a list", source="inline")


def test_load_is_cached_per_path_and_mtime(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    first = load_rules(path)
    assert load_rules(path) is first
    path.write_text(VALID.replace('version: "1"', 'version: "2"'), encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_rules(path).version == "2"


def test_tiers_are_ordered_least_to_most_urgent() -> None:
    assert TIERS == ("routine", "urgent", "emergent")
