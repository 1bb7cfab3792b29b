"""The classifier by phrasing family, from templates: a rule that holds for one wording only
misses the patient whose radiologist writes it another way.

Every critical rule in at least 8 phrasings: noun form, either word order, verb form,
abbreviation, misspelling (one the rules list, one typo they do not), truncation ("compr."),
stated only in FINDINGS, hedged (escalates), negated and asked about in
the INDICATION only (neither escalates). Every other routing rule in at least 3 phrasings. Then
the scope rules of DOMAIN.md §3-4 that these families exposed: negation ends at ") and" and at
"and"/"with" that start a new finding, a hedge about the clinical syndrome is no imaging finding,
an incomplete study is never a silent normal, infection ranks before inflammation, abnormal
language no rule routes goes to review with its sentence quoted.
"""

from __future__ import annotations

import textwrap

import pytest

from followup.core.routing import Decision
from followup.core.rules import TIERS, RoutingRules, load_rules
from followup.core.spelling import respeller
from followup.nlp import assertion_status, classify_report
from followup.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def rules() -> RoutingRules:
    return load_rules(PROJECT_ROOT / "rules" / "routing.yaml")


# label → phrasing family → phrase (a sentence without its full stop)
CRITICAL_PHRASINGS: dict[str, dict[str, str]] = {
    "cord_compression": {
        "noun": "Cord compression at C5-6",
        "reversed_order": "Flattening of the spinal cord at C5-6",
        "verb": "A large C5-6 extrusion compresses the cord",
        "noun_after": "Severe C5-6 stenosis with cord flattening",
        "abbreviation": "Epidural metastasis at T6 with MESCC",
        "misspelling": "Spinal cord compresion at C6-7",
        "typo": "Cord flatening at C5-6",
        "truncation": "Severe C5-6 stenosis with cord compr",
    },
    "cauda_equina_compression": {
        "noun": "Cauda equina compression at L4-5",
        "reversed_order": "Compression of the cauda equina at L4-5",
        "verb": "A massive L4-5 extrusion compresses the cauda equina",
        "noun_after": "The cauda equina is severely compressed at L4-5",
        "abbreviation": "Massive L4-5 extrusion with imaging findings of CES",
        "misspelling": "Cauda equine compression at L4-5",
        "typo": "Cauda equnia comperssion at L4-5",
        "truncation": "Massive L4-5 extrusion with cauda equina compres",
    },
    "epidural_abscess": {
        "noun": "Dorsal epidural abscess at L3-4",
        "reversed_order": "Abscess in the dorsal epidural space at L3-4",
        "verb": "A rim-enhancing epidural collection narrows the canal at L3-4",
        "noun_after": "Collection within the ventral epidural space at C5",
        "abbreviation": "Discitis at L2-3 with SEA",
        "misspelling": "Dorsal epidural absess at L3-4",
        "typo": "Dorsal epidural absscess at L3-4",
        "truncation": "Rim-enhancing ventral epidural absces",
    },
    "unstable_fracture": {
        "noun": "Acute L1 burst fracture",
        "reversed_order": "Disruption of the posterior ligamentous complex at T12",
        "verb": "A retropulsed fragment narrows the canal at L1",
        "noun_after": "Acute L2 fracture with PLC disruption",
        "abbreviation": "Acute L1 burst fx",
        "misspelling": "Acute L1 burts fracture",
        "typo": "Retropulsoin of an L1 fragment into the canal",
        "truncation": "Acute L1 compression fracture with retrop",
    },
    "acute_infarct": {
        "noun": "Acute left MCA territory infarct",
        "reversed_order": "Infarct in the left frontal lobe, acute",
        "verb": "The left insula shows restricted diffusion",
        "noun_after": "Diffusion restriction in the right thalamus",
        "abbreviation": "Acute left MCA CVA",
        "misspelling": "Acute infract in the left pons",
        "typo": "Restircted diffusion in the left insula",
        "truncation": "Acute left MCA territory infarc",
    },
    "intracranial_hemorrhage": {
        "noun": "Intraparenchymal hemorrhage in the left parietal lobe",
        "reversed_order": "Hemorrhage within the right occipital lobe",
        "verb": "Blood layers in the occipital horns of the lateral ventricles",
        "noun_after": "Acute subdural hematoma along the falx",
        "abbreviation": "Small SAH in the right sylvian fissure",
        "misspelling": "Subdural hemorhage over the left convexity",
        "typo": "Subarachnoid hemorrhgae in the basal cisterns",
        "truncation": "Intraparenchymal hemorr",
    },
}

# An IMPRESSION with nothing critical, for reports whose critical finding is elsewhere.
_MILD_IMPRESSION = "IMPRESSION: No other significant finding."


def _labels(decision: Decision) -> set[str]:
    return {
        finding.label
        for finding in decision.findings
        if not (finding.negated or finding.historical or finding.hypothetical)
    }


def _lower_first(phrase: str) -> str:
    """Sentence case off, abbreviations kept ("Discitis at L2-3 with SEA" → "discitis ... SEA")."""
    return phrase[0].lower() + phrase[1:]


def _affirmed_cases() -> list[tuple[str, str, str]]:
    return [
        (label, family, phrase)
        for label, phrasings in CRITICAL_PHRASINGS.items()
        for family, phrase in phrasings.items()
    ]


@pytest.mark.parametrize(("label", "family", "phrase"), _affirmed_cases())
def test_critical_phrasing_in_impression_escalates(
    rules: RoutingRules, label: str, family: str, phrase: str
) -> None:
    decision = classify_report(f"IMPRESSION: {phrase}.", rules)
    assert decision.critical, (family, decision.explanations)
    assert label in _labels(decision), (family, decision.explanations)
    assert "in IMPRESSION" in decision.explanations[0]


@pytest.mark.parametrize(("label", "family", "phrase"), _affirmed_cases())
def test_critical_phrasing_only_in_findings_escalates_and_says_where(
    rules: RoutingRules, label: str, family: str, phrase: str
) -> None:
    decision = classify_report(f"FINDINGS: {phrase}.\n{_MILD_IMPRESSION}", rules)
    assert decision.critical, (family, decision.explanations)
    assert label in _labels(decision)
    assert decision.explanations[0].startswith("emergent: ")
    assert "in FINDINGS" in decision.explanations[0]


_WRAP_LEAD = "Compared with the outside study there has been interval change, and now"


@pytest.mark.parametrize("width", [40, 52, 64, 72, 80])
@pytest.mark.parametrize("label", sorted(CRITICAL_PHRASINGS))
def test_critical_phrasing_wrapped_at_a_fixed_width_escalates(
    rules: RoutingRules, label: str, width: int
) -> None:
    """A RIS that wraps the report (one OBX segment per line) cuts phrases in two."""
    for family, phrase in CRITICAL_PHRASINGS[label].items():
        prose = f"{_WRAP_LEAD} {_lower_first(phrase)}. {_MILD_IMPRESSION.split(':', 1)[1]}"
        text = "IMPRESSION:\n" + "\n".join(textwrap.wrap(prose, width))
        decision = classify_report(text, rules)
        assert decision.critical, (family, text, decision.explanations)
        assert label in _labels(decision), (family, text)


@pytest.mark.parametrize("width", [40, 52, 64, 72, 80])
@pytest.mark.parametrize("label", sorted(CRITICAL_PHRASINGS))
def test_negated_critical_phrasing_wrapped_does_not_escalate(
    rules: RoutingRules, label: str, width: int
) -> None:
    noun = _lower_first(CRITICAL_PHRASINGS[label]["noun"])
    prose = f"{_WRAP_LEAD} there is no evidence of {noun}. Mild degenerative change."
    text = "IMPRESSION:\n" + "\n".join(textwrap.wrap(prose, width))
    assert not classify_report(text, rules).critical, text


@pytest.mark.parametrize("label", sorted(CRITICAL_PHRASINGS))
def test_hedged_critical_finding_escalates(rules: RoutingRules, label: str) -> None:
    for phrase in CRITICAL_PHRASINGS[label].values():
        for text in (
            f"IMPRESSION: Possible {_lower_first(phrase)}.",
            f"IMPRESSION: {phrase} cannot be excluded.",
        ):
            decision = classify_report(text, rules)
            assert decision.critical, text
            assert any(f.uncertain for f in decision.findings if f.label == label), text


@pytest.mark.parametrize("label", sorted(CRITICAL_PHRASINGS))
def test_negated_critical_finding_does_not_escalate(rules: RoutingRules, label: str) -> None:
    noun = CRITICAL_PHRASINGS[label]["noun"]
    decision = classify_report(f"IMPRESSION: No {_lower_first(noun)}.", rules)
    assert not decision.critical, decision.explanations
    assert [f.negated for f in decision.findings if f.label == label] == [True]


@pytest.mark.parametrize("label", sorted(CRITICAL_PHRASINGS))
def test_critical_finding_asked_about_in_the_indication_only_does_not_escalate(
    rules: RoutingRules, label: str
) -> None:
    for phrase in CRITICAL_PHRASINGS[label].values():
        text = f"INDICATION: Evaluate for {_lower_first(phrase)}.\nIMPRESSION: Normal study."
        decision = classify_report(text, rules)
        assert (decision.critical, decision.findings) == (False, []), text


@pytest.mark.parametrize("label", sorted(CRITICAL_PHRASINGS))
@pytest.mark.parametrize("family", ["typo", "truncation"])
def test_negated_typo_or_truncation_does_not_escalate(
    rules: RoutingRules, label: str, family: str
) -> None:
    phrase = CRITICAL_PHRASINGS[label][family]
    decision = classify_report(f"IMPRESSION: No {_lower_first(phrase)}.", rules)
    assert not decision.critical, decision.explanations
    assert [f.negated for f in decision.findings if f.label == label] == [True]


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("cord compresion", "cord compression"),
        ("cord compresssed", "cord compressed"),
        ("Cord Flatening", "Cord Flattening"),
        ("MYELOPAHTY", "MYELOPATHY"),
        ("cord flattend", "cord flattened"),
        ("cord compr. CCS", "cord compression. CCS"),
        ("CE compres. at L4-5", "CE compression. at L4-5"),
        ("cord flat.", "cord flattening."),
        ("retropuls. of bone", "retropulsion. of bone"),
        # any word of a critical concept, with its period: "caud." starts cauda and its
        # variant caudal, one word; the period is no sentence end when the next word goes on
        # with the critical phrase, and kept where it may be one
        ("dorsal epid. absc. at L3-4", "dorsal epidural abscess. at L3-4"),
        ("caud. equina compr.", "cauda equina compression."),
        ("Intracran. hemorr. Stable.", "Intracranial hemorrhage. Stable."),
        ("retropuls. frag. at L1", "retropulsion. fragment. at L1"),
        ("no cord compr. severe stenosis", "no cord compression. severe stenosis"),
        # One edit from the American and from the British spelling: one word, not ambiguous.
        ("subdural heamatoma", "subdural hematoma"),
        ("acute ischeamic stroke", "acute ischemic stroke"),
        # a short critical word's typo, read beside the other word of its phrase only
        ("compression of the caude equina", "compression of the cauda equina"),
        ("Caude equina compressed", "Cauda equina compressed"),
        ("spinal crod compression", "spinal cord compression"),
        ("the caude of the pain", "the caude of the pain"),
        # an added last letter is an inflection, not a typo; a real word stays itself
        ("the spinal cords", "the spinal cords"),
        ("core decompression of the femoral head", "core decompression of the femoral head"),
    ],
)
def test_typos_and_truncations_of_critical_words_are_read_as_the_word(
    rules: RoutingRules, written: str, read: str
) -> None:
    assert respeller(rules)(written) == read


@pytest.mark.parametrize(
    "text",
    [
        "IMPRESSION: Mild spondylosis. Clinical impression of radiculopathy.",
        "Depression and expression noted; compressive effect on the S1 root.",
        "Comp. with prior, comparison study; complex cyst.",
        "Multiple myeloma. Myeloma lesions. Myelogram pending.",
        "Flattering, flatter, fattened; retrolisthesis; retro. hemosiderin",
        "Cauda equine is how some dictate it.",
        "flat back; cord compromise; CCS at L4-5",
        "Sagittal images reformed; an old infraction; intents",
        # a truncation of a critical word only with its period; not of two words at once
        "Epidermoid cyst; caudate nucleus; absent kidney; later; lateral",
        "Subd hematoma later; spin. cord; coll. site; diff. signal; synd. pending",
    ],
)
def test_ordinary_words_are_not_respelled(rules: RoutingRules, text: str) -> None:
    assert respeller(rules)(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "IMPRESSION: Mild C5-6 bulge. Clinical impresion of radiculopathy.",
        "IMPRESSION: Moderate CCS at L4-5 without cauda equina compresion.",
        "IMPRESSION: Comp. with prior: stable mild L4-5 bulge.",
        "IMPRESSION: Small C5-6 protrusion without compresive effect on the cord.",
        "IMPRESSION: Multiple myeloma without pathologic fracture or cord compr.",
        "IMPRESSION: No epid. absc. Mild L4-5 bulge.",
        "IMPRESSION: Caud. equina nerve roots normal. No compr.",
        "IMPRESSION: Small epidermoid cyst. Caudate nucleus normal.",
        "HISTORY: r/o epid. absc.\nIMPRESSION: Unremarkable lumbar spine.",
    ],
)
def test_look_alikes_of_critical_words_do_not_escalate(rules: RoutingRules, text: str) -> None:
    assert not classify_report(text, rules).critical, text


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("IMPRESSION: Dorsal epid. absc. at L3-4.", "epidural_abscess"),
        ("IMPRESSION: L4-5 extrusion with caud. equina compr.", "cauda_equina_compression"),
        ("IMPRESSION: Intracran. hemorr. in the left frontal lobe.", "intracranial_hemorrhage"),
        ("IMPRESSION: Subarach. hemorr. in the right sylvian fissure.", "intracranial_hemorrhage"),
        ("impression: ventral epid. phlegm. at t8-9.", "epidural_abscess"),
        # lower-case dictation: a truncation's period still ends the negated sentence
        ("impression: no epid. absc. cord compr. at c5-6.", "cord_compression"),
        ("impression: no hemorr. acute infarct in the left mca territory.", "acute_infarct"),
    ],
)
def test_truncations_of_any_critical_concept_word_escalate(
    rules: RoutingRules, text: str, label: str
) -> None:
    decision = classify_report(text, rules)
    assert decision.critical and label in {f.label for f in decision.findings}, text


