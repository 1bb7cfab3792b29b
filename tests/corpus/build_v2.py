"""Write tests/corpus/test_v2.jsonl and dev_v2.jsonl: reports labelled from DOMAIN.md's policy.

    .venv/bin/python tests/corpus/build_v2.py

Each bank entry is one finding sentence (or a FINDINGS / IMPRESSION pair) with the decision
DOMAIN.md §2-4 gives it, written from the policy and from how radiologists dictate, without
looking at rules/routing.yaml or at what the classifier outputs. Every entry is rendered in two
dictation styles (structured with headers, numbered impression, lower-case headers, unheaded,
British "Conclusion", bare headers on their own line), with normal statements of its body
region around it. The TEST bank was written and committed before the issue-18 rule changes;
the DEV bank uses other wordings and is the one the rules are tuned on. Keep the TEST bank
untouched.

Labelling choices where the policy leaves room (stated once here, applied throughout):
- a tear of a meniscus, labrum, ligament or a full-thickness tendon tear → orthopedics; a
  partial-thickness tear, tendinosis, bursitis, adhesive capsulitis and a joint effusion alone →
  pain management (DOMAIN.md's row, as its blind authors read it; the effusions were first
  labelled ordering provider only and relabelled); a small effusion, a Baker cyst → ordering
  provider only;
- an incomplete study (terminated, aborted, claustrophobia, limited, motion) → the
  nondiagnostic route: additional testing CT myelography (DOMAIN.md keeps SPECT/CT for
  localization; relabelled in both banks after they were first written), no review flag;
- a critical finding affirmed only in FINDINGS is critical; non-critical FINDINGS-only
  findings are not routed (IMPRESSION is authoritative);
- infection anywhere → orthopedics, urgent, never rheumatology;
- a degenerative finding (herniation, osteophyte, spondylosis, facet hypertrophy) named in the
  same statement as, or only at the level of, a cord or cauda equina compression or a severe
  stenosis is its cause and routes with it (orthopedics), not also to pain management (DOMAIN.md's
  pain-management row is for findings without neural contact; relabelled in both banks after
  they were first written);
- abnormal words (mass, lesion, edema, collection, tear, ...) that no policy row covers → review.
"""

from __future__ import annotations

import json
from itertools import cycle
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTING = ["CT myelography"]


def expect(
    urgency: str = "routine",
    referrals: tuple[str, ...] = (),
    testing: list[str] | None = None,
    review: bool = False,
) -> dict[str, Any]:
    return {
        "urgency": urgency,
        "critical": urgency == "emergent",
        "referrals": sorted(referrals),
        "additional_testing": sorted(testing or []),
        "needs_review": review,
    }


CRIT_ORTHO = expect("emergent", ("orthopedics",))
CRIT_NEURO = expect("emergent", ("neurology",))
URG_ORTHO = expect("urgent", ("orthopedics",))
URG_NEURO = expect("urgent", ("neurology",))
ORTHO = expect(referrals=("orthopedics",))
NEURO = expect(referrals=("neurology",))
PAIN = expect(referrals=("pain_management",))
RHEUM = expect(referrals=("rheumatology",))
NONE = expect()
REVIEW = expect(review=True)
INCOMPLETE = expect(testing=TESTING)

EXAMS = {
    "spine": ["MRI lumbar spine without contrast", "MRI cervical spine", "MRI thoracic spine"],
    "brain": ["MRI brain without and with contrast", "MRI head"],
    "joint": ["MRI right knee", "MRI left shoulder", "MRI right hip", "MRI left ankle"],
    "nerve": ["MR neurography", "MRI left elbow", "MRI right wrist"],
}
INDICATIONS = {
    "spine": ["Back pain radiating to the leg.", "Neck pain with arm numbness.", "Pain."],
    "brain": ["Headache and dizziness.", "Numbness of the left hand.", "Vertigo."],
    "joint": ["Pain after a fall.", "Pain and locking.", "Chronic pain."],
    "nerve": ["Numbness and tingling.", "Weakness and paresthesias.", "Pain and numbness."],
}
NORMALS = {
    "spine": [
        "Vertebral body heights are maintained.",
        "Alignment is normal.",
        "The conus terminates normally at L1.",
        "Paraspinal soft tissues are unremarkable.",
    ],
    "brain": [
        "Ventricles are normal in size.",
        "No midline shift.",
        "Major flow voids are preserved.",
        "The orbits are unremarkable.",
    ],
    "joint": [
        "Articular cartilage is preserved.",
        "The visualized muscles are normal in bulk.",
        "Alignment is anatomic.",
        "No loose body.",
    ],
    "nerve": [
        "The visualized muscles are normal in bulk.",
        "Osseous structures are unremarkable.",
        "Alignment is anatomic.",
        "Subcutaneous tissues are unremarkable.",
    ],
}


def _structured(finding: str, region: str, n: int) -> str:
    return (
        f"EXAM: {EXAMS[region][n % len(EXAMS[region])]}\n"
        f"INDICATION: {INDICATIONS[region][n % 3]}\n"
        "TECHNIQUE: Multiplanar multisequence imaging.\n"
        f"FINDINGS: {NORMALS[region][n % 4]} {finding}\n"
        f"IMPRESSION: {finding}"
    )


def _numbered(finding: str, region: str, n: int) -> str:
    return f"IMPRESSION:\n1. {finding}\n2. {NORMALS[region][(n + 1) % 4]}"


def _lower_headers(finding: str, region: str, n: int) -> str:
    return f"Findings: {NORMALS[region][(n + 2) % 4]}\nImpression: {finding}"


def _unheaded(finding: str, region: str, n: int) -> str:
    return f"{finding} {NORMALS[region][(n + 3) % 4]}"


def _british(finding: str, region: str, n: int) -> str:
    return (
        f"Clinical details: {INDICATIONS[region][(n + 1) % 3]}\n"
        f"Findings:\n{NORMALS[region][n % 4]}\n"
        f"Conclusion:\n{finding}"
    )


def _bare_headers(finding: str, region: str, n: int) -> str:
    return f"FINDINGS\n{NORMALS[region][(n + 1) % 4]}\n\nIMPRESSION\n{finding}"


