"""Report text → findings: lexicon per rule, ConText assertion, sections, levels, codes."""

from __future__ import annotations

import logging
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from followup import nlp
from followup.core.findings import (
    CODED,
    UNCLASSIFIED,
    Finding,
    findings_from_codes,
    levels_overlap,
    levels_within,
    spinal_levels,
)
from followup.core.rules import load_rules
from followup.errors import RulesError
from followup.nlp import analyze_report, assertion_status, extract_findings
from followup.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def rules():
    return load_rules(PROJECT_ROOT / "rules" / "routing.yaml")


def only(text: str, rules, label: str) -> Finding:
    """The finding with `label` in the report (all of its mentions share one status)."""
    matches = [f for f in extract_findings(text, rules) if f.label == label]
    assert matches, (label, extract_findings(text, rules))
    assert len({(f.negated, f.uncertain, f.historical, f.hypothetical) for f in matches}) == 1
    return matches[0]


def asserted(f: Finding) -> bool:
    return not (f.negated or f.uncertain or f.historical or f.hypothetical)


# --- one example phrasing per rule row (and synonyms / abbreviations) ------------------------


@pytest.mark.parametrize(
    ("sentence", "label"),
    [
        ("Severe canal stenosis with cord compression and T2 cord signal.", "cord_compression"),
        ("The C5-6 extrusion deforms and compresses the spinal cord.", "cord_compression"),
        ("The conus medullaris is compressed by the fragment.", "cord_compression"),
        ("Compressive myelopathy at C3-4.", "cord_compression"),
        ("Large extrusion compressing the cauda equina.", "cauda_equina_compression"),
        ("Rim-enhancing dorsal epidural collection.", "epidural_abscess"),
        ("Spinal epidural abscess from L2 to L4.", "epidural_abscess"),
        ("Acute L1 burst fracture with retropulsion.", "unstable_fracture"),
        ("Restricted diffusion in the left MCA territory.", "acute_infarct"),
        ("Acute left MCA territory infarct.", "acute_infarct"),
        ("Acute right parietal intraparenchymal hemorrhage.", "intracranial_hemorrhage"),
        ("Small acute subdural hematoma.", "intracranial_hemorrhage"),
        ("Endplate destruction with disc enhancement.", "discitis_osteomyelitis"),
        ("L4-5 diskitis.", "discitis_osteomyelitis"),
        ("Marrow-replacing lesion at T9.", "metastasis"),
        ("Marrow replacing lesion at T9.", "metastasis"),
        ("Periventricular and juxtacortical T2 lesions.", "demyelination"),
        ("Findings consistent with MS.", "demyelination"),
        ("Enhancing demyelinating lesion in the cord.", "enhancing_demyelination"),
        ("C5-T2 syrinx.", "myelopathy_syrinx"),
        ("Abnormal T2 signal within the cervical cord.", "myelopathy_syrinx"),
        ("Extrusion contacting the descending S1 root.", "nerve_root_compression"),
        ("The right L5 nerve root is compressed in the lateral recess.", "nerve_root_compression"),
        ("Grade 1 anterolisthesis of L4 on L5.", "spondylolisthesis"),
        ("Bilateral L5 pars defects.", "spondylolisthesis"),
        ("Severe right neural foraminal stenosis at C6-7.", "severe_stenosis"),
        ("Moderate to severe central canal stenosis.", "severe_stenosis"),
        ("Chronic T12 compression deformity.", "compression_deformity"),
        ("Acute L2 compression fracture.", "acute_compression_fracture"),
        ("Broad-based L4-5 protrusion.", "disc_herniation"),
        ("Left paracentral L5-S1 HNP.", "disc_herniation"),
        ("Sequestered disk fragment.", "disc_herniation"),
        ("Multilevel degenerative disc disease.", "degenerative_disc_disease"),
        ("Disk desiccation at L5-S1.", "degenerative_disc_disease"),
        ("Modic type 1 change.", "modic_change"),
        ("Posterior annular fissure.", "annular_fissure"),
        ("High intensity zone in the annulus.", "annular_fissure"),
        ("Facet arthropathy.", "facet_arthropathy"),
        ("Subchondral marrow edema at both SI joints.", "sacroiliitis"),
        ("Subchondral bone oedema at both SI joints; sacroiliitis.", "sacroiliitis"),
        ("Fatty corner lesions.", "fatty_corner_lesion"),
        ("Fat metaplasia at the SI joints.", "fat_metaplasia"),
        ("Motion-degraded examination.", "nondiagnostic"),
        ("Non-diagnostic study.", "nondiagnostic"),
        ("Incidental T12 hemangioma.", "incidental"),
        ("Sacral Tarlov cyst.", "incidental"),
        ("Mild disc bulge.", "disc_bulge"),
        ("Moderate canal stenosis.", "nonsevere_stenosis"),
    ],
)
def test_each_rule_row_is_recognised(rules, sentence: str, label: str) -> None:
    finding = only(f"IMPRESSION: {sentence}", rules, label)
    assert asserted(finding)
    assert finding.section == "IMPRESSION"