def test_every_critical_rule_has_eight_phrasing_families(rules: RoutingRules) -> None:
    assert set(CRITICAL_PHRASINGS) == {rule.label for rule in rules.rules if rule.critical}
    # six written forms + FINDINGS-only + hedged + negated + indication-only
    assert all(len(forms) + 4 >= 8 for forms in CRITICAL_PHRASINGS.values())


# --- every other routing rule, three phrasings each ---------------------------------------------

ROUTING_PHRASINGS: dict[str, tuple[str, str, str]] = {
    "discitis_osteomyelitis": (
        "Discitis-osteomyelitis at L3-4",
        "Endplate destruction with disc enhancement at T10-11",
        "Psoas abscess adjacent to L3",
    ),
    "soft_tissue_joint_infection": (
        "Septic arthritis of the right knee",
        "Septic left sacroiliitis with an iliacus abscess",
        "Necrotizing fasciitis of the thigh",
    ),
    "metastasis": (
        "Marrow-replacing lesion at T9",
        "Diffuse osseous metastases",
        "Pathologic fracture of L2",
    ),
    "enhancing_demyelination": (
        "Enhancing demyelinating lesion in the left centrum semiovale",
        "Active demyelination in the cervical cord",
        "Periventricular demyelinating lesions, one of which enhances",
    ),
    "acute_compression_fracture": (
        "Acute L2 compression fracture",
        "Compression fracture of T12 with marrow edema",
        "New T8 compression deformity",
    ),
    "displaced_fracture": (
        "Displaced fracture of the scaphoid waist",
        "Comminuted displaced fracture of the distal radius",
        "Displaced fracture of the lateral malleolus",
    ),
    "osteonecrosis_collapse": (
        "Avascular necrosis of the femoral head with subchondral collapse",
        "Osteonecrosis of the lunate with collapse",
        "AVN of the right femoral head with articular surface collapse",
    ),
    "demyelination": (
        "Periventricular and juxtacortical lesions compatible with multiple sclerosis",
        "Dawson fingers",
        "Findings of demyelinating disease",
    ),
    "myelopathy_syrinx": ("C5-T2 syrinx", "Myelomalacia at C4-5", "Transverse myelitis"),
    "nerve_root_compression": (
        "Extrusion contacting the descending S1 root",
        "The left L5 nerve root is compressed",
        "Protrusion impinging on the exiting L4 nerve root",
    ),
    "peripheral_nerve": (
        "Ulnar neuritis at the cubital tunnel",
        "Flattening of the median nerve in the carpal tunnel",
        "Schwannoma of the sciatic nerve",
    ),
    "spondylolisthesis": (
        "Grade 1 anterolisthesis of L4 on L5",
        "Bilateral L5 spondylolysis",
        "Retrolisthesis of L3 on L4",
    ),
    "severe_stenosis": (
        "Severe canal stenosis at L4-5",
        "Severe right foraminal narrowing at C6-7",
        "Critical central stenosis at L3-4",
    ),
    "compression_deformity": (
        "Chronic compression deformity of L1",
        "Old T12 compression fracture",
        "Vertebral body height loss at T8",
    ),
    "tendon_ligament_tear": (
        "Full-thickness tear of the supraspinatus tendon",
        "Complete ACL tear",
        "Bucket-handle tear of the medial meniscus",
    ),
    "limb_fracture": (
        "Stress fracture of the second metatarsal",
        "Insufficiency fracture of the medial tibial plateau",
        "Nondisplaced fracture of the fibula",
    ),
    "osteonecrosis": (
        "Avascular necrosis of the femoral head without collapse",
        "Osteochondral lesion of the talar dome",
        "Bone infarct in the distal femur",
    ),
    "disc_herniation": (
        "Broad-based L4-5 protrusion",
        "Small L5-S1 extrusion",
        "Central disc herniation at T7-8",
    ),
    "degenerative_disc_disease": (
        "Degenerative disc disease at L4-5",
        "Multilevel disc desiccation",
        "Cervical spondylosis",
    ),
    "modic_change": ("Type 1 Modic change at L5-S1", "Endplate edema at L4-5", "Modic type 2"),
    "annular_fissure": ("Annular fissure at L4-5", "Annular tear at L5-S1", "High-intensity zone"),
    "facet_arthropathy": (
        "Facet arthropathy at L4-5",
        "Ligamentum flavum hypertrophy",
        "Facet synovial cyst at L4-5",
    ),
    "partial_tear_tendinosis": (
        "Adhesive capsulitis",
        "Partial-thickness articular-surface tear of the supraspinatus",
        "Trochanteric bursitis",
    ),
    "sacroiliitis": (
        "Active sacroiliitis",
        "Subchondral marrow edema at both SI joints",
        "Ankylosing spondylitis",
    ),
    "inflammatory_arthritis": (
        "Erosive synovitis of the MCP joints",
        "Rheumatoid arthritis of the wrist",
        "Synovitis and erosions of the MTP joints",
    ),
    "fatty_corner_lesion": (
        "Fatty corner lesions",
        "Fatty corner at T10",
        "Corner fat deposition at L2",
    ),
    "fat_metaplasia": (
        "Fat metaplasia at both SI joints",
        "Backfill at the left SI joint",
        "Subchondral fat deposition",
    ),
    "nondiagnostic": (
        "Motion-degraded study",
        "Examination terminated because of claustrophobia",
        "The exam is incomplete",
    ),
    "localization": (
        "The symptomatic level cannot be determined on MRI",
        "Pain generator is not identified",
        "SPECT/CT may help localize the symptomatic level",
    ),
    "disc_bulge": ("Mild disc bulge at L3-4", "Bulging disc at L4-5", "Disc bulges at C5-6"),
    "nonsevere_stenosis": (
        "Mild canal stenosis at L3-4",
        "Moderate left foraminal narrowing at C5-6",
        "Effacement of the thecal sac",
    ),
    "incidental": ("L2 hemangioma", "Tarlov cyst at S2", "Chronic microvascular ischemic change"),
    "joint_effusion": (
        "Moderate joint effusion",
        "Large knee effusion",
        "Effusion of the left knee joint",
    ),
    "physiologic_joint_fluid": (
        "Physiologic joint fluid",
        "Small joint effusion",
        "Trace knee effusion",
    ),
}


def _routing_cases() -> list[tuple[str, str]]:
    return [(label, phrase) for label, phrases in ROUTING_PHRASINGS.items() for phrase in phrases]


@pytest.mark.parametrize(("label", "phrase"), _routing_cases())
def test_routing_rule_phrasing(rules: RoutingRules, label: str, phrase: str) -> None:
    decision = classify_report(f"IMPRESSION: {phrase}.", rules)
    rule = rules.rule(label)
    assert label in _labels(decision), decision.explanations
    assert set(rule.referrals) <= set(decision.referrals)
    assert TIERS.index(decision.urgency) >= TIERS.index(rule.tier)
    assert not decision.critical
    assert not decision.needs_review, decision.explanations


def test_every_routing_rule_has_three_phrasings(rules: RoutingRules) -> None:
    non_critical = {rule.label for rule in rules.rules if not rule.critical}
    assert set(ROUTING_PHRASINGS) == non_critical
    assert all(len(phrases) >= 3 for phrases in ROUTING_PHRASINGS.values())


# --- scope, syndromes, incomplete studies, infection, the safety net ---------------------------


@pytest.mark.parametrize(
    ("text", "referrals"),
    [
        (
            "C4-5 protrusion (no cord compression) and severe right foraminal stenosis at C6-7.",
            ["orthopedics", "pain_management"],
        ),
        ("No cord compression and a severe left C5-6 foraminal stenosis.", ["orthopedics"]),
        ("Without fracture and with a grade 1 anterolisthesis of L4 on L5.", ["orthopedics"]),
        ("No stenosis, with a small right paracentral L4-5 protrusion.", ["pain_management"]),
        ("No meniscal tear; complete tear of the anterior cruciate ligament.", ["orthopedics"]),
    ],
)
def test_negation_ends_where_a_new_finding_starts(
    rules: RoutingRules, text: str, referrals: list[str]
) -> None:
    decision = classify_report(f"IMPRESSION: {text}", rules)
    assert (decision.referrals, decision.critical) == (referrals, False), decision.explanations


@pytest.mark.parametrize(
    "text",
    [
        "No herniation or stenosis at L3-4 or L4-5.",
        "No compression of the cord and the cauda equina.",
        "No active (enhancing) lesions.",
        "No evidence of cord compression, cauda equina compression or epidural abscess.",
    ],
)
def test_negation_still_covers_a_list(rules: RoutingRules, text: str) -> None:
    decision = classify_report(f"IMPRESSION: {text}", rules)
    assert (decision.referrals, decision.critical, decision.needs_review) == ([], False, False)


@pytest.mark.parametrize(
    ("sentence", "concept", "negated"),
    [
        (
            "No cord compression and a severe foraminal stenosis.",
            "severe foraminal stenosis",
            False,
        ),
        (
            "(no cord compression) and severe foraminal stenosis.",
            "severe foraminal stenosis",
            False,
        ),
        ("(no cord compression) and severe foraminal stenosis.", "cord compression", True),
        ("No fever and no chills.", "chills", True),
        ("Denies chest pain or shortness of breath.", "shortness of breath", True),
    ],
)
def test_assertion_status_scope(sentence: str, concept: str, negated: bool) -> None:
    assert assertion_status(sentence, concept)["negated"] is negated


@pytest.mark.parametrize(
    "text",
    [
        "Cauda equina syndrome is not excluded clinically, but no compressive lesion is seen.",
        "Clinical concern for cauda equina syndrome; the thecal sac is normal.",
        "No imaging correlate for the suspected cauda equina syndrome.",
        "No MRI evidence to explain the clinically suspected CES.",
        "Clinical cauda equina syndrome cannot be excluded on imaging grounds alone; however, no"
        " compressive lesion of the cauda equina is seen.",
        "CES is a clinical diagnosis; no compression of the cauda equina.",
        "Cauda equina syndrome cannot be excluded on clinical grounds; however, no compressive"
        " lesion is demonstrated on imaging.",
    ],
)
def test_a_hedge_about_the_clinical_syndrome_is_no_imaging_finding(
    rules: RoutingRules, text: str
) -> None:
    decision = classify_report(f"IMPRESSION: {text}", rules)
    assert (decision.critical, decision.needs_review, decision.referrals) == (False, False, [])


@pytest.mark.parametrize(
    "text",
    [
        "Massive L4-5 extrusion, findings of CES.",
        "Cauda equina syndrome cannot be excluded.",
        "Cord compression cannot be excluded on imaging grounds alone.",
        "CES is a clinical diagnosis; however, a large L4-5 extrusion compresses the cauda equina.",
        "Severe stenosis at L4-5; in this clinical setting, findings could represent cauda equina"
        " syndrome.",
    ],
)
def test_the_syndrome_named_on_imaging_escalates(rules: RoutingRules, text: str) -> None:
    assert classify_report(f"IMPRESSION: {text}", rules).critical


@pytest.mark.parametrize(
    "text",
    [
        "Examination terminated after the sagittal sequences because of claustrophobia.",
        "Study aborted at the patient's request.",
        "Limited study; no gross abnormality.",
        "The patient could not complete the examination.",
    ],
)
def test_an_incomplete_study_suggests_testing(rules: RoutingRules, text: str) -> None:
    decision = classify_report(f"IMPRESSION: {text}", rules)
    assert decision.additional_testing == list(rules.rule("nondiagnostic").additional_testing)