STYLES = {
    "structured": _structured,
    "numbered": _numbered,
    "lower_headers": _lower_headers,
    "unheaded": _unheaded,
    "british": _british,
    "bare_headers": _bare_headers,
}

# (family, region, sentence, expected)
Entry = tuple[str, str, str, dict[str, Any]]
# (region, FINDINGS text, IMPRESSION text, expected): critical only in FINDINGS
Split = tuple[str, str, str, dict[str, Any]]
# (family, region, full report text, expected): the layout is the point
Whole = tuple[str, str, str, dict[str, Any]]

TEST_ENTRIES: list[Entry] = [
    # --- cord compression
    ("noun_form", "spine", "Severe C5-6 canal stenosis with cord flattening.", CRIT_ORTHO),
    (
        "reversed_order",
        "spine",
        "A large C6-7 extrusion causes flattening of the spinal cord.",
        CRIT_ORTHO,
    ),
    (
        "verb_form",
        "spine",
        "The central T7-8 extrusion indents and compresses the cord.",
        CRIT_ORTHO,
    ),
    ("noun_form", "spine", "Cord deformity at C4-5 from a broad central protrusion.", CRIT_ORTHO),
    (
        "reversed_order",
        "spine",
        "Deformity of the cord at C3-4 due to a large disc extrusion.",
        CRIT_ORTHO,
    ),
    (
        "verb_form",
        "spine",
        "At C5-6 the cord is flattened and displaced posteriorly by a central extrusion.",
        CRIT_ORTHO,
    ),
    ("misspelling", "spine", "Severe stenosis at C6-7 with spinal cord compresion.", CRIT_ORTHO),
    ("misspelling", "spine", "Large C5-6 extrusion with cord compressoin.", CRIT_ORTHO),
    ("abbreviation", "spine", "Metastatic disease at T6 with MESCC.", CRIT_ORTHO),
    ("abbreviation", "spine", "Severe C5-6 canal stenosis w/ cord compression.", CRIT_ORTHO),
    (
        "hedged",
        "spine",
        "Findings are suspicious for early cord compression at C6-7.",
        CRIT_ORTHO,
    ),
    ("hedged", "spine", "Possible mild flattening of the cord at T10-11.", CRIT_ORTHO),
    ("hedged", "spine", "Cord compression at C4-5 is not excluded.", CRIT_ORTHO),
    ("negated", "spine", "No cord flattening or compression at any level.", NONE),
    ("negated", "spine", "The spinal cord is not compressed.", NONE),
    ("negated", "spine", "Mild C5-6 canal narrowing without deforming the cord.", NONE),
    ("negated", "spine", "There is no deformity of the cord.", NONE),
    (
        "verb_form",
        "spine",
        "A dorsal epidural hematoma at T3-4 compresses the cord.",
        CRIT_ORTHO,
    ),
    ("noun_form", "spine", "Conus compression by a sequestered L1-2 fragment.", CRIT_ORTHO),
    ("reversed_order", "spine", "Compression of the conus medullaris at T12-L1.", CRIT_ORTHO),
    (
        "verb_form",
        "spine",
        "The hemicord is effaced and compressed on the left at C5-6.",
        CRIT_ORTHO,
    ),
    # --- cauda equina
    (
        "standard",
        "spine",
        "Massive L4-5 extrusion with compression of the cauda equina.",
        CRIT_ORTHO,
    ),
    ("verb_form", "spine", "A sequestered L3-4 fragment compresses the cauda equina.", CRIT_ORTHO),
    (
        "reversed_order",
        "spine",
        "Cauda equina compression at L5-S1 by a large central extrusion.",
        CRIT_ORTHO,
    ),
    ("verb_form", "spine", "The cauda equina is severely compressed at L4-5.", CRIT_ORTHO),
    (
        "noun_form",
        "spine",
        "Severe crowding and compression of the cauda equina nerve roots at L3-4.",
        CRIT_ORTHO,
    ),
    ("misspelling", "spine", "Large L4-5 extrusion compressing the cauda equine.", CRIT_ORTHO),
    ("misspelling", "spine", "Large L5-S1 extrusion with cuada equina compression.", CRIT_ORTHO),
    (
        "abbreviation",
        "spine",
        "Massive L4-5 extrusion; imaging findings consistent with CES.",
        CRIT_ORTHO,
    ),
    ("hedged", "spine", "Possible compression of the cauda equina at L2-3.", CRIT_ORTHO),
    ("negated", "spine", "No compression of the cauda equina.", NONE),
    (
        "syndrome_hedge",
        "spine",
        "Cauda equina syndrome is not excluded clinically, but no compressive lesion is seen.",
        NONE,
    ),
    (
        "syndrome_hedge",
        "spine",
        "Clinical concern for cauda equina syndrome; the thecal sac and nerve roots are normal.",
        NONE,
    ),
    (
        "syndrome_hedge",
        "spine",
        "No imaging correlate for the suspected cauda equina syndrome.",
        NONE,
    ),
    (
        "syndrome_hedge",
        "spine",
        "Symptoms of cauda equina syndrome reported; no compression of the cauda equina or conus.",
        NONE,
    ),
    # --- epidural abscess
    (
        "standard",
        "spine",
        "Rim-enhancing dorsal epidural collection at L3-4, compatible with abscess.",
        CRIT_ORTHO,
    ),
    ("reversed_order", "spine", "Abscess in the ventral epidural space from C5 to C7.", CRIT_ORTHO),
    (
        "noun_form",
        "spine",
        "Peripherally enhancing collection within the epidural space at T9-10.",
        CRIT_ORTHO,
    ),
    ("abbreviation", "spine", "Discitis at L2-3 with SEA extending to L4.", CRIT_ORTHO),
    ("misspelling", "spine", "Dorsal epidural absess at L4-5.", CRIT_ORTHO),
    (
        "hedged",
        "spine",
        "Small epidural collection at L5-S1, possibly an early abscess.",
        CRIT_ORTHO,
    ),
    ("negated", "spine", "No epidural abscess or paraspinal collection.", NONE),
    (
        "verb_form",
        "spine",
        "An enhancing epidural phlegmon narrows the canal at T11-12.",
        CRIT_ORTHO,
    ),
    # --- unstable fracture
    ("standard", "spine", "Acute L1 burst fracture with 5 mm retropulsion.", CRIT_ORTHO),
    (
        "verb_form",
        "spine",
        "Acute T12 fracture with a retropulsed fragment narrowing the canal.",
        CRIT_ORTHO,
    ),
    (
        "noun_form",
        "spine",
        "Acute L2 fracture with posterior ligamentous complex disruption.",
        CRIT_ORTHO,
    ),
    ("abbreviation", "spine", "Disruption of the PLC with an acute T11 fracture.", CRIT_ORTHO),
    ("abbreviation", "spine", "Acute L1 burst fx with retropulsion.", CRIT_ORTHO),
    ("misspelling", "spine", "Acute L3 burts fracture.", CRIT_ORTHO),
    (
        "hedged",
        "spine",
        "Acute T8 compression fracture; retropulsion cannot be excluded.",
        CRIT_ORTHO,
    ),
    ("negated", "spine", "Chronic L1 compression deformity without retropulsion.", ORTHO),
    (
        "standard",
        "spine",
        "Unstable C6-7 fracture-dislocation with jumped facets.",
        CRIT_ORTHO,
    ),
    # --- acute infarct
    (
        "standard",
        "brain",
        "Restricted diffusion in the left MCA territory, compatible with acute infarct.",
        CRIT_NEURO,
    ),
    ("noun_form", "brain", "Acute left thalamic infarction.", CRIT_NEURO),
    ("abbreviation", "brain", "Small acute right PCA territory CVA.", CRIT_NEURO),
    (
        "abbreviation",
        "brain",
        "Focus of DWI hyperintensity with low ADC in the right corona radiata, consistent with"
        " an acute lacunar infarct.",
        CRIT_NEURO,
    ),
    ("misspelling", "brain", "Acute infract in the right cerebellar hemisphere.", CRIT_NEURO),
    (
        "reversed_order",
        "brain",
        "Infarct in the left frontal lobe, acute, with restricted diffusion.",
        CRIT_NEURO,
    ),
    (
        "hedged",
        "brain",
        "Subtle diffusion restriction in the left insula may represent early ischemia.",
        CRIT_NEURO,
    ),
    ("negated", "brain", "No acute infarct, hemorrhage or mass.", NONE),
    ("negated", "brain", "No restricted diffusion to suggest acute ischemia.", NONE),
    (
        "verb_form",
        "brain",
        "Multiple small foci of restricted diffusion in both hemispheres, suggesting embolic"
        " infarcts.",
        CRIT_NEURO,
    ),
    ("noun_form", "brain", "Acute stroke in the left pons.", CRIT_NEURO),
    # --- intracranial hemorrhage
    ("standard", "brain", "Acute left parietal intraparenchymal hemorrhage.", CRIT_NEURO),
    ("abbreviation", "brain", "Small SAH in the right sylvian fissure.", CRIT_NEURO),
    ("abbreviation", "brain", "Thin left convexity SDH measuring 4 mm.", CRIT_NEURO),
    ("misspelling", "brain", "Acute subdural hemorhage over the right convexity.", CRIT_NEURO),
    ("british", "brain", "Acute haemorrhage in the left basal ganglia.", CRIT_NEURO),
    ("reversed_order", "brain", "Hemorrhage within the right occipital lobe, acute.", CRIT_NEURO),
    (
        "hedged",
        "brain",
        "Susceptibility in the left frontal sulci, possibly subarachnoid blood.",
        CRIT_NEURO,
    ),
    ("negated", "brain", "No intracranial hemorrhage.", NONE),
    ("noun_form", "brain", "Acute subdural hematoma along the falx.", CRIT_NEURO),
    (
        "verb_form",
        "brain",
        "Blood layers in the occipital horns of the lateral ventricles.",
        CRIT_NEURO,
    ),
    # --- negation scope
    (
        "negation_scope",
        "spine",
        "Multilevel spondylosis (no cord compression) and severe right foraminal stenosis at C6-7.",
        ORTHO,
    ),
    (
        "negation_scope",
        "spine",
        "No fracture; large left L5-S1 extrusion compresses the left S1 nerve root.",
        NEURO,
    ),
    (
        "negation_scope",
        "spine",
        "No cord compression and a severe left C5-6 foraminal stenosis.",
        ORTHO,
    ),
    (
        "negation_scope",
        "spine",
        "Without fracture and with a grade 1 anterolisthesis of L4 on L5.",
        ORTHO,
    ),
    (
        "negation_scope",
        "spine",
        "No stenosis, with a small right paracentral L4-5 protrusion.",
        PAIN,
    ),
    ("negation_scope", "spine", "No herniation or stenosis at L3-4 or L4-5.", NONE),
    (
        "negation_scope",
        "brain",
        "No acute infarct (old left occipital infarct) and multiple periventricular and"
        " juxtacortical demyelinating lesions.",
        NEURO,
    ),
    (
        "negation_scope",
        "joint",
        "No meniscal tear; complete tear of the anterior cruciate ligament.",
        ORTHO,
    ),
    ("negation_scope", "joint", "No rotator cuff tear, but adhesive capsulitis.", PAIN),
    (
        "negation_scope",
        "spine",
        "Without cord compression; T2 hyperintense intramedullary lesion at C3 compatible with"
        " demyelination.",
        NEURO,
    ),
    # --- incomplete studies
    (
        "incomplete_study",
        "spine",
        "Examination terminated after the sagittal sequences because of claustrophobia; no gross"
        " abnormality on the images obtained.",
        INCOMPLETE,
    ),
    ("incomplete_study", "spine", "Study aborted at the patient's request.", INCOMPLETE),
    (
        "incomplete_study",
        "spine",
        "Limited examination due to patient motion; no large disc herniation.",
        INCOMPLETE,
    ),
    (
        "incomplete_study",
        "spine",
        "Severely motion-degraded study; stenosis cannot be assessed.",
        INCOMPLETE,
    ),
    ("incomplete_study", "spine", "The patient could not complete the examination.", INCOMPLETE),
    (
        "incomplete_study",
        "spine",
        "Only localizer and sagittal T2 images were obtained; the exam is incomplete.",
        INCOMPLETE,
    ),
    (
        "incomplete_study",
        "spine",
        "Claustrophobic patient; the study was stopped early.",
        INCOMPLETE,
    ),
    # --- infection at joints and soft tissue
    ("infection", "joint", "Septic right sacroiliitis with an iliacus abscess.", URG_ORTHO),
    (
        "infection",
        "joint",
        "Septic arthritis of the left knee with a large effusion and synovial enhancement.",
        URG_ORTHO,
    ),
    ("infection", "joint", "Intramuscular abscess in the right vastus lateralis.", URG_ORTHO),
    (
        "infection",
        "joint",
        "Findings concerning for necrotizing fasciitis of the left thigh.",
        URG_ORTHO,
    ),
    ("infection", "joint", "Osteomyelitis of the calcaneus beneath a heel ulcer.", URG_ORTHO),
    (
        "infection",
        "joint",
        "Infectious sacroiliitis on the left with surrounding myositis.",
        URG_ORTHO,
    ),
    ("infection", "joint", "Septic glenohumeral arthritis.", URG_ORTHO),
    (
        "infection",
        "joint",
        "Complex fluid collection in the prepatellar bursa with rim enhancement, compatible with"
        " septic bursitis.",
        URG_ORTHO,
    ),
    # --- inflammation and the milder joint findings
    ("inflammatory", "joint", "Erosive synovitis of the second and third MCP joints.", RHEUM),
    (
        "inflammatory",
        "spine",
        "Bilateral active sacroiliitis with subchondral bone marrow edema.",
        RHEUM,
    ),
    (
        "inflammatory",
        "joint",
        "Synovitis and marginal erosions at the ulnar styloid, compatible with rheumatoid"
        " arthritis.",
        RHEUM,
    ),
    (
        "inflammatory",
        "joint",
        "Tenosynovitis and erosions of the MTP joints suggesting inflammatory arthritis.",
        RHEUM,
    ),
    ("joint_mild", "joint", "Adhesive capsulitis of the right shoulder.", PAIN),
    (
        "joint_mild",
        "joint",
        "Thickening of the coracohumeral ligament and rotator interval scarring, in keeping with"
        " adhesive capsulitis.",
        PAIN,
    ),
    ("joint_mild", "joint", "Trochanteric bursitis bilaterally.", PAIN),
    ("joint_mild", "joint", "Supraspinatus tendinosis without tear.", PAIN),
    (
        "joint_mild",
        "joint",
        "Low-grade partial-thickness articular-surface tear of the supraspinatus.",
        PAIN,
    ),
    ("joint_mild", "joint", "Small knee joint effusion, otherwise normal.", NONE),
    ("joint_mild", "joint", "Moderate glenohumeral joint effusion.", PAIN),
    ("joint_mild", "joint", "Gluteus medius tendinosis with peritendinous edema.", PAIN),
    ("joint_mild", "joint", "Subacromial-subdeltoid bursitis.", PAIN),
    # --- joints to orthopedics
    (
        "joint",
        "joint",
        "Full-thickness, full-width tear of the supraspinatus tendon with 2 cm retraction.",
        ORTHO,
    ),
    ("joint", "joint", "Complete tear of the anterior cruciate ligament.", ORTHO),
    ("joint", "joint", "ACL rupture with pivot-shift bone contusions.", ORTHO),
    (
        "joint",
        "joint",
        "Bucket-handle tear of the medial meniscus with a displaced fragment in the"
        " intercondylar notch.",
        ORTHO,
    ),
    ("joint", "joint", "Displaced flap tear of the lateral meniscus.", ORTHO),
    (
        "joint",
        "joint",
        "Anterosuperior labral tear with cam-type femoroacetabular impingement.",
        ORTHO,
    ),
    ("joint", "joint", "Osteochondral lesion of the medial talar dome.", ORTHO),
    ("joint", "joint", "Avascular necrosis of the right femoral head without collapse.", ORTHO),
    (
        "joint",
        "joint",
        "Osteonecrosis of the left femoral head with subchondral collapse.",
        URG_ORTHO,
    ),
    ("joint", "joint", "AVN of the lunate with fragmentation and collapse.", URG_ORTHO),
    ("joint", "joint", "Stress fracture of the second metatarsal shaft.", ORTHO),
    ("joint", "joint", "Displaced fracture of the scaphoid waist.", URG_ORTHO),
    ("joint", "joint", "Complete rupture of the Achilles tendon with a 3 cm gap.", ORTHO),
    ("joint", "joint", "Full-thickness tear of the distal biceps tendon, retracted 4 cm.", ORTHO),
    ("joint", "joint", "High-grade tear of the ulnar collateral ligament of the elbow.", ORTHO),
    ("joint", "joint", "Complete tear of the anterior talofibular ligament.", ORTHO),
    ("joint", "joint", "Tear of the posterior labrum (reverse Bankart lesion).", ORTHO),
    (
        "joint",
        "joint",
        "Horizontal oblique tear of the posterior horn of the medial meniscus extending to the"
        " inferior articular surface.",
        ORTHO,
    ),
    ("joint", "joint", "Insufficiency fracture of the medial tibial plateau.", ORTHO),
    ("joint", "joint", "Nondisplaced fracture of the lateral tibial plateau.", ORTHO),
    ("joint", "joint", "Central perforation tear of the TFCC.", ORTHO),
    ("joint", "joint", "Full thickness RC tear with fatty atrophy of the supraspinatus.", ORTHO),
    ("joint", "joint", "Grade III MCL tear.", ORTHO),
    # --- peripheral nerves
    (
        "nerve",
        "nerve",
        "Enlargement and T2 hyperintensity of the ulnar nerve at the cubital tunnel, compatible"
        " with ulnar neuritis.",
        NEURO,
    ),
    (
        "nerve",
        "nerve",
        "Flattening of the median nerve in the carpal tunnel with increased signal proximally,"
        " consistent with carpal tunnel syndrome.",
        NEURO,
    ),
    (
        "nerve",
        "nerve",
        "Compression of the tibial nerve in the tarsal tunnel by a ganglion cyst.",
        NEURO,
    ),
    (
        "nerve",
        "nerve",
        "Diffuse edema of the supraspinatus and infraspinatus muscles, compatible with"
        " Parsonage-Turner syndrome.",
        NEURO,
    ),
    (
        "nerve",
        "nerve",
        "Thickening and enhancement of the left brachial plexus trunks, compatible with"
        " brachial plexitis.",
        NEURO,
    ),
    (
        "nerve",
        "nerve",
        "Right lumbosacral plexopathy with enlarged, T2 hyperintense sacral plexus elements.",
        NEURO,
    ),
    ("nerve", "nerve", "Schwannoma along the right sciatic nerve.", NEURO),
    (
        "nerve",
        "nerve",
        "A 2 cm peripheral nerve sheath tumor arising from the common peroneal nerve.",
        NEURO,
    ),
    (
        "nerve",
        "nerve",
        "Entrapment of the common peroneal nerve at the fibular head with denervation edema of"
        " the tibialis anterior.",
        NEURO,
    ),
    (
        "nerve",
        "nerve",
        "Suprascapular nerve compression by a paralabral cyst at the spinoglenoid notch.",
        NEURO,
    ),
    ("nerve", "nerve", "Median neuropathy at the wrist.", NEURO),
    ("nerve", "nerve", "Radial nerve entrapment at the arcade of Frohse.", NEURO),
    ("nerve", "nerve", "Hourglass constriction of the anterior interosseous nerve.", NEURO),
    # --- abnormal language no policy row covers
    ("unrouted", "joint", "Indeterminate 3 cm enhancing mass in the left vastus medialis.", REVIEW),
    (
        "unrouted",
        "spine",
        "Incidental 2 cm lesion in the right lobe of the liver, incompletely characterized.",
        REVIEW,
    ),
    ("unrouted", "joint", "Bone marrow edema in the lateral femoral condyle.", REVIEW),
    ("unrouted", "spine", "Fluid collection in the surgical bed at L4-5.", REVIEW),
    ("unrouted", "joint", "Expansile lesion of the right iliac bone.", REVIEW),
    ("unrouted", "spine", "Large pelvic mass displacing the bladder.", REVIEW),
    # --- normal and incidental
    ("normal", "spine", "Normal MRI of the lumbar spine.", NONE),
    ("normal", "spine", "No significant abnormality.", NONE),
    ("normal", "brain", "Normal MRI of the brain.", NONE),
    ("normal", "brain", "No acute intracranial abnormality.", NONE),
    ("normal", "joint", "Normal MRI of the right knee.", NONE),
    ("normal", "joint", "No internal derangement of the left shoulder.", NONE),
    ("normal", "joint", "The menisci, cruciate and collateral ligaments are intact.", NONE),
    (
        "normal",
        "nerve",
        "The median nerve is normal in size and signal throughout the carpal tunnel.",
        NONE,
    ),
    ("normal", "nerve", "No brachial plexus abnormality.", NONE),
    ("incidental", "spine", "Small L3 vertebral hemangioma, otherwise normal.", NONE),
    ("incidental", "spine", "Incidental Tarlov cyst at S2.", NONE),
    ("incidental", "joint", "Small Baker cyst; otherwise normal knee.", NONE),
    ("incidental", "brain", "Mild chronic microvascular ischemic changes.", NONE),
    ("incidental", "brain", "Developmental venous anomaly in the right frontal lobe.", NONE),
    ("incidental", "joint", "Small bone island in the femoral neck.", NONE),
    # --- the spine and brain routing rows
    (
        "standard",
        "spine",
        "Right paracentral L5-S1 extrusion abutting the traversing right S1 nerve root.",
        NEURO,
    ),
    (
        "standard",
        "spine",
        "The left L5 nerve root is displaced by a far lateral L5-S1 protrusion.",
        NEURO,
    ),
    (
        "standard",
        "spine",
        "Foraminal disc protrusion at L4-5 impinges on the exiting left L4 root.",
        NEURO,
    ),
    (
        "standard",
        "spine",
        "Grade 1 anterolisthesis of L5 on S1 with bilateral pars defects.",
        ORTHO,
    ),
    ("standard", "spine", "Severe central canal stenosis at L4-5.", ORTHO),
    ("standard", "spine", "Severe bilateral neural foraminal narrowing at C5-6.", ORTHO),
    ("standard", "spine", "Chronic mild compression deformity of T12.", ORTHO),
    ("standard", "spine", "Acute L2 compression fracture with marrow edema.", URG_ORTHO),
    ("standard", "spine", "Small central L4-5 disc protrusion without nerve root contact.", PAIN),
    ("standard", "spine", "Multilevel disc desiccation and loss of disc height.", PAIN),
    ("standard", "spine", "Type 1 Modic changes at L5-S1.", PAIN),
    ("standard", "spine", "Annular fissure at L4-5.", PAIN),
    ("standard", "spine", "Moderate bilateral facet arthropathy at L4-5 and L5-S1.", PAIN),
    ("standard", "spine", "Fatty corner lesions at multiple thoracic levels.", RHEUM),
    ("standard", "spine", "Fat metaplasia along both SI joints.", RHEUM),
    (
        "standard",
        "spine",
        "Marrow-replacing lesion in the T9 vertebral body, suspicious for metastasis.",
        URG_ORTHO,
    ),
    ("standard", "spine", "Discitis-osteomyelitis at L3-4 without epidural extension.", URG_ORTHO),
    (
        "standard",
        "brain",
        "Multiple periventricular and juxtacortical T2 lesions compatible with demyelinating"
        " disease.",
        NEURO,
    ),
    ("standard", "brain", "Several demyelinating lesions, two of which enhance.", URG_NEURO),
    ("standard", "spine", "C5-T2 syrinx.", NEURO),
    (
        "standard",
        "spine",
        "Longitudinally extensive T2 hyperintensity within the thoracic cord, compatible with"
        " transverse myelitis.",
        NEURO,
    ),
    ("standard", "spine", "Mild disc bulge at L4-5.", NONE),
    ("standard", "spine", "Mild canal stenosis at C5-6.", NONE),
]