@pytest.mark.parametrize("term", ["protrusion", "extrusion", "sequestration", "herniation"])
def test_nomenclature_herniations(rules, term: str) -> None:
    assert term in only(f"IMPRESSION: L4-5 disc {term}.", rules, "disc_herniation").text


def test_a_bulge_is_not_a_herniation(rules) -> None:
    labels = [f.label for f in extract_findings("IMPRESSION: Diffuse disc bulge at L4-5.", rules)]
    assert labels == ["disc_bulge"]


def test_longest_match_wins(rules) -> None:
    found = extract_findings("IMPRESSION: Pathologic compression fracture of T11.", rules)
    assert [(f.label, f.text) for f in found] == [("metastasis", "Pathologic compression fracture")]


# --- negation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sentence",
    [
        "No evidence of nerve root compression.",
        "No nerve root compression.",
        "Without nerve root compression.",
        "Negative for nerve root compression.",
        "The S1 root is free of nerve root compression.",
        "Nerve root compression has resolved.",
        "Interval resolution of the nerve root compression.",
        "Nerve root compression is ruled out.",
        "Nerve root compression is unlikely.",
        "Nerve root compression is not seen.",
        "Nerve root compression: none.",
        "Suspected nerve root compression is not supported by imaging.",
    ],
)
def test_negation_cues(rules, sentence: str) -> None:
    assert only(f"IMPRESSION: {sentence}", rules, "nerve_root_compression").negated


def test_list_negation(rules) -> None:
    found = extract_findings(
        "IMPRESSION: No fracture, cord compression, cauda equina compression or epidural abscess.",
        rules,
    )
    assert {f.label for f in found} == {
        "cord_compression",
        "cauda_equina_compression",
        "epidural_abscess",
    }
    assert all(f.negated for f in found)


@pytest.mark.parametrize(
    "report",
    [
        "IMPRESSION: No stenosis but there is a disc extrusion.",
        "IMPRESSION: No stenosis, however a disc extrusion is present.",
        "IMPRESSION: No cord compression; disc extrusion at L5-S1.",
        "IMPRESSION: No cord compression.\nDisc extrusion at L5-S1.",
    ],
)
def test_negation_stops_at_terminators_and_sentence_ends(rules, report: str) -> None:
    assert asserted(only(report, rules, "disc_herniation"))


def test_negation_stops_at_a_hedge_and_the_hedge_at_a_negation(rules) -> None:
    found = extract_findings(
        "IMPRESSION: No cord compression, possible small protrusion. "
        "Possible annular fissure, no nerve root compression.",
        rules,
    )
    status = {f.label: (f.negated, f.uncertain) for f in found}
    assert status == {
        "cord_compression": (True, False),
        "disc_herniation": (False, True),
        "annular_fissure": (False, True),
        "nerve_root_compression": (True, False),
    }


def test_header_colon_does_not_swallow_the_negation(rules) -> None:
    # medspaCy's default ": no" rule would take "IMPRESSION: No" as one backward cue.
    assert only("IMPRESSION: No epidural abscess.", rules, "epidural_abscess").negated


def test_no_change_is_not_a_negation(rules) -> None:
    finding = only(
        "IMPRESSION: No significant interval change in the L4-5 protrusion.",
        rules,
        "disc_herniation",
    )
    assert asserted(finding)


def test_free_fragment_is_not_negated(rules) -> None:
    assert asserted(
        only("IMPRESSION: Large extrusion with a free fragment.", rules, "disc_herniation")
    )