@pytest.mark.parametrize(
    "text",
    [
        "Septic right sacroiliitis with an iliacus abscess.",
        "Infectious sacroiliitis on the left.",
        "Septic bursitis of the prepatellar bursa.",
        "Septic arthritis with erosive synovitis of the wrist.",
    ],
)
def test_infection_ranks_before_inflammation(rules: RoutingRules, text: str) -> None:
    decision = classify_report(f"IMPRESSION: {text}", rules)
    assert (decision.urgency, decision.referrals) == ("urgent", ["orthopedics"])


def test_adhesive_capsulitis_is_not_sacroiliitis(rules: RoutingRules) -> None:
    decision = classify_report("IMPRESSION: Adhesive capsulitis of the left shoulder.", rules)
    assert decision.referrals == ["pain_management"]


@pytest.mark.parametrize(
    "sentence",
    [
        "Tear of the gluteal fascia.",
        "Necrosis of the adjacent fat.",
        "Indeterminate mass in the left thigh.",
        "Edema in the lateral femoral condyle.",
        "Fluid collection in the surgical bed.",
        "Enhancing mass in the vastus lateralis, not along a nerve.",
    ],
)
def test_unrouted_abnormality_goes_to_review_quoting_the_sentence(
    rules: RoutingRules, sentence: str
) -> None:
    decision = classify_report(f"IMPRESSION: {sentence}", rules)
    assert decision.needs_review
    assert any(f'"{sentence}"' in line for line in decision.explanations), decision.explanations


@pytest.mark.parametrize(
    ("text", "critical"),
    [
        ("Epidural enhancement at L3-4, possibly phlegmon or early abscess.", True),
        ("Postoperative epidural enhancement without abscess.", False),
        ("No epidural enhancement to suggest phlegmon.", False),
    ],
)
def test_epidural_enhancement_read_with_the_abscess_it_names(
    rules: RoutingRules, text: str, critical: bool
) -> None:
    assert classify_report(f"IMPRESSION: {text}", rules).critical is critical


# --- more written forms of the critical concepts ------------------------------------------------


@pytest.mark.parametrize(
    ("label", "phrase"),
    [
        ("cord_compression", "Severe canal stenosis at C3-4 with mass effect upon the spinal cord"),
        ("cord_compression", "At C4-5 the cord is tightly compressed by a disc-osteophyte complex"),
        ("cord_compression", "Deformity of the cord at C5-6"),
        (
            "cauda_equina_compression",
            "The roots of the cauda equina are tightly compressed at L2-3",
        ),
        ("cauda_equina_compression", "L3/4 sequestered disc, CE compression"),
        ("epidural_abscess", "Peripherally enhancing ventral epidural fluid from C4 to C7"),
        ("unstable_fracture", "L3 burst fx with retropulsion"),
        # a probe of 40 forms written 2026-12-08 before the rules that read them (6 missed)
        ("cord_compression", "Critical canal stenosis at C5-6 with cord effacement"),
        ("cord_compression", "Effacement of the spinal cord at C5-6"),
        ("cord_compression", "Cord compromise at C5-6"),
        (
            "cord_compression",
            "Myelopathic signal in the cord at C3-4 due to severe compressive stenosis",
        ),
        (
            "cauda_equina_compression",
            "Mass effect upon the thecal sac and cauda equina at L3-4 from a sequestered fragment",
        ),
        ("intracranial_hemorrhage", "Intraventricular extension of hemorrhage"),
        ("intracranial_hemorrhage", "Right frontal intraparenchymal bleed with surrounding edema"),
    ],
)
def test_more_critical_forms_escalate(rules: RoutingRules, label: str, phrase: str) -> None:
    decision = classify_report(f"IMPRESSION: {phrase}.", rules)
    assert decision.critical and label in _labels(decision), decision.explanations


def test_a_question_mark_before_a_word_asks_about_it(rules: RoutingRules) -> None:
    """ "clinical ?CES" is the clinician's question: "?" there ends no sentence."""
    decision = classify_report("IMPRESSION: clinical ?CES. Thecal sac and roots normal.", rules)
    assert (decision.critical, decision.referrals, decision.needs_review) == (False, [], False)


@pytest.mark.parametrize(
    "text",
    ["Cord signal normal.", "The cord signal is normal.", "Normal cord signal."],
)
def test_normal_negates_what_it_qualifies(rules: RoutingRules, text: str) -> None:
    decision = classify_report(f"IMPRESSION: {text}", rules)
    assert (decision.referrals, decision.needs_review) == ([], False), decision.explanations


def test_normal_does_not_reach_back_over_a_compression(rules: RoutingRules) -> None:
    decision = classify_report("IMPRESSION: The cord is compressed and normal in signal.", rules)
    assert decision.critical


# --- where the findings are read ---------------------------------------------------------------


def test_level_lines_beside_an_impression_are_read_for_critical_findings(
    rules: RoutingRules,
) -> None:
    report = (
        "MRI CERVICAL SPINE\nC3-4: Normal.\nC4-5: Disc osteophyte complex; cord compressed.\n"
        "IMPRESSION: Degenerative change, worst at C4-5."
    )
    decision = classify_report(report, rules)
    assert decision.critical and "in FINDINGS" in decision.explanations[0]


def test_an_impression_as_above_routes_the_level_lines(rules: RoutingRules) -> None:
    report = (
        "MRI LUMBAR SPINE\nL3-4: Facet arthropathy.\nL4-5: Grade 1 anterolisthesis with severe"
        " canal stenosis.\nL5-S1: Right paracentral protrusion contacting the right S1 root.\n"
        "IMPRESSION: As above."
    )
    decision = classify_report(report, rules)
    assert decision.referrals == ["neurology", "orthopedics", "pain_management"]
    assert not decision.needs_review
    critical = classify_report(
        "MRI CERVICAL SPINE\nCord: Flattened at C5-6 by a disc osteophyte complex.\n"
        "IMPRESSION: Findings at C5-6 as described above.",
        rules,
    )
    assert critical.critical


def test_findings_the_impression_leaves_out_are_routed_and_reviewed(rules: RoutingRules) -> None:
    report = (
        "FINDINGS: L5-S1: Right paracentral extrusion contacting the descending right S1 nerve"
        " root.\nIMPRESSION: Unremarkable MRI of the lumbar spine."
    )
    decision = classify_report(report, rules)
    assert (decision.referrals, decision.needs_review) == (["neurology"], True)
    assert any(
        "IMPRESSION leaves out" in line and '"L5-S1' in line for line in decision.explanations
    )


# --- additional testing per body region --------------------------------------------------------


@pytest.mark.parametrize(
    ("report", "tests"),
    [
        (
            "EXAM: MRI LUMBAR SPINE\nIMPRESSION: Examination terminated because of claustrophobia.",
            ["CT myelography"],
        ),
        (
            "EXAM: MRI LUMBAR SPINE\nIMPRESSION: MRI contraindicated; examination not performed.",
            ["CT myelography"],
        ),
        (
            "IMPRESSION: Severe susceptibility artifact from the fusion hardware; stenosis cannot"
            " be assessed.",
            ["CT myelography"],
        ),
        ("EXAM: MRI RIGHT KNEE\nIMPRESSION: Incomplete examination.", ["repeat MRI"]),
        ("MRI BRAIN\nIMPRESSION: Limited study. No restricted diffusion.", ["repeat MRI"]),
        ("MRI LEFT BRACHIAL PLEXUS\nIMPRESSION: Motion-degraded study.", ["repeat MRI"]),
        (
            "INDICATION: Back pain radiating to the leg.\nIMPRESSION: Study aborted.",
            ["CT myelography"],
        ),
        # MRI contraindicated or no images: never a silent normal
        (
            "EXAM: MRI LUMBAR SPINE\nIMPRESSION: MRI not performed: non-MR-conditional pacemaker.",
            ["CT myelography"],
        ),
        (
            "EXAM: MRI LUMBAR SPINE\nIMPRESSION: No images were obtained.",
            ["CT myelography"],
        ),
        (
            "EXAM: MRI C-SPINE\nIMPRESSION: Images were not obtained.",
            ["CT myelography"],
        ),
        (
            "EXAM: MRI C-SPINE\nIMPRESSION: Pacemaker is not MR conditional; exam cancelled.",
            ["CT myelography"],
        ),
        # a device that is MR conditional is no contraindication
        ("EXAM: MRI L-SPINE\nIMPRESSION: MR-conditional pacemaker. No acute abnormality.", []),
    ],
)
def test_an_incomplete_study_suggests_the_tests_of_its_region(
    rules: RoutingRules, report: str, tests: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.additional_testing, decision.referrals) == (tests, []), decision.explanations


@pytest.mark.parametrize(
    ("report", "tests"),
    [
        (
            "IMPRESSION: Facet arthropathy L3-S1; the symptomatic level cannot be localized.",
            ["SPECT/CT"],
        ),
        (
            "IMPRESSION: Limited study. The culprit level could not be identified.",
            ["CT myelography", "SPECT/CT"],
        ),
        ("IMPRESSION: Mild facet arthropathy at L4-5. No stenosis.", []),
        ("IMPRESSION: Motion-degraded study; stenosis not excluded.", ["CT myelography"]),
    ],
)
def test_spect_ct_is_for_localization_ct_myelography_for_an_incomplete_study(
    rules: RoutingRules, report: str, tests: list[str]
) -> None:
    """DOMAIN.md: "CT myelography if MRI nondiagnostic or contraindicated; SPECT/CT for
    localization"."""
    assert classify_report(report, rules).additional_testing == tests


def test_a_finding_an_incomplete_study_could_not_assess_is_not_asserted(
    rules: RoutingRules,
) -> None:
    decision = classify_report(
        "MRI RIGHT BRACHIAL PLEXUS\nIMPRESSION: Limited evaluation of the brachial plexus;"
        " plexopathy cannot be assessed.",
        rules,
    )
    assert (decision.referrals, decision.additional_testing) == ([], ["repeat MRI"])


# --- joints: more written forms ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "urgency", "referrals"),
    [
        ("The Achilles tendon is completely ruptured.", "routine", ["orthopedics"]),
        ("The distal biceps tendon is torn and retracted 5 cm.", "routine", ["orthopedics"]),
        ("The supraspinatus tendon is partially torn.", "routine", ["pain_management"]),
        ("Displaced scaphoid waist fracture.", "urgent", ["orthopedics"]),
        ("Displaced fx distal fibula.", "urgent", ["orthopedics"]),
        ("Intraneural ganglion of the common peroneal nerve.", "routine", ["neurology"]),
        # a mass along a nerve (DOMAIN.md peripheral-nerve row)
        (
            "Fusiform enhancing mass along the course of the sciatic nerve.",
            "routine",
            ["neurology"],
        ),
        (
            "2 cm enhancing mass along the ulnar nerve at the cubital tunnel.",
            "routine",
            ["neurology"],
        ),
        ("No mass along the sciatic nerve. Normal study.", "routine", []),
    ],
)
def test_joint_and_nerve_forms(
    rules: RoutingRules, text: str, urgency: str, referrals: list[str]
) -> None:
    decision = classify_report(f"IMPRESSION: {text}", rules)
    assert (decision.urgency, decision.referrals, decision.needs_review) == (
        urgency,
        referrals,
        False,
    ), decision.explanations


# --- the safety net: repeats are not new abnormalities, contusions and strains are -------------


@pytest.mark.parametrize(
    ("report", "review"),
    [
        ("FINDINGS: Acute L1 burst fracture with retropulsion.\nIMPRESSION: L1 fracture.", False),
        # an IMPRESSION restating a FINDINGS critical finding in short is that finding
        (
            "FINDINGS: Acute hemorrhage within the left occipital lobe.\n"
            "IMPRESSION: Left occipital hemorrhage, acute.",
            False,
        ),
        (
            "FINDINGS: Rim-enhancing dorsal epidural collection.\n"
            "IMPRESSION: Rim-enhancing dorsal collection.",
            False,
        ),
        # ... but not at another level or side, and not an unrelated abnormality beside it
        (
            "FINDINGS: Acute hemorrhage within the left occipital lobe.\n"
            "IMPRESSION: Right occipital hemorrhage.",
            True,
        ),
        (
            "FINDINGS: Acute hemorrhage within the left occipital lobe.\n"
            "IMPRESSION: Left frontal hemorrhage.",
            True,
        ),
        (
            "FINDINGS: Intraparenchymal hemorrhage in the right thalamus.\n"
            "IMPRESSION: Right thalamic hemorrhage.",
            False,
        ),
        ("FINDINGS: Acute L1 burst fracture with retropulsion.\nIMPRESSION: T6 fracture.", True),
        (
            "FINDINGS: Acute hemorrhage within the left occipital lobe.\n"
            "IMPRESSION: Left occipital hemorrhage, acute. Left parotid mass.",
            True,
        ),
        (
            "IMPRESSION: Enhancing demyelinating lesion in the right centrum semiovale;"
            " additional non-enhancing periventricular lesions.",
            False,
        ),
        (
            "FINDINGS: Conus: compressed by an intradural mass at T12-L1.\nIMPRESSION: Intradural"
            " mass at T12-L1.",
            True,
        ),
        ("IMPRESSION: Bone contusions of the lateral femoral condyle.", True),
        ("IMPRESSION: Grade 1 strain of the biceps femoris.", True),
    ],
)
def test_abnormal_words_that_repeat_a_finding_are_not_reviewed(
    rules: RoutingRules, report: str, review: bool
) -> None:
    assert classify_report(report, rules).needs_review is review