TEST_SPLITS: list[Split] = [
    (
        "spine",
        "At C5-6 a disc osteophyte complex flattens the cord.",
        "Multilevel cervical spondylosis.",
        expect("emergent", ("orthopedics", "pain_management")),
    ),
    (
        "spine",
        "L4-5: large central extrusion compressing the cauda equina.",
        "Multilevel lumbar disc degeneration.",
        expect("emergent", ("orthopedics", "pain_management")),
    ),
    (
        "spine",
        "There is a rim-enhancing epidural collection posterior to the thecal sac at L2-3.",
        "Discitis-osteomyelitis at L2-3.",
        CRIT_ORTHO,
    ),
    (
        "brain",
        "Restricted diffusion in the right caudate head.",
        "Chronic small vessel ischemic changes.",
        CRIT_NEURO,
    ),
    (
        "spine",
        "T12: acute burst fracture with retropulsion of a fragment narrowing the canal by 40%.",
        "Acute T12 compression fracture.",
        CRIT_ORTHO,
    ),
    (
        "spine",
        "The cord is deformed by a right paracentral C6-7 extrusion.",
        "Right paracentral C6-7 extrusion.",
        CRIT_ORTHO,
    ),
    (
        "brain",
        "Small acute subdural hematoma along the left tentorium.",
        "No acute territorial infarct.",
        CRIT_NEURO,
    ),
    (
        "spine",
        "Conus: compressed by an intradural mass at T12-L1.",
        "Intradural mass at T12-L1.",
        expect("emergent", ("orthopedics",), review=True),
    ),
]