# --- uncertainty, history, hypothesis ---------------------------------------------------------


@pytest.mark.parametrize(
    "sentence",
    [
        "Possible cord compression.",
        "Probable cord compression.",
        "Likely cord compression.",
        "Findings suggestive of cord compression.",
        "Findings suspicious for cord compression.",
        "Findings concerning for cord compression.",
        "This may represent cord compression.",
        "Cord compression cannot be excluded.",
        "Cord compression can't be entirely excluded.",
        "Cord compression is not excluded.",
        "Findings compatible with cord compression.",
        "Questionable cord compression.",
        "Cord compression is unlikely but cannot be excluded.",
    ],
)
def test_uncertainty_cues(rules, sentence: str) -> None:
    finding = only(f"IMPRESSION: {sentence}", rules, "cord_compression")
    assert finding.uncertain and not finding.negated


@pytest.mark.parametrize(
    ("sentence", "historical"),
    [
        ("History of epidural abscess.", True),
        ("Previously seen epidural abscess.", True),
        ("Previously seen epidural abscess is unchanged.", False),
        ("Stable epidural abscess.", False),
    ],
)
def test_history_and_stable_findings(rules, sentence: str, historical: bool) -> None:
    assert only(f"IMPRESSION: {sentence}", rules, "epidural_abscess").historical is historical


@pytest.mark.parametrize(
    "sentence",
    [
        "Rule out cord compression.",
        "R/O cord compression.",
        "MRI to exclude cord compression.",
        "Recommend MRI to evaluate for cord compression.",
    ],
)
def test_hypothetical_cues(rules, sentence: str) -> None:
    finding = only(f"IMPRESSION: {sentence}", rules, "cord_compression")
    assert finding.hypothetical and not finding.negated and not finding.uncertain


def test_enhancing_qualifies_demyelination(rules) -> None:
    finding = only(
        "IMPRESSION: Multiple sclerosis with a new enhancing lesion in the centrum semiovale.",
        rules,
        "enhancing_demyelination",
    )
    assert (finding.text, finding.qualifier) == ("Multiple sclerosis", "enhancing")


def test_negated_enhancement_does_not_qualify(rules) -> None:
    report = "IMPRESSION: Lesions consistent with multiple sclerosis without enhancing lesions."
    assert [f.label for f in extract_findings(report, rules)] == ["demyelination"]


def test_marrow_edema_qualifies_a_compression_fracture(rules) -> None:
    assert only(
        "IMPRESSION: L1 compression fracture with marrow edema.",
        rules,
        "acute_compression_fracture",
    )
    assert only(
        "IMPRESSION: L1 compression fracture without marrow edema.", rules, "compression_deformity"
    )


def test_abnormal_words_without_a_rule_become_unclassified(rules) -> None:
    found = extract_findings(
        "IMPRESSION: Enhancing intradural mass at T6. No acute abnormality.", rules
    )
    assert {(f.label, f.text) for f in found} == {
        (UNCLASSIFIED, "Enhancing"),
        (UNCLASSIFIED, "mass"),
    }


def test_abnormal_words_next_to_a_finding_describe_it(rules) -> None:
    found = extract_findings(
        "IMPRESSION: T2 hyperintense lesion in L2, likely a hemangioma.", rules
    )
    assert [f.label for f in found] == ["incidental"]


# --- sections ---------------------------------------------------------------------------------


def test_indication_history_comparison_technique_never_produce_findings(rules) -> None:
    report = textwrap.dedent(
        """\
        EXAM: MRI cervical spine for cord compression
        INDICATION: r/o cord compression.
        CLINICAL HISTORY: Prior discitis.
        CLINICAL INFORMATION: Epidural abscess?
        COMPARISON: Burst fracture on CT.
        TECHNIQUE: Sagittal STIR for marrow edema.
        IMPRESSION: Normal MRI of the cervical spine.
        """
    )
    analysis = analyze_report(report, rules)
    assert analysis.findings == ()
    assert analysis.routed_sections == ("IMPRESSION",)


def test_impression_is_authoritative_over_findings(rules) -> None:
    report = "FINDINGS: L5-S1 extrusion.\nIMPRESSION: Mild degenerative disc disease."
    assert [f.label for f in extract_findings(report, rules)] == ["degenerative_disc_disease"]