def test_the_degenerative_cause_of_a_compression_is_not_referred_twice(
    rules: RoutingRules,
) -> None:
    same_sentence = classify_report(
        "IMPRESSION: Flattening of the cord at C5-6 from a disc osteophyte complex.", rules
    )
    separate = classify_report(
        "IMPRESSION: Cord flattening at C5-6. Multilevel cervical spondylosis.", rules
    )
    assert same_sentence.referrals == ["orthopedics"]
    assert separate.referrals == ["orthopedics", "pain_management"]


@pytest.mark.parametrize(
    ("impression", "referrals"),
    [
        # a semicolon joins the clauses: the compression is the osteophyte bar's
        ("C5-6 osteophyte bar; early cord compression cannot be excluded.", ["orthopedics"]),
        ("C4-5 disc osteophyte complex; cord compressed.", ["orthopedics"]),
        # the clauses name different levels: two findings
        (
            "C3-4 disc osteophyte complex; cord compression at C5-6 by an extrusion.",
            ["orthopedics", "pain_management"],
        ),
        # not a critical superseder: a full-thickness tear beside bursitis is still referred
        ("Full-thickness supraspinatus tear; subacromial bursitis.", None),
    ],
)
def test_a_compression_in_the_next_clause_covers_its_degenerative_cause(
    rules: RoutingRules, impression: str, referrals: list[str] | None
) -> None:
    decision = classify_report(f"IMPRESSION: {impression}", rules)
    if referrals is None:
        assert "orthopedics" in decision.referrals
    else:
        assert decision.referrals == referrals


@pytest.mark.parametrize(
    "report",
    [
        "IMPRESSION: Severe right neural foraminal stenosis"
        " at C6-7 due to uncovertebral hypertrophy.",
        "IMPRESSION: Compression of the thoracic cord"
        " at T10-11 from ligamentum flavum hypertrophy.",
        "IMPRESSION: Severe L4-5 canal stenosis from"
        " a broad-based protrusion and facet hypertrophy.",
        "IMPRESSION: Cauda equina compression at L3-4 secondary"
        " to an extrusion and facet hypertrophy.",
        "IMPRESSION: C5-6 disc osteophyte complex (no cord compression) and severe right C5-6"
        " foraminal stenosis.",
        "IMPRESSION: L4-5 extrusion (no root contact) with severe left lateral recess stenosis.",
        # the compression is in FINDINGS, its cause in the IMPRESSION at that level only
        "FINDINGS: At C5-6 a disc osteophyte complex flattens the cord.\n"
        "IMPRESSION: C5-6 disc osteophyte complex.",
        # a compression that names no level, right after its cause
        "IMPRESSION: C5-6 disc osteophyte with spin. cord compr.",
    ],
)
def test_a_degenerative_cause_of_a_compression_or_severe_stenosis_routes_with_it(
    rules: RoutingRules, report: str
) -> None:
    decision = classify_report(report, rules)
    assert decision.referrals == ["orthopedics"], decision.explanations
    assert not decision.needs_review


@pytest.mark.parametrize(
    "report",
    [
        "IMPRESSION: Severe L4-5 canal stenosis from facet hypertrophy. Mild L5-S1 facet"
        " arthropathy.",
        "IMPRESSION: 1. C6-7 disc osteophyte complex compresses the cord. 2. Multilevel facet"
        " arthropathy.",
        "IMPRESSION: Severe canal stenosis at L4-5. Facet arthropathy L3-S1.",
        "IMPRESSION: Severe canal stenosis at L4-5 and mild facet arthropathy at L5-S1.",
        "IMPRESSION: Cauda equina compression at L4-5 by an extrusion. L5-S1 degenerative disc"
        " disease.",
        # the IMPRESSION's degeneration is at more levels than the compression it causes
        "FINDINGS: C5-6: disc osteophyte complex flattening the cord. C6-7: disc desiccation.\n"
        "IMPRESSION: Cervical spondylosis, worst at C5-6.",
        "FINDINGS: L4-5: extrusion compressing the cauda equina.\n"
        "IMPRESSION: Degenerative disc disease at L4-5 and L5-S1.",
        # not named as the cause: a degenerative statement of its own with no level
        "IMPRESSION: Possible cord compression at T4 from a retropulsed fragment. Thoracic"
        " spondylosis.",
        # a statement of its own after a semicolon, about more levels than the stenosis
        "IMPRESSION: Severe left C5-6 foraminal stenosis; multilevel degenerative disc disease.",
        # "worst at" names more places than one, with or without a level after it
        "IMPRESSION: Severe L4-5 stenosis from facet hypertrophy; spondylosis, worst at the"
        " lumbosacral junction.",
    ],
)
def test_a_degenerative_finding_elsewhere_still_goes_to_pain_management(
    rules: RoutingRules, report: str
) -> None:
    decision = classify_report(report, rules)
    assert "pain_management" in decision.referrals, decision.explanations
    assert "orthopedics" in decision.referrals


@pytest.mark.parametrize(
    ("impression", "referrals"),
    [
        (
            "L4-5 extrusion with severe left lateral recess stenosis compressing the traversing"
            " left L5 nerve root.",
            ["neurology", "orthopedics"],
        ),
        (
            "Severe right L4-5 foraminal stenosis from facet hypertrophy, contacting the exiting"
            " right L4 nerve root.",
            ["neurology", "orthopedics"],
        ),
        ("L5-S1 extrusion contacting the descending left S1 nerve root.", ["neurology"]),
    ],
)
def test_a_nerve_root_contact_beside_a_severe_stenosis_keeps_neurology(
    rules: RoutingRules, impression: str, referrals: list[str]
) -> None:
    assert classify_report(f"IMPRESSION: {impression}", rules).referrals == referrals


@pytest.mark.parametrize(
    ("impression", "urgency", "review"),
    [
        (
            "1. Periventricular lesions compatible with multiple sclerosis.\n"
            "2. Two enhancing lesions indicating active disease.",
            "urgent",
            False,
        ),
        (
            "1. Stable demyelinating lesions.\n2. Enhancing mass in the left frontal lobe.",
            "urgent",
            True,
        ),
        ("1. Demyelinating lesions.\n2. No enhancing lesions.", "routine", False),
    ],
)
def test_a_qualifier_in_its_own_sentence_qualifies_the_sections_finding(
    rules: RoutingRules, impression: str, urgency: str, review: bool
) -> None:
    decision = classify_report(f"IMPRESSION:\n{impression}", rules)
    assert (decision.urgency, decision.referrals, decision.needs_review) == (
        urgency,
        ["neurology"],
        review,
    ), decision.explanations


@pytest.mark.parametrize(
    "report",
    [
        "MRI L-SPINE FOR CES\nIMPRESSION: Normal.",
        "MRI C-SPINE: ?CORD COMPRESSION\nIMPRESSION: No cord compression.",
        "MRI LUMBAR SPINE - CAUDA EQUINA SYNDROME PROTOCOL\nIMPRESSION: Normal lumbar spine.",
    ],
)
def test_the_exam_title_names_the_question_not_a_finding(rules: RoutingRules, report: str) -> None:
    decision = classify_report(report, rules)
    assert (decision.critical, decision.referrals) == (False, []), decision.explanations


def test_si_joint_erosions_in_their_own_sentence_are_sacroiliitis(rules: RoutingRules) -> None:
    decision = classify_report(
        "IMPRESSION:\n1. Active bilateral sacroiliitis.\n2. Small left iliac erosions.", rules
    )
    assert (decision.referrals, decision.needs_review) == (["rheumatology"], False)


def test_findings_are_not_routed_over_an_impression_that_names_known_findings(
    rules: RoutingRules,
) -> None:
    report = (
        "FINDINGS: L4-5: Disc bulge and facet hypertrophy.\n"
        "IMPRESSION: Motion-degraded, nondiagnostic examination."
    )
    decision = classify_report(report, rules)
    assert (decision.referrals, decision.needs_review) == ([], False), decision.explanations


@pytest.mark.parametrize(
    ("report", "referrals"),
    [
        (
            "FINDINGS: L5-S1 left paracentral extrusion compressing the descending left S1 nerve"
            " root.\nIMPRESSION: L5-S1 extrusion with left S1 radiculopathy.",
            ["neurology"],
        ),
        (
            "FINDINGS: L4-5 right paracentral extrusion contacting the traversing right L5 root.\n"
            "IMPRESSION: L4-5 extrusion.",
            ["neurology"],
        ),
        # no root contact, or a root contact at another level: the herniation stays as stated
        (
            "FINDINGS: L4-5 broad-based protrusion without nerve root contact.\n"
            "IMPRESSION: L4-5 protrusion.",
            ["pain_management"],
        ),
        (
            "FINDINGS: L3-4 protrusion contacting the left L4 root. Small L5-S1 protrusion.\n"
            "IMPRESSION: L5-S1 protrusion.",
            ["pain_management"],
        ),
        # a joint finding has no level: a bursitis beside a tendon tear is no detail of it
        (
            "FINDINGS: Complete tear of the supraspinatus tendon with retraction. Subdeltoid"
            " bursitis.\nIMPRESSION: Complete supraspinatus tendon tear.",
            ["orthopedics"],
        ),
    ],
)
def test_findings_that_detail_the_impressions_herniation_route_it(
    rules: RoutingRules, report: str, referrals: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.referrals, decision.needs_review) == (referrals, False), decision.explanations


@pytest.mark.parametrize(
    ("impression", "referrals"),
    [
        ("Non-compressive myelopathy with T2 signal in the cord from C3 to C6.", ["neurology"]),
        (
            "Longitudinal T2 hyperintensity in the dorsal columns from C2 to C6 with no cord"
            " compression.",
            ["neurology"],
        ),
        ("Dorsal column T2 signal from C2 to C5.", ["neurology"]),
        # myelopathy only as the clinician's question, answered in the negative
        (
            "No structural cause for the suspected myelopathy: no cord compression, cord signal"
            " normal.",
            [],
        ),
        ("No signal abnormality in the dorsal columns.", []),
    ],
)
def test_myelopathy_without_compression_goes_to_neurology(
    rules: RoutingRules, impression: str, referrals: list[str]
) -> None:
    decision = classify_report(f"MRI C-spine. IMPRESSION: {impression}", rules)
    assert (decision.critical, decision.needs_review, decision.referrals) == (
        False,
        False,
        referrals,
    )


@pytest.mark.parametrize(
    ("impression", "urgency"),
    [
        ("Multiple periventricular demyelinating lesions, none enhancing.", "routine"),
        ("Demyelinating lesions, none of which enhance.", "routine"),
        ("Demyelinating lesions without enhancement at C2 and C4.", "routine"),
        ("Demyelinating lesions, non-enhancing.", "routine"),
        ("Demyelinating lesions of the cord at C2 and T1.", "routine"),
        ("Three demyelinating lesions, one of which enhances.", "urgent"),
        ("Enhancing cord lesion at C3, c/w active demyelinating plaque.", "urgent"),
    ],
)
def test_demyelination_is_urgent_only_when_enhancing(
    rules: RoutingRules, impression: str, urgency: str
) -> None:
    decision = classify_report(f"IMPRESSION: {impression}", rules)
    assert (decision.urgency, decision.referrals, decision.needs_review) == (
        urgency,
        ["neurology"],
        False,
    )


@pytest.mark.parametrize(
    ("report", "referrals", "urgency"),
    [
        (
            "MRI elbow. IMPRESSION: Full-thickness tear of the anterior bundle of the ulnar"
            " collateral ligament.",
            ["orthopedics"],
            "routine",
        ),
        (
            "MRI thumb. IMPRESSION: Complete tear of the ulnar collateral ligament of the first"
            " MCP joint.",
            ["orthopedics"],
            "routine",
        ),
        (
            "MRI knee. IMPRESSION: Complete ACL tear with pivot-shift bone contusions of the"
            " lateral femoral condyle and posterolateral tibial plateau.",
            ["orthopedics"],
            "routine",
        ),
        (
            "MRI knee. IMPRESSION: Displaced flap tear of the medial meniscus.",
            ["orthopedics"],
            "routine",
        ),
        (
            "MRI thigh. IMPRESSION: Pyomyositis of the left vastus lateralis with a 3 cm"
            " intramuscular abscess.",
            ["orthopedics"],
            "urgent",
        ),
        (
            "MRI shoulder. IMPRESSION: Partial-thickness articular-sided supraspinatus tear;"
            " subacromial bursitis.",
            ["pain_management"],
            "routine",
        ),
        (
            "MRI shoulder. IMPRESSION: Full-thickness supraspinatus tear; subacromial bursitis.",
            ["orthopedics", "pain_management"],
            "routine",
        ),
    ],
)
def test_joint_ligament_tendon_and_muscle_findings(
    rules: RoutingRules, report: str, referrals: list[str], urgency: str
) -> None:
    decision = classify_report(report, rules)
    assert (decision.referrals, decision.urgency, decision.needs_review) == (
        referrals,
        urgency,
        False,
    )