TEST_WHOLE: list[Whole] = [
    (
        "addendum",
        "spine",
        "IMPRESSION: Mild multilevel cervical spondylosis.\n"
        "ADDENDUM: On review of the axial images there is cord flattening at C5-6.",
        expect("emergent", ("orthopedics", "pain_management")),
    ),
    (
        "history_only",
        "spine",
        "INDICATION: Rule out cord compression.\nIMPRESSION: Normal MRI of the cervical spine.",
        NONE,
    ),
    (
        "history_only",
        "spine",
        "CLINICAL HISTORY: Cauda equina syndrome symptoms.\nIMPRESSION: No significant"
        " abnormality.",
        NONE,
    ),
    (
        "history_only",
        "spine",
        "HISTORY: Prior epidural abscess, treated.\nIMPRESSION: Resolution of the previously seen"
        " epidural collection. No residual abscess.",
        NONE,
    ),
    (
        "history_only",
        "spine",
        "INDICATION: Fall. Evaluate for burst fracture.\nIMPRESSION: No fracture.",
        NONE,
    ),
    (
        "history_only",
        "brain",
        "CLINICAL INFORMATION: Sudden aphasia, stroke protocol.\nIMPRESSION: No acute infarct or"
        " hemorrhage.",
        NONE,
    ),
    (
        "history_only",
        "joint",
        "History: ACL tear 2019, reconstructed.\nImpression: Intact ACL graft.",
        NONE,
    ),
    (
        "history_only",
        "spine",
        "INDICATION: Known metastatic breast cancer, new back pain, r/o cord compression.\n"
        "FINDINGS: No marrow-replacing lesion. The cord is normal.\n"
        "IMPRESSION: No metastatic disease or cord compression.",
        NONE,
    ),
]

