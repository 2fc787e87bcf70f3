"""Re-choose the demo model's organ boundary refinement and lesion decision (``tags-train calibrate``
with the demo's organ-boundary and validation cases, the boundary first: it changes the organ
masks the decision is chosen with) and measure them on the demo's test cases, TAGS beside the
baseline as measured when the model was built (the baseline's weights are not part of the model folder).

    .venv/bin/python scripts/recalibrate_demo.py [--model models/liver-demo] [--out build/recalibrated]
        [--samples build/samples] [--organ-model FOLDER [--organ-pass union|near_union [--organ-near-mm 20]]]

With ``--organ-model`` the model first gets that folder as its nested organ model
(:func:`training.export.attach_organ_model`; e.g. a network trained with ``tags-train train
--targets liver``), then its boundary and decision are chosen for the new organ masks.

Writes OUT/model (the recalibrated model folder, with the new numbers in its card) and
OUT/evaluation.json (test metrics before and after, the chosen boundary and decision). Copy
OUT/model over the model folder to ship it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "liver-demo"))
    p.add_argument("--out", default=str(REPO / "build" / "recalibrated"))
    p.add_argument("--samples", default=str(REPO / "build" / "samples"))
    p.add_argument("--organ-model", help="a model folder to nest as the organ model first")
    p.add_argument("--organ-pass", choices=("organ_model", "union", "near_union"), default="union")
    p.add_argument("--organ-near-mm", type=float, default=None, help="with --organ-pass near_union (default 20)")
    a = p.parse_args(argv)
    from tags.device import machine_info
    from tags.inference import TagsPredictor
    from tags.model_folder import read_metadata
    from training.calibrate import recalibrate
    from training.demo import TEST_TITLES, Z_TEST, metrics_table, organ_boundary_cases, validation_cases
    from training.evaluate import evaluate
    from training.samples import build_samples

    samples_dir = Path(a.samples)
    samples = {"lits117": samples_dir / "Dataset501_LiTS117", "totalseg": samples_dir / "Dataset502_TotalSegLiver"}
    if not all(v.is_dir() for v in samples.values()):
        samples = build_samples(samples_dir, overwrite=True)
    out = Path(a.out)
    cases = validation_cases(samples)
    model = Path(a.model).resolve()
    command = f"scripts/recalibrate_demo.py --model {model.relative_to(REPO) if model.is_relative_to(REPO) else model}"
    as_given = TagsPredictor.from_model_folder(a.model)  # "before": the model as given, before any attach
    if a.organ_model:
        from training.export import attach_organ_model

        command += f" --organ-model {a.organ_model} --organ-pass {a.organ_pass}" + (
            f" --organ-near-mm {a.organ_near_mm:g}" if a.organ_near_mm is not None else "")
        model = attach_organ_model(model, a.organ_model, out / "attached", organ_pass=a.organ_pass,
                                   organ_near_mm=a.organ_near_mm, command=command,
                                   overwrite=True)
        a.model = str(model)

    def measure(pred: TagsPredictor) -> dict:
        return {"lits": evaluate({"tags": pred}, samples["lits117"], z_from=Z_TEST, organ_source="label"),
                "healthy": evaluate({"tags": pred}, samples["totalseg"], split="test", organ_source="model")}

    before = measure(as_given)
    built = read_metadata(a.model)["metrics"]
    built_keys = {"lits": next(k for k in built if k.startswith("lits117")),
                  "healthy": next(k for k in built if k.startswith("totalseg"))}
    after: dict = {}

    def card_metrics(pred: TagsPredictor) -> str:
        """The card's table: TAGS with the new decision on the test cases, the baseline as built."""
        after.update(measure(pred))
        reports = {title: {"summary": {"tags": after[key]["summary"]["tags"],
                                       "baseline": built[built_keys[key]]["baseline"]}}
                   for key, title in TEST_TITLES.items()}
        machine = machine_info()
        return (metrics_table(reports) + f"\n\nTAGS with the organ boundary and the lesion decision re-chosen on the "
                f"demo's non-test cases (`tags-train calibrate`), measured on {datetime.date.today().isoformat()} by `{command}` "
                f"on {machine['cpu']} ({machine['threads']} threads, {machine['cpu_capability']}, {pred.precision}); "
                "the baseline column is the baseline as measured when the model was built (its decision chosen then).")

    folder, reports = recalibrate(a.model, out / "model", cases, command=command, metrics=card_metrics,
                                  overwrite=True, organ_cases=organ_boundary_cases(samples))
    summary = {"organ_boundary": reports["organ_boundary"]["chosen"], "chosen": reports["lesion_decision"]["chosen"],
               "before": {k: v["summary"]["tags"] for k, v in before.items()},
               "after": {k: v["summary"]["tags"] for k, v in after.items()}}
    (out / "evaluation.json").write_text(json.dumps(summary, indent=1) + "\n")
    print((folder / "README.md").read_text())
    print(f"model folder: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