def test_an_epidural_abscess_under_a_lowercase_conclusion_escalates_without_review(
    rules: RoutingRules,
) -> None:
    decision = classify_report(
        "MRI L-spine.\nconclusion: spinal epidural abscess at L3-4. recommend urgent spinal"
        " surgical review.",
        rules,
    )
    assert (decision.critical, decision.referrals, decision.needs_review) == (
        True,
        ["orthopedics"],
        False,
    )


@pytest.mark.parametrize(
    ("typo", "word"),
    [
        ("metastsis", "metastasis"),
        ("menicsus", "meniscus"),
        ("anterolisthsis", "anterolisthesis"),
        ("demyelinatng", "demyelinating"),
    ],
)
def test_a_typo_of_a_long_routed_word_is_read_as_that_word(
    rules: RoutingRules, typo: str, word: str
) -> None:
    assert respeller(rules)(f"Bucket {typo} here") == f"Bucket {word} here"


@pytest.mark.parametrize(
    "real",
    [
        "injection",
        "injected",
        "displayed",
        "contracted",
        "narrow",
        "protrusions",
        "lesions",
        "fraction",
        "possible",
        "probable",
        "there",
    ],
)
def test_real_words_near_a_routed_word_are_not_respelled(rules: RoutingRules, real: str) -> None:
    assert respeller(rules)(f"the {real} one") == f"the {real} one"


@pytest.mark.parametrize(
    ("report", "referrals"),
    [
        ("MRI T-spine. IMPRESSION: Marrow-replacing metastsis at T9.", ["orthopedics"]),
        ("MRI knee. IMPRESSION: Bucket-handle tear of the medial menicsus.", ["orthopedics"]),
        ("MRI L-spine. IMPRESSION: Grade 1 anterolisthsis of L4 on L5.", ["orthopedics"]),
        ("MRI L-spine. IMPRESSION: No metastsis. Normal study.", []),
        ("MRI L-spine. IMPRESSION: L4-5 facet injection. No stenosis.", []),
    ],
)
def test_typos_of_routed_words_route_and_their_negations_stay_negative(
    rules: RoutingRules, report: str, referrals: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.referrals, decision.needs_review, decision.critical) == (
        referrals,
        False,
        False,
    )


@pytest.mark.parametrize(
    "impression",
    [
        # one sentence that asserts and denies a concept says where each holds
        "Cord compression at T8 from a dorsal epidural abscess (no cord compression at other"
        " levels).",
        "Compression of the cauda equina at L3-4 by an epidural abscess (no compression of the"
        " cauda equina at L5-S1).",
        # a denial "elsewhere" leaves the named place alone
        "Cord compression at C6-7 from an epidural phlegmon. No cord compression elsewhere.",
    ],
)
def test_a_critical_denied_only_at_other_places_needs_no_review(
    rules: RoutingRules, impression: str
) -> None:
    decision = classify_report(f"MRI spine. IMPRESSION: {impression}", rules)
    assert (decision.critical, decision.referrals, decision.needs_review) == (
        True,
        ["orthopedics"],
        False,
    )


def test_a_critical_asserted_and_denied_in_two_sentences_is_still_reviewed(
    rules: RoutingRules,
) -> None:
    report = "MRI C-spine. IMPRESSION: Cord compression at C5-6. No cord compression."
    assert classify_report(report, rules).needs_review


@pytest.mark.parametrize(
    ("report", "urgency"),
    [
        (
            "MRI L-spine\nFINDINGS: There is an acute compression fracture of the L1 vertebral"
            " body with marrow edema.\nIMPRESSION: L1 fracture.",
            "urgent",
        ),
        (
            "MRI knee\nFINDINGS: Nondisplaced fracture of the lateral tibial plateau with marrow"
            " edema.\nIMPRESSION: Tibial plateau fracture.",
            "routine",
        ),
    ],
)
def test_a_short_impression_restating_the_findings_needs_no_review(
    rules: RoutingRules, report: str, urgency: str
) -> None:
    decision = classify_report(report, rules)
    assert (decision.urgency, decision.referrals, decision.needs_review) == (
        urgency,
        ["orthopedics"],
        False,
    )


def test_a_short_impression_naming_another_place_is_still_reviewed(rules: RoutingRules) -> None:
    report = (
        "MRI knee\nFINDINGS: Nondisplaced fracture of the medial femoral condyle with marrow"
        " edema.\nIMPRESSION: Lateral tibial plateau fracture."
    )
    decision = classify_report(report, rules)
    assert (decision.referrals, decision.needs_review) == (["orthopedics"], True)


@pytest.mark.parametrize(
    ("report", "referrals"),
    [
        (
            "MRI C-spine. IMPRESSION: Acute epidural hematoma C6-T1 with cord compression.",
            ["orthopedics"],
        ),
        (
            "MRI L-spine. IMPRESSION: Acute epidural hematoma L2-L4 compressing the cauda equina.",
            ["orthopedics"],
        ),
        (
            "MRI T-spine. IMPRESSION: Acute spinal subdural hematoma T10-T12 with compression of"
            " the conus.",
            ["orthopedics"],
        ),
        # intracranial: still neurology
        (
            "MRI brain. IMPRESSION: Acute epidural hematoma over the left temporal convexity.",
            ["neurology"],
        ),
    ],
)
def test_a_spinal_hematoma_compressing_the_cord_is_that_compression(
    rules: RoutingRules, report: str, referrals: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.critical, decision.referrals) == (True, referrals)


@pytest.mark.parametrize(
    "report",
    [
        "MRI C-spine. CONCLUSION: Non-compressive myelopathy at C4-5.",
        "MRI C-spine.\nOPINION:\nNoncompressive myelopathy from C3 to C5.",
        "MRI T-spine. Conclusion: Non compressive myelopathy of the thoracic cord.",
        "MRI C-spine. OPINION: Non-compressive myelopath. C2-C4.",
    ],
)
def test_non_compressive_myelopathy_goes_to_neurology(rules: RoutingRules, report: str) -> None:
    decision = classify_report(report, rules)
    assert (decision.critical, decision.referrals, decision.needs_review) == (
        False,
        ["neurology"],
        False,
    )


@pytest.mark.parametrize(
    "impression",
    [
        "Tear of the dorsal band of the scapholunate ligament.",
        "Torn membranous portion of the lunotriquetral ligament.",
        "Full-thickness tear through the volar band of the scapholunate ligament.",
        "Disruption of the palmar segment of the lunotriquetral ligament.",
    ],
)
def test_a_tear_of_a_named_band_of_a_wrist_ligament_goes_to_orthopedics(
    rules: RoutingRules, impression: str
) -> None:
    decision = classify_report(f"MRI wrist. IMPRESSION: {impression}", rules)
    assert (decision.referrals, decision.needs_review) == (["orthopedics"], False)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        # a level or size after it is the finding's own: no sentence end
        ("Dorsal epidural abs. T7-T9", "Dorsal epidural abscess T7-T9"),
        ("Epidural absc. 9 x 14 mm", "Epidural abscess 9 x 14 mm"),
        # the period stays where the next word does not go on with the phrase: it may end
        # the sentence
        ("Ventral epidural coll.", "Ventral epidural collection."),
        ("Subarachnoid hem. in the fissure", "Subarachnoid hemorrhage. in the fissure"),
        ("cauda equina synd.", "cauda equina syndrome."),
        # without a word before it that decides it, a short or shared truncation stays
        ("Coll. ligaments intact", "Coll. ligaments intact"),
        ("Abs. of effusion", "Abs. of effusion"),
        ("no abs. seen", "no abs. seen"),
        # "subdural hem." may be hematoma or hemorrhage of one rule: read as one of them
        ("Subdural hem. over the convexity", "Subdural hematoma. over the convexity"),
    ],
)
def test_short_and_shared_truncations_are_read_after_the_word_before_them(
    rules: RoutingRules, written: str, read: str
) -> None:
    assert respeller(rules)(written) == read


@pytest.mark.parametrize(
    ("typo", "word"),
    [("tera", "tear"), ("nreve", "nerve"), ("nevre", "nerve"), ("ulnra", "ulnar")],
)
def test_a_swap_of_two_letters_in_a_short_routed_word_is_read_as_that_word(
    rules: RoutingRules, typo: str, word: str
) -> None:
    assert respeller(rules)(f"the {typo} here") == f"the {word} here"


@pytest.mark.parametrize("real", ["raising", "lunar", "trees", "terse", "form", "serve", "year"])
def test_real_words_a_swap_away_from_a_short_routed_word_are_not_respelled(
    rules: RoutingRules, real: str
) -> None:
    assert respeller(rules)(f"the {real} one") == f"the {real} one"


@pytest.mark.parametrize(
    ("report", "referrals"),
    [
        ("MRI knee. IMPRESSION: Bucket-handle tera of the medial meniscus.", ["orthopedics"]),
        ("MRI elbow. IMPRESSION: Ulnar nreve entrapment at the cubital tunnel.", ["neurology"]),
        ("MRI knee. IMPRESSION: Intact menisci. No tera.", []),
    ],
)
def test_short_typos_of_routed_words_route(
    rules: RoutingRules, report: str, referrals: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.referrals, decision.needs_review) == (referrals, False)


@pytest.mark.parametrize(
    "impression",
    [
        "Acute C6 fracture (no retropulsion, no cord compression).",
        "Spinal epidural hematoma T2-T4 (no cord compression).",
    ],
)
def test_abnormal_words_beside_only_denied_findings_are_reviewed(
    rules: RoutingRules, impression: str
) -> None:
    decision = classify_report(f"MRI spine. IMPRESSION: {impression}", rules)
    assert (decision.critical, decision.needs_review) == (False, True)


@pytest.mark.parametrize(
    "impression",
    ["No fracture or cord compression.", "No acute fracture; no retropulsion."],
)
def test_denied_abnormal_words_beside_denied_findings_are_not_reviewed(
    rules: RoutingRules, impression: str
) -> None:
    decision = classify_report(f"MRI spine. IMPRESSION: {impression}", rules)
    assert (decision.critical, decision.referrals, decision.needs_review) == (False, [], False)


@pytest.mark.parametrize(
    "report",
    [
        "IMPRESSION: Spondylosis.\nADDENDUM: The original report did not mention compression of the"
        " cauda equina at L4-5 by an extruded fragment; this is present.",
        "IMPRESSION: Degenerative change.\nADDENDUM: The preliminary read failed to mention"
        " compression of the cord at C5-6.",
        "IMPRESSION: Mild spondylosis.\nADDENDUM: Cord compression at T8 was not mentioned in the"
        " original report and is present.",
    ],
)
def test_an_addendum_about_what_the_report_left_out_affirms_it(
    rules: RoutingRules, report: str
) -> None:
    assert classify_report(report, rules).critical


def test_a_plain_negation_beside_a_reporting_verb_still_negates(rules: RoutingRules) -> None:
    report = "IMPRESSION: No cord compression. Findings were discussed and did not change."
    assert not classify_report(report, rules).critical


@pytest.mark.parametrize(
    ("report", "critical"),
    [
        # a typo of a short critical word, read beside the other word of its phrase
        ("IMP: L4-5 large extrusion with severe compression of the caude equina.", True),
        ("IMPRESSION: Spinal crod compression at T6 from a metastasis.", True),
        # an addendum about images that were not available at the first read
        (
            "IMPRESSION: No acute abnormality.\nADDENDUM: Post-contrast images, not available at"
            " the time of the original read, show a rim-enhancing dorsal epidural collection"
            " consistent with epidural abscess.",
            True,
        ),
        ("IMPRESSION: No prior study available for comparison. No cord compression.", False),
    ],
)
def test_short_word_typos_and_unavailable_images(
    rules: RoutingRules, report: str, critical: bool
) -> None:
    assert classify_report(report, rules).critical is critical


def test_mets_is_metastasis(rules: RoutingRules) -> None:
    decision = classify_report("IMP: enhancing lesions L1 + L4 bodies c/w mets.", rules)
    assert (decision.urgency, decision.referrals) == ("urgent", ["orthopedics"])


@pytest.mark.parametrize(
    ("report", "tests"),
    [
        ("IMPRESSION: Facet arthropathy L4-S1. SPECT/CT suggested for localization.", ["SPECT/CT"]),
        ("IMPRESSION: Facet arthropathy L4-S1. SPECT-CT may help.", ["SPECT/CT"]),
        ("IMPRESSION: Facet arthropathy. Prior SPECT/CT showed uptake at L4-5.", []),
    ],
)
def test_a_suggested_spect_ct_is_passed_on(
    rules: RoutingRules, report: str, tests: list[str]
) -> None:
    assert classify_report(report, rules).additional_testing == tests


@pytest.mark.parametrize(
    "report",
    [
        "MRI BRAIN\nFINDINGS: Ventricles normal. No abnormal signal. No restricted diffusion.",
        "IMPRESSION: No abnormal enhancement.",
        "IMPRESSION: Treated L2 metastasis, unchanged. No new lesions.",
    ],
)
def test_no_before_abnormal_or_new_negates_what_follows(rules: RoutingRules, report: str) -> None:
    assert not classify_report(report, rules).needs_review