DEV_ENTRIES: list[Entry] = [
    # --- cord
    (
        "noun_form",
        "spine",
        "Broad-based C4-5 protrusion with cord effacement and flattening.",
        CRIT_ORTHO,
    ),
    (
        "reversed_order",
        "spine",
        "Flattening of the ventral cord at C5-6 by a central protrusion.",
        CRIT_ORTHO,
    ),
    ("verb_form", "spine", "A large extrusion at C6-7 deforms the spinal cord.", CRIT_ORTHO),
    ("verb_form", "spine", "The cord is mildly flattened at T6-7.", CRIT_ORTHO),
    ("noun_form", "spine", "Mild cord deformity at C3-4.", CRIT_ORTHO),
    (
        "reversed_order",
        "spine",
        "Deformation of the cord at C5-6 from a disc extrusion.",
        CRIT_ORTHO,
    ),
    ("misspelling", "spine", "Severe C4-5 stenosis with cord compresssion.", CRIT_ORTHO),
    ("misspelling", "spine", "Large extrusion at C5-6 with chord compression.", CRIT_ORTHO),
    ("abbreviation", "spine", "Epidural metastatic disease at T4 with MSCC.", CRIT_ORTHO),
    ("abbreviation", "spine", "Severe stenosis at C3-4 and SCC.", CRIT_ORTHO),
    ("hedged", "spine", "Questionable early cord compression at C6-7.", CRIT_ORTHO),
    ("hedged", "spine", "The cord may be minimally flattened at C5-6.", CRIT_ORTHO),
    ("negated", "spine", "No cord deformity.", NONE),
    ("negated", "spine", "The cord is not flattened or compressed.", NONE),
    ("negated", "spine", "Without flattening of the cord.", NONE),
    (
        "verb_form",
        "spine",
        "A posterior osteophyte at C5-6 impinges upon the cord.",
        CRIT_ORTHO,
    ),
    ("noun_form", "spine", "Severe canal stenosis at T11-12 with conus flattening.", CRIT_ORTHO),
    # --- cauda equina
    (
        "verb_form",
        "spine",
        "A massive L3-4 extrusion severely compresses the cauda equina.",
        CRIT_ORTHO,
    ),
    ("reversed_order", "spine", "The cauda equina nerve roots are compressed at L4-5.", CRIT_ORTHO),
    ("noun_form", "spine", "Cauda equina crowding and compression at L2-3.", CRIT_ORTHO),
    ("misspelling", "spine", "Large extrusion compressing the caudal equina at L5-S1.", CRIT_ORTHO),
    ("abbreviation", "spine", "Findings compatible with CES at L4-5.", CRIT_ORTHO),
    ("hedged", "spine", "Compression of the cauda equina cannot be excluded.", CRIT_ORTHO),
    ("negated", "spine", "The cauda equina is not compressed.", NONE),
    (
        "syndrome_hedge",
        "spine",
        "Cauda equina syndrome cannot be excluded clinically; no compression of the nerve roots"
        " is seen.",
        NONE,
    ),
    (
        "syndrome_hedge",
        "spine",
        "Clinical suspicion of cauda equina syndrome, not confirmed on imaging; the canal is"
        " widely patent.",
        NONE,
    ),
    ("syndrome_hedge", "spine", "No MRI evidence to explain the clinically suspected CES.", NONE),
    # --- epidural abscess
    ("reversed_order", "spine", "Abscess within the dorsal epidural space at T5-6.", CRIT_ORTHO),
    (
        "noun_form",
        "spine",
        "Rim-enhancing fluid collection in the ventral epidural space at L4.",
        CRIT_ORTHO,
    ),
    ("abbreviation", "spine", "Osteomyelitis at L1-2 with a small SEA.", CRIT_ORTHO),
    ("misspelling", "spine", "Ventral epidural abcess at C6.", CRIT_ORTHO),
    (
        "hedged",
        "spine",
        "Epidural enhancement at L3-4, possibly phlegmon or early abscess.",
        CRIT_ORTHO,
    ),
    ("negated", "spine", "No epidural collection.", NONE),
    # --- fracture
    (
        "noun_form",
        "spine",
        "Acute L1 fracture with retropulsion of the posterosuperior fragment.",
        CRIT_ORTHO,
    ),
    ("abbreviation", "spine", "Acute T12 burst fx.", CRIT_ORTHO),
    ("misspelling", "spine", "Acute L2 burst fracure with retropulsion.", CRIT_ORTHO),
    ("standard", "spine", "Flexion-distraction injury at T11-12.", CRIT_ORTHO),
    ("noun_form", "spine", "Acute L3 fracture with PLC disruption.", CRIT_ORTHO),
    ("negated", "spine", "No acute fracture or retropulsion.", NONE),
    # --- brain
    ("noun_form", "brain", "Acute infarction of the right frontal lobe.", CRIT_NEURO),
    ("abbreviation", "brain", "Acute left MCA CVA.", CRIT_NEURO),
    ("misspelling", "brain", "Small acute infart in the left corona radiata.", CRIT_NEURO),
    ("reversed_order", "brain", "Infarcts in both cerebellar hemispheres, acute.", CRIT_NEURO),
    ("verb_form", "brain", "The left occipital cortex shows restricted diffusion.", CRIT_NEURO),
    ("hedged", "brain", "Possible tiny acute infarct in the right thalamus.", CRIT_NEURO),
    ("negated", "brain", "No acute stroke.", NONE),
    ("abbreviation", "brain", "Acute ICH in the right putamen.", CRIT_NEURO),
    (
        "misspelling",
        "brain",
        "Small subarachnoid hemmorhage in the left parietal sulci.",
        CRIT_NEURO,
    ),
    ("british", "brain", "Acute subdural haematoma over the left convexity.", CRIT_NEURO),
    ("verb_form", "brain", "Blood in the fourth ventricle.", CRIT_NEURO),
    ("negated", "brain", "No blood products.", NONE),
    # --- negation scope
    (
        "negation_scope",
        "spine",
        "Spondylosis (no cord compression) and severe left C6-7 foraminal stenosis.",
        ORTHO,
    ),
    ("negation_scope", "spine", "No fracture and a grade 2 anterolisthesis of L5 on S1.", ORTHO),
    (
        "negation_scope",
        "spine",
        "No cauda equina compression; severe canal stenosis at L3-4.",
        ORTHO,
    ),
    ("negation_scope", "spine", "Without stenosis and with a small L5-S1 extrusion.", PAIN),
    (
        "negation_scope",
        "joint",
        "No ACL tear; displaced bucket-handle tear of the lateral meniscus.",
        ORTHO,
    ),
    ("negation_scope", "spine", "No stenosis or nerve root compression.", NONE),
    (
        "negation_scope",
        "spine",
        "No cord compression (mild canal narrowing) with an annular fissure at C5-6.",
        PAIN,
    ),
    # --- incomplete
    (
        "incomplete_study",
        "spine",
        "The examination was terminated due to claustrophobia.",
        INCOMPLETE,
    ),
    (
        "incomplete_study",
        "spine",
        "Incomplete study: the patient was unable to remain still.",
        INCOMPLETE,
    ),
    ("incomplete_study", "spine", "Limited study; no gross abnormality.", INCOMPLETE),
    ("incomplete_study", "spine", "The exam was aborted after two sequences.", INCOMPLETE),
    ("incomplete_study", "spine", "Study discontinued at the patient's request.", INCOMPLETE),
    # --- infection
    ("infection", "joint", "Septic arthritis of the right hip.", URG_ORTHO),
    (
        "infection",
        "joint",
        "Septic sacroiliitis on the right with a small adjacent abscess.",
        URG_ORTHO,
    ),
    ("infection", "joint", "Abscess in the left gluteus maximus.", URG_ORTHO),
    (
        "infection",
        "joint",
        "Pyomyositis of the right adductor muscles with a small abscess.",
        URG_ORTHO,
    ),
    ("infection", "joint", "Necrotizing soft tissue infection of the left calf.", URG_ORTHO),
    # --- inflammatory and mild
    (
        "inflammatory",
        "joint",
        "Synovitis with bone erosions of the wrist, compatible with inflammatory arthritis.",
        RHEUM,
    ),
    ("inflammatory", "joint", "Erosive arthritis of the PIP joints.", RHEUM),
    ("joint_mild", "joint", "Findings of adhesive capsulitis.", PAIN),
    ("joint_mild", "joint", "Retrocalcaneal bursitis.", PAIN),
    ("joint_mild", "joint", "Partial-thickness bursal-surface tear of the infraspinatus.", PAIN),
    ("joint_mild", "joint", "Patellar tendinosis.", PAIN),
    ("joint_mild", "joint", "Large joint effusion.", PAIN),
    # --- joints
    ("joint", "joint", "Full-thickness tear of the supraspinatus tendon.", ORTHO),
    ("joint", "joint", "Torn ACL.", ORTHO),
    ("joint", "joint", "Bucket handle tear of the medial meniscus.", ORTHO),
    ("joint", "joint", "Complex tear of the lateral meniscus.", ORTHO),
    ("joint", "joint", "Posterosuperior labral tear.", ORTHO),
    ("joint", "joint", "Osteochondral defect of the lateral femoral condyle.", ORTHO),
    ("joint", "joint", "Avascular necrosis of both femoral heads.", ORTHO),
    (
        "joint",
        "joint",
        "AVN of the right femoral head with collapse of the articular surface.",
        URG_ORTHO,
    ),
    ("joint", "joint", "Stress fracture of the femoral neck.", ORTHO),
    ("joint", "joint", "Displaced fracture of the distal radius.", URG_ORTHO),
    ("joint", "joint", "Complete tear of the posterior cruciate ligament.", ORTHO),
    ("joint", "joint", "Retracted tear of the subscapularis tendon.", ORTHO),
    ("joint", "joint", "Rupture of the patellar tendon.", ORTHO),
    ("joint", "joint", "SLAP tear.", ORTHO),
    # --- nerves
    ("nerve", "nerve", "Ulnar nerve entrapment at the cubital tunnel.", NEURO),
    ("nerve", "nerve", "Findings compatible with carpal tunnel syndrome.", NEURO),
    ("nerve", "nerve", "Tarsal tunnel syndrome from a ganglion.", NEURO),
    ("nerve", "nerve", "Brachial plexopathy on the right.", NEURO),
    (
        "nerve",
        "nerve",
        "Denervation edema of the deltoid, compatible with Parsonage Turner syndrome.",
        NEURO,
    ),
    ("nerve", "nerve", "Neurofibroma of the median nerve.", NEURO),
    ("nerve", "nerve", "Sciatic neuritis.", NEURO),
    ("nerve", "nerve", "Compression of the ulnar nerve in Guyon's canal.", NEURO),
    # --- unrouted
    ("unrouted", "joint", "Soft-tissue mass in the popliteal fossa.", REVIEW),
    ("unrouted", "spine", "Indeterminate lesion in the right kidney.", REVIEW),
    ("unrouted", "joint", "Edema in the medial tibial plateau.", REVIEW),
    ("unrouted", "joint", "Lesion in the proximal humerus.", REVIEW),
    # --- normals
    ("normal", "spine", "Unremarkable MRI of the thoracic spine.", NONE),
    ("normal", "brain", "Normal brain MRI.", NONE),
    ("normal", "joint", "Normal MRI of the left ankle.", NONE),
    ("normal", "nerve", "Normal ulnar nerve.", NONE),
    ("incidental", "joint", "Small ganglion cyst at the dorsal wrist.", NONE),
    ("incidental", "spine", "Tiny T11 hemangioma.", NONE),
]