def test_findings_are_used_when_there_is_no_impression(rules) -> None:
    found = extract_findings("INDICATION: pain.\nFINDINGS: L5-S1 extrusion.", rules)
    assert [(f.label, f.section) for f in found] == [("disc_herniation", "FINDINGS")]


def test_report_without_headers_is_read_whole(rules) -> None:
    found = extract_findings("Mild disc desiccation at L4-5. No herniation.", rules)
    assert [(f.label, f.section, f.negated) for f in found] == [
        ("degenerative_disc_disease", "REPORT", False),
        ("disc_herniation", "REPORT", True),
    ]


def test_headers_with_nothing_routable(rules) -> None:
    analysis = analyze_report("INDICATION: back pain.\nIMPRESSION:\n", rules)
    assert analysis.routed_sections == ()
    assert analyze_report("   ", rules).routed_sections == ()


@pytest.mark.parametrize("header", ["Impression:", "impression:", "CONCLUSION:", "IMPRESSION\n"])
def test_header_variants(rules, header: str) -> None:
    found = extract_findings(f"FINDINGS: Syrinx.\n{header} Facet arthropathy.", rules)
    assert [(f.label, f.section) for f in found] == [("facet_arthropathy", "IMPRESSION")]


def test_addendum_supersedes_the_same_concept(rules) -> None:
    report = (
        "IMPRESSION: Findings concerning for cord compression at T10. Mild facet arthropathy.\n"
        "ADDENDUM: Correction to the impression: there is no cord compression."
    )
    found = extract_findings(report, rules)
    assert [(f.label, f.negated, f.section) for f in found] == [
        ("facet_arthropathy", False, "IMPRESSION"),
        ("cord_compression", True, "ADDENDUM"),
    ]


def test_addendum_about_another_level_keeps_the_impression(rules) -> None:
    report = "IMPRESSION: L4-5 protrusion.\nADDENDUM: No herniation at L2-3."
    assert [(f.negated, f.section) for f in extract_findings(report, rules)] == [
        (False, "IMPRESSION"),
        (True, "ADDENDUM"),
    ]


def test_offsets_point_into_the_report(rules) -> None:
    report = (
        "EXAM: MRI L-spine\nFINDINGS: noise.\n"
        "IMPRESSION:\n1. No stenosis.\n2. L5-S1 extrusion contacting the S1 root."
    )
    for finding in extract_findings(report, rules):
        assert report[finding.start : finding.end] == finding.text
        assert finding.text in report[finding.sentence[0] : finding.sentence[1]]


# --- spinal levels ----------------------------------------------------------------------------


def test_spinal_levels() -> None:
    assert spinal_levels("L4-5 and l5-s1, the S1 root, C5 to T2, T10-T12") == (
        "L4-L5",
        "L5-S1",
        "S1",
        "C5",
        "T2",
        "T10-T12",
    )
    # MRI sequences are not the T1/T2 vertebrae
    assert spinal_levels("T2 hyperintense, T1-weighted, T2/FLAIR, STIR") == ()


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (("L4-L5",), ("L4-L5",), True),
        (("L5-S1",), ("S1",), True),  # the S1 root at the L5-S1 disc
        (("L4-L5",), ("L5-S1",), False),  # adjacent discs share a vertebra, not a segment
        (("C5-T2",), ("C6-C7",), True),
        (("C3",), ("C5-C6",), False),
        ((), ("L4-L5",), False),
    ],
)
def test_levels_overlap(a, b, overlap: bool) -> None:
    assert levels_overlap(a, b) is overlap


@pytest.mark.parametrize(
    ("inner", "outer", "within"),
    [
        (("L4-L5",), ("L4-L5",), True),
        (("L4-L5", "L5"), ("L4-L5",), True),  # the L5 root named beside the L4-5 disc
        (("L3-S1",), ("L4-L5",), False),  # facet arthropathy L3-S1 is also at other levels
        (("L4-L5", "L5-S1"), ("L4-L5",), False),
        (("C5-C6",), ("C4-C7",), True),
        ((), ("L4-L5",), False),
        (("L4-L5",), (), False),
    ],
)
def test_levels_within(inner, outer, within: bool) -> None:
    assert levels_within(inner, outer) is within


# --- coded findings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    system: str
    code: str
    display: str = ""