@pytest.mark.parametrize(
    "report",
    [
        "MRI RIGHT THIGH. IMPRESSION: Avulsion of the conjoint hamstring tendon from the ischial"
        " tuberosity.",
        "MRI LEFT ELBOW. IMPRESSION: Distal biceps tendon rupture; the lacertus fibrosus is also"
        " torn.",
        "MRI RIGHT ANKLE. IMPRESSION: Complete Achilles tendon tear. The plantaris is also torn.",
        # a part of the routed tear said "also torn" in words the tear rule uses
        "MRI CHEST. IMPRESSION: Full-thickness tear of the pectoralis major tendon at the humeral"
        " insertion; the sternal head is also torn.",
    ],
)
def test_a_tendon_tear_named_by_its_anatomy_goes_to_orthopedics_without_review(
    rules: RoutingRules, report: str
) -> None:
    decision = classify_report(report, rules)
    assert (decision.referrals, decision.needs_review) == (["orthopedics"], False), (
        decision.explanations
    )


def test_also_with_a_word_the_routed_rule_does_not_use_is_still_reviewed(
    rules: RoutingRules,
) -> None:
    decision = classify_report(
        "IMPRESSION: Full-thickness supraspinatus tear. There is also a mass in the deltoid.", rules
    )
    assert decision.needs_review


@pytest.mark.parametrize(
    "impression",
    [
        "Synovitis + marginal erosions 1st-5th MTP.",
        "Enhancing synovitis of the radiocarpal and intercarpal joints with marginal erosions of"
        " the scaphoid and lunate.",
    ],
)
def test_telegraphic_erosive_synovitis_goes_to_rheumatology(
    rules: RoutingRules, impression: str
) -> None:
    decision = classify_report(f"MRI HAND. IMPRESSION: {impression}", rules)
    assert (decision.referrals, decision.needs_review) == (["rheumatology"], False)


def test_synovitis_and_a_denied_erosion_is_not_erosive_arthritis(rules: RoutingRules) -> None:
    decision = classify_report(
        "MRI HAND. IMPRESSION: Synovitis of the 2nd MCP joint without erosions.", rules
    )
    assert "rheumatology" not in decision.referrals


@pytest.mark.parametrize(
    "impression",
    [
        "Asymmetric thickening and enhancement of the right lumbosacral plexus.",
        "Diffuse T2 hyperintensity and thickening of the right brachial plexus trunks.",
        "The left brachial plexus trunks are diffusely thickened and hyperintense.",
    ],
)
def test_a_plexopathy_described_by_its_signs_goes_to_neurology(
    rules: RoutingRules, impression: str
) -> None:
    decision = classify_report(f"MRI PLEXUS. IMPRESSION: {impression}", rules)
    assert (decision.referrals, decision.needs_review) == (["neurology"], False)


@pytest.mark.parametrize(
    ("report", "urgency", "referrals"),
    [
        (
            "MRI L-SPINE. IMPRESSION: No epidural abscess. No abnormal epidural or disc"
            " enhancement.",
            "routine",
            [],
        ),
        (
            "MRI L-SPINE. IMPRESSION: L3-4 discitis-osteomyelitis. No epidural abscess; no"
            " abnormal epidural enhancement.",
            "urgent",
            ["orthopedics"],
        ),
        # the level and size after a truncation do not start a sentence of their own
        (
            "MRI L-SPINE. IMPRESSION: Dorsal epid. absc. L2-4, 8 mm, mild thecal sac mass effect.",
            "emergent",
            ["orthopedics"],
        ),
        (
            "MRI LEFT FOOT. IMPRESSION: 1st MTP joint effusion with synovial enhancement and a"
            " marginal erosion; septic arthritis is likely.",
            "urgent",
            ["orthopedics"],
        ),
    ],
)
def test_denials_truncations_and_likely_diagnoses_raise_no_spurious_review(
    rules: RoutingRules, report: str, urgency: str, referrals: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.urgency, decision.referrals, decision.needs_review) == (
        urgency,
        referrals,
        False,
    ), decision.explanations


def test_signs_beside_a_diagnosis_stated_outright_are_still_reviewed(rules: RoutingRules) -> None:
    decision = classify_report(
        "MRI L-SPINE. IMPRESSION: Fluid collection in the surgical bed; L4-5 discitis.", rules
    )
    assert decision.needs_review


@pytest.mark.parametrize(
    "impression",
    [
        "L5-S1 extrusion (no evidence of cauda equina compression) contacting the descending S1"
        " root.",
        "L4-5 extrusion (cauda equina not compressed) displacing the right L5 root.",
        "C6-7 protrusion (no cord compression) abutting the exiting left C7 nerve root.",
    ],
)
def test_a_denial_inside_parentheses_does_not_reach_the_root_contact_after_them(
    rules: RoutingRules, impression: str
) -> None:
    decision = classify_report(f"MRI SPINE. IMPRESSION: {impression}", rules)
    assert (decision.critical, decision.referrals) == (False, ["neurology"])


def test_a_denial_outside_parentheses_keeps_its_scope(rules: RoutingRules) -> None:
    assert assertion_status("No active (enhancing) lesions.", "lesions")["negated"]


@pytest.mark.parametrize(
    ("report", "critical"),
    [
        ("FINDINGS: prior epidural abscess resolved, no residual collection", False),
        ("IMPRESSION: Epidural abscess resolved on antibiotics.", False),
        ("IMPRESSION: Resolved epidural abscess.", False),
        # "resolved" reaches neither past its comma nor far ahead
        ("IMPRESSION: Hematoma resolved, new cord compression at T4.", True),
        ("IMPRESSION: Resolved hematoma, residual cord compression at T4.", True),
        # still there
        ("IMPRESSION: Epidural abscess, not resolved.", True),
        ("IMPRESSION: Epidural abscess, partially resolved.", True),
        # a structured report's field
        ("IMPRESSION: Cord compression: none. Severe left L5-S1 foraminal stenosis.", False),
        ("IMPRESSION: Cord compression: severe at C5-6.", True),
        # a field whose answer denies what follows it
        (
            "FINDINGS:\nEpidural space: Negative for epidural abscess.\nIMPRESSION:\nDiscitis."
            " Negative for epidural abscess.",
            False,
        ),
        # a vascular territory between "acute" and "infarct"
        ("IMPRESSION: Acute right PICA infarct.", True),
    ],
)
def test_resolved_and_field_answers(rules: RoutingRules, report: str, critical: bool) -> None:
    assert classify_report(report, rules).critical is critical


# --- spine and brain voices: checklists, one-line dictation, speech recognition, shorthand -------


@pytest.mark.parametrize(
    ("report", "critical"),
    [
        # a one-line report: its title is the first sentence, not the whole line
        (
            "MRI C-SPINE. Alignment: normal. Cord: compressed at C5-6 by a disc extrusion."
            " IMPRESSION: See checklist above.",
            True,
        ),
        (
            "MRI C-SPINE. Motion-degraded. Cord compression cannot be excluded at C5-6."
            " IMPRESSION: Nondiagnostic study.",
            True,
        ),
        (
            "MRI L-SPINE FOR CES. Conus normal. IMPRESSION: Mild L4-5 facet arthropathy.",
            False,
        ),
    ],
)
def test_one_line_report_text_beside_the_impression_is_read(
    rules: RoutingRules, report: str, critical: bool
) -> None:
    assert classify_report(report, rules).critical is critical


@pytest.mark.parametrize(
    ("report", "critical", "label"),
    [
        (
            "MRI LUMBAR SPINE\nCauda equina: nerve roots are compressed at L4-5.",
            True,
            "cauda_equina_compression",
        ),
        ("MRI BRAIN\nIMPRESSION: R temporal EDH 12 mm.", True, "intracranial_hemorrhage"),
        (
            "MRI BRAIN\nIMPRESSION: L basal ganglia IPH with IVH extension.",
            True,
            "intracranial_hemorrhage",
        ),
        ("MRI BRAIN\nIMPRESSION: No EDH, SDH or IPH.", False, None),
        ("MRI BRAIN\nIMPRESSION: No IVH.", False, None),
    ],
)
def test_checklist_fields_and_bleed_shorthand(
    rules: RoutingRules, report: str, critical: bool, label: str | None
) -> None:
    decision = classify_report(report, rules)
    assert decision.critical is critical, decision.explanations
    if label is not None:
        assert label in _labels(decision)


@pytest.mark.parametrize(
    ("written", "read"),
    [
        # a word speech recognition split: the pieces joined are a concept word, or a typo
        # of one from pieces the rules do not know
        ("severe stenosis with cord come pression", "severe stenosis with cord compression"),
        ("dorsal epi dural abcess", "dorsal epidural abscess"),
        ("L4-5 disk itis and osteo my elitis", "L4-5 diskitis and osteomyelitis"),
        ("end plate destruction", "endplate destruction"),
        # a piece the rules know is no piece of a typo ("infarctin", "nocompressive" are one
        # edit from infarction, noncompressive), and a join never crosses a stop
        ("old infarct in the left thalamus", "old infarct in the left thalamus"),
        ("no compressive lesion", "no compressive lesion"),
        ("the fracture is healed", "the fracture is healed"),
        ("no disk. Itis", "no disk. Itis"),
    ],
)
def test_words_split_by_speech_recognition_are_joined(
    rules: RoutingRules, written: str, read: str
) -> None:
    assert respeller(rules)(written) == read


@pytest.mark.parametrize(
    ("report", "urgency"),
    [
        (
            "MRI C-SPINE\nIMPRESSION: Severe C6-7 canal stenosis with cord come pression.",
            "emergent",
        ),
        ("MRI L-SPINE\nIMPRESSION: L4-5 disk itis and osteo my elitis.", "urgent"),
        ("MRI L-SPINE\nIMPRESSION: No compressive lesion. No disk itis.", "routine"),
    ],
)
def test_split_words_route_like_the_word(rules: RoutingRules, report: str, urgency: str) -> None:
    assert classify_report(report, rules).urgency == urgency


@pytest.mark.parametrize(
    ("report", "urgency", "referrals"),
    [
        # a preliminary read without headers, then the attending's addendum: both are read,
        # the addendum supersedes what it speaks of
        (
            "MRI C-spine. Cord compression at C5-6. ADDENDUM: Also note a T11 hemangioma.",
            "emergent",
            ["orthopedics"],
        ),
        (
            "PRELIMINARY: MRI C-spine. No cord compression. ADDENDUM (attending): On review,"
            " cord compression at C4-5.",
            "emergent",
            ["orthopedics"],
        ),
        (
            "PRELIMINARY: MRI T-spine. Possible cord compression at T7. Addendum (Dr Lee,"
            " attending): there is no cord compression.",
            "routine",
            [],
        ),
        # the same structure at the same level, read again: the addendum's reading stands
        (
            "PRELIMINARY: MRI L-spine. Degenerative endplate changes at L5-S1. ADDENDUM: Disc"
            " enhancement and endplate erosion at L5-S1, concerning for discitis.",
            "urgent",
            ["orthopedics"],
        ),
        # a critical finding of the first read is superseded only by the same concept
        (
            "PRELIMINARY: MRI C-spine. Cord compression at C5-6. ADDENDUM: Also compression of"
            " the exiting right C6 nerve root at C5-6.",
            "emergent",
            ["neurology", "orthopedics"],
        ),
        # the exam title of the first read asks, it finds nothing
        (
            "MRI C-SPINE FOR CORD COMPRESSION. Normal. ADDENDUM: T11 hemangioma.",
            "routine",
            [],
        ),
    ],
)
def test_a_first_read_and_its_addendum(
    rules: RoutingRules, report: str, urgency: str, referrals: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.urgency, decision.referrals) == (urgency, referrals), decision.explanations


@pytest.mark.parametrize(
    ("report", "critical", "review"),
    [
        # what the words just before "is ... artifact" name is no finding
        (
            "MRI T-SPINE. IMPRESSION: The apparent T7 abnormality is CSF flow artifact.",
            False,
            False,
        ),
        ("MRI C-SPINE. IMPRESSION: Cord signal abnormality, likely motion artefact.", False, False),
        # an artifact elsewhere in the report denies nothing
        (
            "MRI C-SPINE. IMPRESSION: Cord compression at C5-6; the T2 signal in the cord is"
            " motion artifact.",
            True,
            False,
        ),
        ("MRI BRAIN. IMPRESSION: Acute left MCA infarct. Motion artifact.", True, False),
    ],
)
def test_what_is_called_artifact_is_no_finding(
    rules: RoutingRules, report: str, critical: bool, review: bool
) -> None:
    decision = classify_report(report, rules)
    assert (decision.critical, decision.needs_review) == (critical, review), decision.explanations