DEV_SPLITS: list[Split] = [
    (
        "spine",
        "C6-7: broad disc osteophyte complex with cord flattening.",
        "Cervical spondylosis.",
        expect("emergent", ("orthopedics", "pain_management")),
    ),
    (
        "spine",
        "The cauda equina is compressed at L4-5 by a large extrusion.",
        "Large L4-5 extrusion.",
        CRIT_ORTHO,
    ),
    (
        "brain",
        "Acute infarct in the left occipital lobe with restricted diffusion.",
        "Chronic microvascular changes.",
        CRIT_NEURO,
    ),
    (
        "spine",
        "Peripherally enhancing epidural collection at T8-9.",
        "Findings of spinal infection at T8-9.",
        CRIT_ORTHO,
    ),
]

DEV_WHOLE: list[Whole] = [
    (
        "history_only",
        "spine",
        "INDICATION: Evaluate for cauda equina compression.\nIMPRESSION: Normal lumbar spine.",
        NONE,
    ),
    (
        "history_only",
        "brain",
        "HISTORY: Stroke in 2020.\nIMPRESSION: No acute abnormality.",
        NONE,
    ),
    (
        "addendum",
        "spine",
        "IMPRESSION: Lumbar disc degeneration.\nADDENDUM: There is compression of the cauda equina"
        " at L3-4.",
        expect("emergent", ("orthopedics", "pain_management")),
    ),
]