def test_findings_from_codes(rules) -> None:
    found = findings_from_codes(
        [Item("SCT", "24700007", "Multiple sclerosis"), Item("SCT", "404684003")], rules
    )
    assert [(f.label, f.text, f.section) for f in found] == [
        ("demyelination", "Multiple sclerosis", CODED),
        (UNCLASSIFIED, "SCT 404684003", CODED),
    ]


# --- assertion_status: any concept in any sentence (for NegEx-style corpora) ------------------


@pytest.mark.parametrize(
    ("sentence", "concept", "expected"),
    [
        ("The patient denies chest pain.", "chest pain", "negated"),
        ("No evidence of pneumonia.", "pneumonia", "negated"),
        ("Pneumothorax has resolved.", "pneumothorax", "negated"),
        ("Possible early appendicitis.", "appendicitis", "uncertain"),
        ("Metastatic disease cannot be excluded.", "Metastatic disease", "uncertain"),
        ("History of myocardial infarction.", "myocardial infarction", "historical"),
        ("Rule out pulmonary embolism.", "pulmonary embolism", "hypothetical"),
        ("The patient has a fever but no cough.", "fever", None),
        ("The patient has a fever but no cough.", "cough", "negated"),
    ],
)
def test_assertion_status(sentence: str, concept: str, expected: str | None) -> None:
    status = assertion_status(sentence, concept)
    assert set(status) == {"negated", "uncertain", "historical", "hypothetical"}
    assert {key for key, value in status.items() if value} == ({expected} if expected else set())


@pytest.mark.parametrize(
    ("sentence", "concept", "negated"),
    [
        # a cue wholly inside the concept is part of its name
        (
            "Sigmoid diverticulosis without diverticulitis.",
            "diverticulosis without diverticulitis",
            False,
        ),
        ("Abdomen soft, no guarding.", "abdomen soft, no guarding", False),
        ("Pupils are equal and normal in size.", "pupils are equal and normal in size", False),
        # the same cue still qualifies a concept it does not lie inside
        ("Sigmoid diverticulosis without diverticulitis.", "diverticulitis", True),
        ("Abdomen soft, no guarding.", "guarding", True),
    ],
)
def test_a_cue_inside_the_concept_names_it(sentence: str, concept: str, negated: bool) -> None:
    assert assertion_status(sentence, concept)["negated"] is negated


def test_assertion_status_tolerates_case_and_spacing() -> None:
    assert assertion_status("R/O   Cord\nCompression", "cord compression")["hypothetical"]


def test_assertion_status_needs_the_concept_in_the_sentence() -> None:
    with pytest.raises(ValueError, match="does not occur"):
        assertion_status("No fracture.", "pneumonia")


# --- pipeline ---------------------------------------------------------------------------------


def test_pipeline_is_built_once_per_rules_version(rules) -> None:
    assert nlp._pipeline(rules) is nlp._pipeline(rules)


def test_pipeline_needs_no_downloaded_model(rules) -> None:
    pipeline = nlp._pipeline(rules)
    assert pipeline.meta["name"] == "pipeline"  # spacy.blank("en"), no en_core_web_* package
    assert pipeline.pipe_names == ["followup_sentences", "medspacy_sectionizer"]


def test_library_logging_is_quiet(rules, capfd) -> None:
    extract_findings("IMPRESSION: Possible syrinx. No cord compression.", rules)
    captured = capfd.readouterr()
    assert "DEBUG" not in captured.err + captured.out
    for name in ("medspacy", "PyRuSH"):
        assert logging.getLogger(name).level == logging.WARNING


def test_importing_medspacy_does_not_silence_all_warnings() -> None:
    catch_all = ("ignore", None, Warning, None, 0)
    assert catch_all not in warnings.filters


def test_bad_token_pattern_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: "1"
            reviewer: tester
            effective_date: "2026-01-01"
            specialties: [neurology]
            abnormal_cues: [lesion]
            rules:
              - label: syrinx
                referrals: [neurology]
                tier: routine
                critical: false
                patterns:
                  - [{LOWER: {NOT_A_PREDICATE: [syrinx]}}]
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(RulesError, match=r"routing\.yaml:7: rule syrinx: invalid token pattern"):
        extract_findings("syrinx", load_rules(path))