@pytest.mark.parametrize(
    ("impression", "label"),
    [
        (
            "Focus of DWI hyperintensity with low ADC values in the left corona radiata",
            "acute_infarct",
        ),
        ("Right pontine DWI signal with corresponding ADC hypointensity", "acute_infarct"),
        ("New left occipital infarct", "acute_infarct"),
        ("Recent left thalamic infarct", "acute_infarct"),
        ("Evolving right MCA infarct", "acute_infarct"),
        ("Right temporal extradural haematoma with mass effect", "intracranial_hemorrhage"),
        ("Left frontal epidural hematoma", "intracranial_hemorrhage"),
        ("Intracerebral haematoma, right frontal lobe", "intracranial_hemorrhage"),
        ("Compressive cervical myelopathy at C4-5", "cord_compression"),
        ("Cord compression - severe at C5-6", "cord_compression"),
    ],
)
def test_spine_and_brain_critical_wordings_escalate(
    rules: RoutingRules, impression: str, label: str
) -> None:
    decision = classify_report(f"MRI. IMPRESSION: {impression}.", rules)
    assert decision.critical and label in _labels(decision), decision.explanations


@pytest.mark.parametrize(
    ("impression", "referrals"),
    [
        ("No new infarct. Chronic small vessel change.", []),
        ("Compared with the recent MRI, no acute infarct.", []),
        ("No low ADC to suggest infarct.", []),
        ("Non-compressive cervical myelopathy.", ["neurology"]),
        ("Noncompressive thoracic myelopathy.", ["neurology"]),
        ("Cord compression - none; cord signal normal.", []),
    ],
)
def test_spine_and_brain_look_alikes_do_not_escalate(
    rules: RoutingRules, impression: str, referrals: list[str]
) -> None:
    decision = classify_report(f"MRI. IMPRESSION: {impression}", rules)
    assert (decision.critical, decision.referrals) == (False, referrals), decision.explanations


def test_a_spinal_epidural_hematoma_is_no_intracranial_bleed(rules: RoutingRules) -> None:
    decision = classify_report(
        "MRI L-SPINE. IMPRESSION: Small postoperative dorsal epidural hematoma at L4-5 without"
        " mass effect.",
        rules,
    )
    assert not decision.critical


@pytest.mark.parametrize(
    ("report", "critical"),
    [
        (
            "MRI L-SPINE\nConus/cauda equina: Severe compression at L2-3 by a sequestered"
            " fragment.\nIMPRESSION: Sequestered L2-3 disc.",
            True,
        ),
        ("MRI C-SPINE. Opinion: Canal stenosis at C5/6 with cord compromise.", True),
        ("MRI C-SPINE. Opinion: Canal stenosis at C5/6 without cord compromise.", False),
        ("MRI BRAIN. IMPRESSION: Acute in farct in the left MCA territory.", True),
        ("MRI BRAIN. IMPRESSION: Old infarct in the left MCA territory.", False),
        # an IMPRESSION that points back routes the text it points to
        (
            "MRI C-SPINE\nCord: flattened at C6-7 with myelomalacia.\nIMPRESSION: As per"
            " checklist.",
            True,
        ),
        ("MRI C-SPINE\nC5-6: cord compressed.\nIMPRESSION: As detailed.", True),
    ],
)
def test_more_spine_and_brain_voices(rules: RoutingRules, report: str, critical: bool) -> None:
    assert classify_report(report, rules).critical is critical


@pytest.mark.parametrize(
    ("impression", "refers"),
    [
        ("As detailed.", True),
        ("Sequestered L4-5 disc fragment, as described.", True),
        ("See checklist above.", True),
        ("Degenerative disc disease, see level-by-level findings.", True),
        ("As per checklist.", True),
        ("Findings as described by the referring clinician are not seen.", False),
    ],
)
def test_an_impression_that_points_back(impression: str, refers: bool) -> None:
    from followup.nlp import _REFERS_BACK

    assert bool(_REFERS_BACK.search(impression)) is refers


@pytest.mark.parametrize(
    ("report", "critical"),
    [
        # the clinician's words without a header beside an IMPRESSION that denies them
        (
            "MRI C-SPINE. For evaluation of cord compression. IMPRESSION: No cord compression.",
            False,
        ),
        ("MRI C-SPINE\nQuestion of cord compression.\nIMPRESSION: No cord compression.", False),
        ("MRI T-SPINE. Epidural abscess follow-up. IMPRESSION: Resolved epidural abscess.", False),
        ("MRI BRAIN. Follow-up of recent infarct. IMPRESSION: No new infarct.", False),
        ("MRI BRAIN. 67M with recent stroke symptoms. IMPRESSION: No acute infarct.", False),
        ("MRI L-SPINE. Pt with CES symptoms. IMPRESSION: Mild facet arthropathy.", False),
        # a denial at another level denies nothing here; a silent IMPRESSION denies nothing
        ("MRI C-SPINE. C4-5: cord compressed. IMPRESSION: No cord compression at C6-7.", True),
        ("MRI C-SPINE. C4-5: cord compressed. IMPRESSION: Spondylosis.", True),
        # the syndrome named by imaging, the patient's symptoms further on
        (
            "MRI L-SPINE. IMPRESSION: Large extrusion; consistent with CES given the patient's"
            " symptoms.",
            True,
        ),
    ],
)
def test_unheaded_text_beside_a_denying_impression(
    rules: RoutingRules, report: str, critical: bool
) -> None:
    assert classify_report(report, rules).critical is critical


@pytest.mark.parametrize(
    ("report", "label"),
    [
        ("IMPRESSION: Severe R C5-6 foraminal stenosis.", "severe_stenosis"),
        ("IMPRESSION: Severe bilat L4-5 neuroforaminal narrowing.", "severe_stenosis"),
        ("FINDINGS: Marrow replacing lesion of the T9 body.\nIMPRESSION: T9 met.", "metastasis"),
        ("IMPRESSION: Solitary osseous met in L2.", "metastasis"),
    ],
)
def test_shorthand_of_the_impression_routes(rules: RoutingRules, report: str, label: str) -> None:
    decision = classify_report(report, rules)
    assert label in _labels(decision), decision.explanations
    assert not decision.needs_review, decision.explanations


def test_criteria_met_is_no_metastasis(rules: RoutingRules) -> None:
    decision = classify_report("IMPRESSION: Criteria met for mild canal stenosis at L4-5.", rules)
    assert "metastasis" not in _labels(decision)


@pytest.mark.parametrize(
    ("report", "referrals"),
    [
        ("IMPRESSION: Moderate joint effusion; otherwise normal knee MRI.", ["pain_management"]),
        ("IMPRESSION: Large effusion. Complex tear of the medial meniscus.", ["orthopedics"]),
        ("IMPRESSION: Small joint effusion. Otherwise normal knee.", []),
    ],
)
def test_a_joint_effusion_is_routed_only_alone(
    rules: RoutingRules, report: str, referrals: list[str]
) -> None:
    assert classify_report(report, rules).referrals == referrals


# --- MSK shorthand, eponyms and nerve acronyms of community and teleradiology reports ----------

MSK_SHORTHAND: list[tuple[str, str, str]] = [
    # (impression, routed label, family)
    ("Bucket handle MM tear, fragment in the notch.", "tendon_ligament_tear", "meniscus acronym"),
    ("PHMM radial tear.", "tendon_ligament_tear", "meniscus acronym"),
    ("LM posterior horn horizontal tear.", "tendon_ligament_tear", "meniscus acronym"),
    ("Complex tear of the menicus.", "tendon_ligament_tear", "misspelling"),
    ("FT SSP tear w/ 3 cm retraction.", "tendon_ligament_tear", "cuff acronym"),
    ("Subscap tendon FT tear with medial LHB dislocation.", "tendon_ligament_tear", "cuff acronym"),
    ("Full thickness tear of the supraspinatous tendon.", "tendon_ligament_tear", "misspelling"),
    ("FT glut med tear, retracted 2 cm.", "tendon_ligament_tear", "gluteal shorthand"),
    ("Torn anterosup labrum.", "tendon_ligament_tear", "position shorthand"),
    ("Bankart lesion and Hill-Sachs defect.", "tendon_ligament_tear", "eponym"),
    ("HAGL lesion.", "tendon_ligament_tear", "acronym"),
    ("ALPSA lesion.", "tendon_ligament_tear", "acronym"),
    ("Stener lesion.", "tendon_ligament_tear", "eponym"),
    ("Segond fracture.", "tendon_ligament_tear", "eponym"),
    ("Posterolateral corner injury.", "tendon_ligament_tear", "knee corner"),
    ("SL ligament tear with scapholunate widening.", "tendon_ligament_tear", "wrist acronym"),
    ("Unstable OCD lesion of the medial femoral condyle.", "osteonecrosis", "acronym"),
    ("OLT medial talar dome.", "osteonecrosis", "acronym"),
    ("SONK of the medial femoral condyle.", "osteonecrosis", "acronym"),
    ("Bilateral femoral head ON, ARCO II.", "osteonecrosis", "acronym and stage"),
    ("Freiberg infraction of the second metatarsal head.", "osteonecrosis", "eponym"),
    ("Kienbock disease, Lichtman stage II.", "osteonecrosis", "eponym without umlaut"),
    ("High-grade PTT of SSP, bursal surface.", "partial_tear_tendinosis", "acronym"),
    ("De Quervain tenosynovitis.", "partial_tear_tendinosis", "eponym"),
    ("ITB friction syndrome.", "partial_tear_tendinosis", "syndrome"),
    ("Jumper's knee.", "partial_tear_tendinosis", "syndrome"),
    ("CuTS.", "peripheral_nerve", "acronym"),
    ("CTS.", "peripheral_nerve", "acronym"),
    ("Ulnar n. compression at Guyon canal.", "peripheral_nerve", "n. for nerve"),
    ("PIN entrapment at the arcade of Frohse.", "peripheral_nerve", "nerve acronym"),
    ("Compression of the AIN.", "peripheral_nerve", "nerve acronym"),
    ("Meralgia paresthetica.", "peripheral_nerve", "eponym"),
    ("ACL not visualised, in keeping with complete rupture.", "tendon_ligament_tear", "no name"),
    ("Grade III MCL sprain.", "tendon_ligament_tear", "sprain grade"),
    ("ACL graft rupture.", "tendon_ligament_tear", "graft"),
    ("SLAP lesion type II.", "tendon_ligament_tear", "acronym and type"),
    ("Displaced meniscal flap in the superior recess.", "tendon_ligament_tear", "displaced flap"),
    ("Medial meniscal root tear with 4 mm extrusion.", "tendon_ligament_tear", "extruded meniscus"),
    ("The medial meniscus body is extruded.", "tendon_ligament_tear", "extruded meniscus"),
    ("Hamstring origin avulsion with 5 cm retraction.", "tendon_ligament_tear", "origin"),
    ("Gluteus minimus and medius full thickness tears.", "tendon_ligament_tear", "two tendons"),
    ("Peroneus brevis split tear.", "tendon_ligament_tear", "split tear"),
    ("LHBT rupture.", "tendon_ligament_tear", "acronym"),
    ("Intrasubstance tear of the SSP.", "partial_tear_tendinosis", "one-surface tear"),
    ("Articular-sided tear of the supraspinatus.", "partial_tear_tendinosis", "one-surface tear"),
    ("Thickened, T2 hyperintense ulnar nerve.", "peripheral_nerve", "signs before the nerve"),
    ("The ulnar nerve is thickened and T2 hyperintense.", "peripheral_nerve", "nerve is"),
    ("Septic knee.", "soft_tissue_joint_infection", "joint named for its infection"),
    ("Pyarthrosis of the knee.", "soft_tissue_joint_infection", "pyarthrosis"),
    ("Flexor tenosynovitis, likely infectious.", "soft_tissue_joint_infection", "after"),
    ("RA with erosions of the MCP joints.", "inflammatory_arthritis", "RA"),
    ("Active synovitis and bony erosions c/w RA.", "inflammatory_arthritis", "bony erosions"),
    ("Gouty erosions 1st MTP with tophus.", "inflammatory_arthritis", "gout"),
    ("MM tear PH.", "tendon_ligament_tear", "meniscus acronym, part after"),
    ("CET tear.", "tendon_ligament_tear", "elbow acronym"),
]


@pytest.mark.parametrize(("impression", "label", "family"), MSK_SHORTHAND)
def test_msk_shorthand_and_eponyms_route_without_review(
    rules: RoutingRules, impression: str, label: str, family: str
) -> None:
    decision = classify_report(f"MRI JOINT. IMPRESSION: {impression}", rules)
    assert label in _labels(decision), (family, decision.explanations)
    assert set(rules.rule(label).referrals) <= set(decision.referrals)
    assert not decision.critical
    assert not decision.needs_review, decision.explanations


@pytest.mark.parametrize(
    "impression",
    [
        "No FT SSP tear.",
        "No Hill-Sachs or Bankart lesion.",
        "No OCD.",
        "Ulnar n. normal. No CuTS.",
        "No PIN entrapment.",
        "Labral tear unlikely. RC intact.",
        "No menisical tear. No ligamnet tear.",
        "No septic knee.",
        "No erosions. RA not excluded clinically.",
    ],
)
def test_denied_msk_shorthand_routes_nothing(rules: RoutingRules, impression: str) -> None:
    decision = classify_report(f"MRI JOINT. IMPRESSION: {impression}", rules)
    assert (decision.referrals, decision.critical) == ([], False), decision.explanations