def _cases(
    prefix: str, entries: list[Entry], splits: list[Split], whole: list[Whole]
) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    style_names = cycle(STYLES)

    def add(family: str, region: str, style: str, text: str, expected: dict[str, Any]) -> None:
        cases.append(
            {
                "id": f"{prefix}{len(cases) + 1:03d}",
                "family": family,
                "region": region,
                "style": style,
                "text": text,
                "expected": expected,
            }
        )

    for n, (family, region, sentence, expected) in enumerate(entries):
        for _ in range(2):
            style = next(style_names)
            add(family, region, style, STYLES[style](sentence, region, n), expected)
    for n, (region, findings, impression, expected) in enumerate(splits):
        exam = EXAMS[region][n % len(EXAMS[region])]
        add(
            "findings_only",
            region,
            "structured",
            f"EXAM: {exam}\nFINDINGS: {NORMALS[region][n % 4]} {findings}\n"
            f"IMPRESSION: {impression}",
            expected,
        )
        add(
            "findings_only",
            region,
            "numbered",
            f"FINDINGS:\n{findings}\n{NORMALS[region][(n + 1) % 4]}\nIMPRESSION:\n1. {impression}",
            expected,
        )
    for family, region, text, expected in whole:
        add(family, region, "structured", text, expected)
    return cases


def main() -> None:
    for name, prefix, parts in (
        ("test_v2.jsonl", "t2-", (TEST_ENTRIES, TEST_SPLITS, TEST_WHOLE)),
        ("dev_v2.jsonl", "d2-", (DEV_ENTRIES, DEV_SPLITS, DEV_WHOLE)),
    ):
        cases = _cases(prefix, *parts)
        lines = [json.dumps(case, ensure_ascii=False) for case in cases]
        (HERE / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{name}: {len(cases)} reports")


if __name__ == "__main__":
    main()
