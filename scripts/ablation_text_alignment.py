"""Ablation of TAGS' text-alignment loss: the demo recipe trained without it, same steps.

    .venv/bin/python scripts/ablation_text_alignment.py --demo build/demo [--out build/ablation]

Reads the demo build's runs (their step count and samples), trains the same two-phase recipe with
``text_alignment=False`` for the same number of steps and seed, chooses its lesion decision on
the same validation cases, evaluates it on the same test cases and prints both models side by
side (JSON in OUT/ablation.json). The TAGS model with alignment is the demo build's own
``model`` folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="build/demo", help="the demo build folder (tags-train demo OUT)")
    ap.add_argument("--out", default="build/ablation")
    a = ap.parse_args()
    from tags.inference import TagsPredictor
    from training.calibrate import choose_lesion_decision, collect_candidates
    from training.demo import (ORGAN_NETWORK, RUNS, Z_TEST, metrics_table, paired_organ_pass, train_tags,
                               trained_phase_steps, validation_cases)
    from training.evaluate import evaluate
    from training.export import export_model

    demo, out = Path(a.demo), Path(a.out)
    samples = {"lits117": demo / "samples" / "Dataset501_LiTS117", "totalseg": demo / "samples" / "Dataset502_TotalSegLiver"}
    phases = trained_phase_steps(demo)
    steps = sum(phases)
    t0 = time.time()
    train_tags(samples, out, phases, text_alignment=False)
    seconds = time.time() - t0
    # the same organ pass as the demo model (its nested organ network), so only the tumor network differs
    organ = demo / f"{ORGAN_NETWORK}.model"
    export_model(out / RUNS[-1], out / "model", overwrite=True, **paired_organ_pass(organ if organ.is_dir() else None))
    predictors = {"with alignment": TagsPredictor.from_model_folder(demo / "model"),
                  "without alignment": TagsPredictor.from_model_folder(out / "model")}
    described = "the demo's validation cases"
    chosen = {}
    for name, pred in predictors.items():
        decision, report = choose_lesion_decision(collect_candidates(pred, "liver_tumor", validation_cases(samples)),
                                                  described)
        if name == "without alignment":
            pred.config = dataclasses.replace(pred.config, lesion_decision=decision)
        chosen[name] = report["chosen"]
    lits = evaluate(predictors, samples["lits117"], z_from=Z_TEST, organ_source="label")
    healthy = evaluate(predictors, samples["totalseg"], split="test", organ_source="model")
    result = {"steps": steps, "seconds_without_alignment": round(seconds, 1), "lesion_decision": chosen,
              "lits117_test": lits["summary"], "totalseg_dicom_healthy": healthy["summary"]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    table = metrics_table({"LiTS-117 test (oracle liver prompt)": _renamed(lits),
                           "TotalSegmentator DICOM, healthy": _renamed(healthy)})
    print(table.replace("| TAGS | baseline |", "| with alignment | without alignment |"))
    print(f"decisions: {json.dumps(chosen)}")
    return 0


def _renamed(report: dict) -> dict:
    """metrics_table reads the methods 'tags' and 'baseline'."""
    s = report["summary"]
    return {**report, "summary": {"tags": s["with alignment"], "baseline": s["without alignment"]}}


if __name__ == "__main__":
    raise SystemExit(main())