@pytest.mark.parametrize(
    ("report", "label"),
    [
        # a size before "tear" is no meniscus: the annular tear is still reviewed, not orthopedics
        ("MRI LUMBAR SPINE. IMPRESSION: 3 mm tear of the annulus at L4-5.", "tendon_ligament_tear"),
        # upper-case ON is a word in an all-caps report
        ("MRI HIPS. IMPRESSION: SMALL CYST IN THE FEMORAL HEAD ON THE LEFT.", "osteonecrosis"),
        # "cuts" and a displaced pin are no nerve findings
        (
            "MRI WRIST. IMPRESSION: Axial cuts through the carpal tunnel are normal.",
            "peripheral_nerve",
        ),
        ("MRI HAND. IMPRESSION: K-wire pin displaced from the metacarpal.", "peripheral_nerve"),
        # "complete tear of" something no rule knows is still reviewed, not orthopedics
        ("MRI L-SPINE. IMPRESSION: Complete tear of the annulus at L4-5.", "tendon_ligament_tear"),
        # disc words that describe a meniscus, an acetabulum or a muscle
        ("MRI KNEE. IMPRESSION: Medial meniscal root tear with extrusion.", "disc_herniation"),
        ("MRI HIP. IMPRESSION: Acetabular protrusion.", "disc_herniation"),
        ("MRI LEG. IMPRESSION: Muscle herniation through a fascial defect.", "disc_herniation"),
        ("MRI HIP. IMPRESSION: Synovial herniation pit of the femoral neck.", "disc_herniation"),
    ],
)
def test_msk_acronyms_keep_out_of_look_alikes(rules: RoutingRules, report: str, label: str) -> None:
    assert label not in _labels(classify_report(report, rules))


@pytest.mark.parametrize(
    "report",
    [
        # PLC in a spine report is the posterior ligamentous complex of an unstable fracture
        "MRI T-SPINE. IMPRESSION: Acute T11 fracture with PLC disruption.",
        "MRI T-SPINE. IMPRESSION: Disruption of the PLC with an acute T11 fracture.",
    ],
)
def test_plc_in_a_spine_report_stays_the_unstable_fracture(
    rules: RoutingRules, report: str
) -> None:
    assert classify_report(report, rules).critical


@pytest.mark.parametrize(
    "report",
    [
        "MRI C-SPINE\nhx: myelopathic sx, falls\nC6-7: lg central HNP w/ cord deformity\n"
        "C5-6: mild bulge\nimp: as above",
        "HISTORY: Neck pain.\nC6-7: cord compression by a large extrusion.",
        "INDICATION: Neck pain.\nC5/6: large extrusion flattening the cord.\nIMPRESSION: C5-6"
        " extrusion.",
    ],
)
def test_level_lines_under_a_history_header_are_findings(rules: RoutingRules, report: str) -> None:
    decision = classify_report(report, rules)
    assert decision.critical, decision.explanations


def test_a_history_line_is_not_a_level_line(rules: RoutingRules) -> None:
    decision = classify_report(
        "HISTORY: C6-7 cord compression in 2019, decompressed.\nIMPRESSION: Postoperative"
        " changes at C6-7 without residual stenosis.",
        rules,
    )
    assert not decision.critical, decision.explanations


@pytest.mark.parametrize(
    "report",
    [
        "Clinical details: Neck pain.\nReport: Large C5-6 extrusion compressing the spinal cord."
        "\nConclusion: Degenerative change.",
        "Indication: back pain\nFindings/Impression: L4-5 extrusion compressing the cauda equina.",
        "History: weakness\nInterpretation: Acute infarct in the left MCA territory.",
        "Hx: fall\nComment: Burst fracture of L1 with retropulsion.",
        "INDICATION: Neck pain.\nRESULTS: Flattening of the cord at C5-6.\nIMPRESSION: C5-6 disc.",
    ],
)
def test_findings_under_other_headers_are_read(rules: RoutingRules, report: str) -> None:
    assert classify_report(report, rules).critical


def test_a_report_named_inside_a_comparison_is_no_header(rules: RoutingRules) -> None:
    decision = classify_report(
        "COMPARISON: OUTSIDE REPORT: POSSIBLE CORD COMPRESSION.\nIMPRESSION: NO CORD COMPRESSION.",
        rules,
    )
    assert not decision.critical, decision.explanations


@pytest.mark.parametrize(
    ("report", "label"),
    [
        (
            "IMPRESSION: Acute right cerebellar haemorrhage, probably hypertensive.",
            "intracranial_hemorrhage",
        ),
        ("IMPRESSION: Acute left thalamic intraparenchymal hematoma.", "intracranial_hemorrhage"),
        (
            "IMPRESSION: Along the dorsal epidural space at T6-T8 there is a thin enhancing"
            " collection that is concerning for abscess.",
            "epidural_abscess",
        ),
        (
            "IMPRESSION: L2-3 extrusion, caudal equina roots crowded + compressed.",
            "cauda_equina_compression",
        ),
    ],
)
def test_critical_findings_across_a_statement_escalate(
    rules: RoutingRules, report: str, label: str
) -> None:
    decision = classify_report(report, rules)
    assert decision.critical, decision.explanations
    assert label in _labels(decision)


@pytest.mark.parametrize(
    "report",
    [
        "IMPRESSION: Epidural space is clear; left psoas abscess.",
        "IMPRESSION: The epidural space is normal, with a right paraspinal abscess.",
        "IMPRESSION: No abscess in the epidural space.",
        "FINDINGS: Epidural space: no abscess or collection.\nIMPRESSION: Discitis at L2-3.",
    ],
)
def test_an_abscess_beside_a_normal_epidural_space_does_not_escalate(
    rules: RoutingRules, report: str
) -> None:
    assert not classify_report(report, rules).critical


@pytest.mark.parametrize(
    ("report", "label", "urgency"),
    [
        ("IMPRESSION: Stable non-enhancing demyelinating lesions.", "demyelination", "routine"),
        (
            "IMPRESSION: Right femoral head avascular necrosis, pre-collapse.",
            "osteonecrosis",
            "routine",
        ),
        (
            "IMPRESSION: Right femoral head avascular necrosis with collapse.",
            "osteonecrosis_collapse",
            "urgent",
        ),
    ],
)
def test_a_prefix_denies_the_qualifier_not_the_finding(
    rules: RoutingRules, report: str, label: str, urgency: str
) -> None:
    decision = classify_report(report, rules)
    assert label in _labels(decision), decision.explanations
    assert decision.urgency == urgency


@pytest.mark.parametrize(
    ("report", "critical"),
    [
        # history or a follow-up request without a header, beside an IMPRESSION
        (
            "MRI L-SPINE. Known L1 burst fracture with retropulsion, treated. IMPRESSION: Stable.",
            False,
        ),
        ("MRI BRAIN. Stroke protocol. Prior SAH. IMPRESSION: No acute abnormality.", False),
        ("MRI BRAIN\nSAH follow-up.\nIMPRESSION: No residual hemorrhage.", False),
        ("MRI BRAIN. Hx of SDH. IMPRESSION: Normal.", False),
        # the clinician's question without a header; under FINDINGS or in the IMPRESSION a
        # question mark is the radiologist's hedge and escalates
        ("MRI L-SPINE. Query cauda equina syndrome. IMPRESSION: Normal lumbar spine.", False),
        ("MRI L-SPINE\n?cord compression.\nIMPRESSION: Normal lumbar spine.", False),
        ("MRI C-SPINE\nFINDINGS: ?cord compression at C5-6.\nIMPRESSION: Spondylosis.", True),
        ("MRI L-SPINE. IMPRESSION: Query cauda equina compression at L4-5.", True),
        # a comparison is no history: what it finds now escalates
        (
            "MRI C-SPINE. Compared with prior, new cord compression at C5-6. IMPRESSION:"
            " Spondylosis.",
            True,
        ),
        (
            "MRI T-SPINE. Previously seen epidural abscess, now larger. IMPRESSION: Discitis T6-7.",
            True,
        ),
        ("MRI C-SPINE. Prior MRI 2024. Cord compression at C5-6. IMPRESSION: Spondylosis.", True),
    ],
)
def test_unheaded_history_beside_an_impression_is_not_read_as_a_finding(
    rules: RoutingRules, report: str, critical: bool
) -> None:
    assert classify_report(report, rules).critical is critical


@pytest.mark.parametrize(
    ("report", "critical", "referrals"),
    [
        # a one-line report whose IMPRESSION points back: the title is only its first sentence
        (
            "MRI C-spine. Severe cord compression at C5-6 with T2 cord signal. Imp: as above.",
            True,
            ["orthopedics"],
        ),
        (
            "mri shoulder lt. FT tear of the infraspinatus tendon, 1.5 cm retraction."
            " imp: as above.",
            False,
            ["orthopedics"],
        ),
        # the title sentence itself still names the question, not a finding
        ("MRI C-SPINE: ?CORD COMPRESSION. Imp: as above.", False, []),
        ("MRI L-SPINE FOR CES. Imp: as above.", False, []),
    ],
)
def test_a_one_line_report_loses_only_its_title_sentence(
    rules: RoutingRules, report: str, critical: bool, referrals: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.critical, decision.referrals) == (critical, referrals), decision.explanations


@pytest.mark.parametrize(
    ("report", "critical"),
    [
        # the title states the finding: it is the report's text
        ("mri c-spine: cord compression C5-6. imp: as above.", True),
        ("MRI C-spine. Severe cord compression at C5-6 with T2 cord signal. Imp: as above.", True),
        # the title asks the clinician's question: no finding
        ("MRI C-SPINE: ?CORD COMPRESSION. Imp: as above.", False),
        ("MRI L SPINE FOR CES\nL4-5: mild bulge\nimp: as above", False),
        (
            "MRI C-SPINE ?CORD COMPRESSION\nC5-6: extrusion compressing the cord\nIMP: as above",
            True,
        ),
    ],
)
def test_an_impression_as_above_reads_the_title_only_when_it_asks_nothing(
    rules: RoutingRules, report: str, critical: bool
) -> None:
    assert classify_report(report, rules).critical is critical


@pytest.mark.parametrize(
    ("report", "urgency", "referrals"),
    [
        # a level line without a colon under a history header
        (
            "mri l spine w/o\nhx: back pain, cant void x1 day\nL3-4 huge central herniation,"
            " cauda equina compressed.\nimp: as above.",
            "emergent",
            ["orthopedics"],
        ),
        ("IMPRESSION: Displaced left subcapital femoral neck fracture.", "urgent", ["orthopedics"]),
        ("IMPRESSION: Partial-thickness gluteus medius tear.", "routine", ["pain_management"]),
        ("IMPRESSION: resolved L3-4 discitis, no abscess", "routine", []),
        (
            "IMPRESSION: Diffusion-weighted images are negative for restricted diffusion.",
            "routine",
            [],
        ),
        ("IMPRESSION: DWI is negative for restricted diffusion.", "routine", []),
        # test_v18's
        (
            "IMPRESSION: L4-5 extrusion.\nADDENDUM: Correction - the extrusion compresses the"
            " entire cauda equina at L4-5.",
            "emergent",
            ["orthopedics"],
        ),
        ("IMPRESSION: acute left cerebellar (PICA) infarct.", "emergent", ["neurology"]),
        (
            "IMPRESSION: clinical myelopathy not explained - no cord compression. mild C3-4"
            " facet arthropathy.",
            "routine",
            ["pain_management"],
        ),
        (
            "IMPRESSION: Cord compression at C5-6 with clinical myelopathy.",
            "emergent",
            ["orthopedics"],
        ),
        # test_v21's
        (
            "MRI brain.\nLeft occipital T1 bright focus with SWI blooming = acute-subacute"
            " haemorrhage, 12 mm.\nOpinion: No acute infarct. See findings.",
            "emergent",
            ["neurology"],
        ),
        (
            "Findings: T8/9 endplates eroded and enhancing.\nAssessment: Spondylodiscitis T8/9.",
            "urgent",
            ["orthopedics"],
        ),
        ("Opinion: OCL talar dome.", "routine", ["orthopedics"]),
        (
            "MRI cervical spine.\nMRI contraindicated.\nAssessment: No diagnostic images. CT"
            " myelography is suggested.",
            "routine",
            [],
        ),
        (
            "IMPRESSION: C6-7 extrusion flattening the cord. Degenerative disc disease, worst"
            " C6-7.",
            "emergent",
            ["orthopedics", "pain_management"],
        ),
    ],
)
def test_blind_set_families_read_after_scoring(
    rules: RoutingRules, report: str, urgency: str, referrals: list[str]
) -> None:
    decision = classify_report(report, rules)
    assert (decision.urgency, decision.referrals) == (urgency, referrals), decision.explanations


def test_a_pain_generator_not_determinable_suggests_spect_ct(rules: RoutingRules) -> None:
    decision = classify_report(
        "IMPRESSION: Bisegmental degenerative disc disease; pain generator not determinable on"
        " MRI.",
        rules,
    )
    assert (decision.referrals, decision.additional_testing) == (["pain_management"], ["SPECT/CT"])
