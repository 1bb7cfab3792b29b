"""Benchmark the report classifier: latency one report at a time, batched throughput, memory.

    python bench/bench_classifier.py [--rounds 5] [--batch-size 64]

Reports are the labelled corpus (tests/corpus/*.jsonl but the blind held-out splits: short
spine, brain, joint and nerve MRI reports and patient replies) and
one typical full-length report. Targets: median <= 10 ms per report, >= 200 reports/s batched.
Timings on a shared machine are noisy: run it on an idle one before quoting numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Blind held-out splits are opened only by whoever scores them (tests/corpus/README_v4.md):
# test_v4.jsonl onwards, and the replies' test_v2.
HELD_OUT_BLIND = re.compile(r"(?:test_v(?:[4-9]|\d{2,})|replies_test_v2)\.jsonl")
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

# The corpus reports are short (about 100 characters); real RIS reports carry history,
# technique and a level-by-level FINDINGS section. This one is a typical full-length report.
FULL_REPORT = (
    "EXAM: MRI LUMBAR SPINE WITHOUT CONTRAST\n"
    "CLINICAL HISTORY: 58-year-old with low back pain radiating to the left leg for 3 "
    "months, numbness of the left foot. Evaluate for disc herniation or stenosis.\n"
    "TECHNIQUE: Sagittal T1, T2 and STIR; axial T1 and T2 images from L1 to S1.\n"
    "COMPARISON: Radiographs of the lumbar spine from 3 months prior.\n"
    "FINDINGS:\n"
    "Alignment: Grade 1 degenerative anterolisthesis of L4 on L5 measuring 4 mm. "
    "Otherwise normal lumbar lordosis.\n"
    "Vertebrae: Vertebral body heights are maintained. No fracture. Type 2 Modic endplate"
    " changes at L4-5. Small hemangioma in the L2 vertebral body. No marrow-replacing "
    "lesion.\n"
    "Conus: The conus medullaris terminates at L1 and is normal in signal.\n"
    "T12-L1 through L2-3: No disc herniation, canal or foraminal stenosis.\n"
    "L3-4: Mild disc bulge and facet arthropathy with mild canal stenosis. No foraminal "
    "stenosis.\n"
    "L4-5: Disc uncovering with a broad-based disc bulge, moderate facet arthropathy and "
    "ligamentum flavum thickening resulting in moderate to severe central canal stenosis "
    "and moderate bilateral foraminal narrowing. Small bilateral facet effusions.\n"
    "L5-S1: Left paracentral disc extrusion with caudal migration, contacting and "
    "posteriorly displacing the descending left S1 nerve root in the lateral recess. Mild"
    " left foraminal narrowing. No right-sided stenosis.\n"
    "Paraspinal soft tissues: Unremarkable. Incidental 1 cm simple left renal cyst.\n"
    "IMPRESSION:\n"
    "1. Left paracentral L5-S1 disc extrusion displacing the descending left S1 nerve "
    "root, which may account for the patient's symptoms.\n"
    "2. Grade 1 degenerative anterolisthesis of L4 on L5 with moderate to severe central "
    "canal stenosis and moderate bilateral foraminal narrowing.\n"
    "3. Multilevel facet arthropathy and Modic type 2 endplate changes at L4-5.\n"
    "4. No fracture, cord compression or cauda equina compression.\n"
    "\n"
)


def rss_mib() -> float:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the corpus")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    texts = [
        json.loads(line)["text"]
        for corpus in sorted((ROOT / "tests" / "corpus").glob("*.jsonl"))
        if not HELD_OUT_BLIND.fullmatch(corpus.name)
        for line in corpus.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    rss_start = rss_mib()
    started = time.perf_counter()
    from followup.core.rules import load_rules
    from followup.nlp import classify_report, classify_reports

    rules = load_rules(ROOT / "rules" / "routing.yaml")
    imported = time.perf_counter()
    classify_report("IMPRESSION: warm-up.", rules)  # builds and caches the pipeline
    loaded = time.perf_counter()
    rss_loaded = rss_mib()

    latencies = []
    for _ in range(args.rounds):
        for text in texts:
            began = time.perf_counter()
            classify_report(text, rules)
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    for _ in range(args.rounds):
        classify_reports(texts, rules, batch_size=args.batch_size)
    batched = len(texts) * args.rounds / (time.perf_counter() - began)

    full = []
    for _ in range(args.rounds * 20):
        began = time.perf_counter()
        classify_report(FULL_REPORT, rules)
        full.append((time.perf_counter() - began) * 1000)

    latencies.sort()
    chars = statistics.mean(len(text) for text in texts)
    rows = [
        ("reports (corpus)", f"{len(texts)} x {args.rounds} rounds, mean {chars:.0f} chars"),
        ("import medspaCy + load rules", f"{imported - started:.2f} s"),
        ("build pipeline (first call)", f"{loaded - imported:.2f} s"),
        ("median per report, one at a time", f"{statistics.median(latencies):.2f} ms"),
        ("p95 per report, one at a time", f"{latencies[int(len(latencies) * 0.95)]:.2f} ms"),
        ("max per report, one at a time", f"{latencies[-1]:.2f} ms"),
        (f"batched nlp.pipe (batch {args.batch_size})", f"{batched:.0f} reports/s"),
        (
            f"median, full-length report ({len(FULL_REPORT)} chars)",
            f"{statistics.median(full):.2f} ms",
        ),
        ("RSS before import", f"{rss_start:.0f} MiB"),
        ("RSS with pipeline loaded", f"{rss_loaded:.0f} MiB"),
        ("RSS at end", f"{rss_mib():.0f} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
