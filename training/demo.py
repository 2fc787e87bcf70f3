"""The demo model: samples -> organ network -> TAGS training -> same-budget baseline -> held-out
evaluation -> export (the organ network nested as organ/, organ pass "near_union").

    tags-train demo OUT [--minutes 60]

Everything comes from registry packages. LiTS-117 is split along z (canonical slices 0-50 %
train, 50-60 % validate, 60-100 % test); the healthy livers are split by patient
(training/samples.py): the TotalSegmentator example CT and a thorax train, the aorta-report
abdomen validates, the TotalSegmentator example DICOM series tests (liver Dice and false-positive
tumor). The lesion decision is chosen on the validation cases only (training/calibrate.py).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tags.config import ModelConfig
from tags.model_folder import METADATA

from .baseline import SUMMARY, baseline_predictor, train_baseline
from .boundary_choice import choose_organ_boundary, organ_masks
from .calibrate import ValidationCase, choose_lesion_decision, collect_candidates
from .data import SamplingConfig
from .evaluate import evaluate, write_report
from .export import export_model
from .samples import build_samples
from .checkpoints import checkpoint_state, has_checkpoint
from .train import METRICS, TRAIN_CONFIG, TrainConfig, train

Z_TRAIN = 0.5
"""LiTS-117: the first half of its canonical slices train."""
Z_VALIDATION = (0.5, 0.6)
"""LiTS-117 slices that choose the lesion decision (never trained on, never tested)."""
Z_TEST = 0.6
"""LiTS-117 slices from this fraction on are the held-out tumor test (the part earlier demo builds tested too)."""
PROBE_STEPS = 8
"""Training steps of each phase's probe run, timed to turn the minute budget into a step count:
a step costs about 2.2 s under bf16 autocast on a 2-core AMD EPYC with AVX512-BF16 and about
4.6 s in fp32 (CPUs without native bf16; 2026-12-04), so a fixed step count would not fit one
budget on every CPU. The probe times steps :data:`PROBE_CHECKPOINT_EVERY` + 1 to
:data:`PROBE_STEPS`: the first steps also allocate the process's memory (the first costs about
twice a later one)."""
PROBE_CHECKPOINT_EVERY = 4
"""Checkpoint interval of a probe run: one checkpoint and preview among the timed steps (a real
run has one in 25), not one per step. A plan made before training alone left budget unused when
the machine's speed drifted during the build (82 % used; docs/accuracy.md, "The step probe and
the budget"): the organ phase is planned again from the first phase's measured speed
(:func:`replanned_organ_steps`)."""
TRAIN_SHARE = 0.44
"""Share of the budget for TAGS; the baseline gets the same wall time, the rest is the probe,
loading, the lesion decision and evaluation (about 4 minutes)."""

LIMITS = (
    "Trained on one patient's CT crop with liver tumors (LiTS volume 117, first half of its slices), "
    "healthy livers of two more patients from the TotalSegmentator examples (with synthetic tumors and as "
    "tumor-free negatives) and one thorax without liver, for a few hundred steps on a 2-core CPU. A "
    "demonstration of the pipeline, not a clinical model: do not use its output for diagnosis or treatment. "
    "The LiTS-117 spacing (1.5 mm) and orientation were estimated, not read from a header. The text encoder "
    "is MiniLM (all-MiniLM-L6-v2), not CLIP: no CLIP weights are available offline. The weights derive from "
    "LiTS (CC BY-NC-SA 4.0): non-commercial research use only."
)

SAMPLING = SamplingConfig(
    organ_fraction=0.35, negative_fraction=0.15, synthetic_fraction=0.25, organ_negative_fraction=0.2,
    phase_probability=0.6,
)
"""The demo recipe's first phase: of the tumor steps 25 % synthetic tumors on healthy livers, 15 %
healthy livers as they are, 60 % real LiTS tumors; a fifth of the organ steps centred outside the
liver; 60 % of the crops with the liver moved to another contrast phase (median 40-140 HU)."""

ORGAN_PHASE = dataclasses.replace(SAMPLING, organ_fraction=0.5, organ_negative_fraction=0.5)
"""The second phase (fine-tuning the first phase's weights): half of the steps on the organ and
half of those centred outside it (thorax, pelvis). Trained on the first phase alone, the organ
pass called the heart, the aorta and the pulmonary vessels of a thoraco-abdominal CT "liver"."""
ORGAN_PHASE_SHARE = 0.36
"""Share of the TAGS training steps in the second phase."""
ORGAN_PHASE_LR = 3e-4
ORGAN_PHASE_SEED = 7
"""The second phase's learning rate and seed (a seed of its own: other crops than the first phase's)."""

ORGAN_NETWORK = "organ-net"
"""The build's run of a network of its own for the organ pass (the liver target only, the
pretrained encoder without adapters), nested in the model folder as its organ model
(``organ/``). The adapters that make the tumor pass good make the organ pass spill over a healthy
liver's edge (liver Dice 0.920 on the TotalSegmentator DICOM series where the encoder without
adapters reached 0.964); without them a network leaves a third of a liver full of tumors
outside its mask (docs/accuracy.md, "A separate organ network")."""
ORGAN_NETWORK_STEPS = 120
"""The organ network's steps, taken from the TAGS budget before the two phases are planned. It
trains no adapters and its gradient stops before the encoder: a step cost 0.85 s under bf16 on a
2-core AMX Xeon (1.7 min of the 26 min TAGS budget) and about 3.3 s in fp32 on a 2-core AVX2
EPYC (6.6 min, a quarter of it; docs/accuracy.md, "A separate organ network")."""
ORGAN_NETWORK_SAMPLING = dataclasses.replace(SAMPLING, organ_fraction=1.0, organ_negative_fraction=0.35,
                                             organ_synthetic_fraction=0.2)
"""The organ network's steps: a third centred outside the liver (thorax, pelvis), a fifth of the
healthy livers with synthetic tumors inside, 60 % moved to another contrast phase."""
ORGAN_PASS = "near_union"
ORGAN_NEAR_MM = 20.0
"""How the demo model's two networks find the liver: the tumor network's organ (which keeps a
liver full of tumors whole) with the organ network's voxels within 20 mm of it (which fill a
healthy liver's edge). Their plain union let the organ network's spill into the chest of a
thoraco-abdominal CT through (slices 0-150 of 191 where the liver ends near slice 55)."""
ORGAN_NETWORK_LIMITS = "Runs the organ pass of the demo model (its organ/ folder), nothing else. "


def demo_config(samples: Dict[str, Path], run: Path, steps: int, text_alignment: bool = True) -> TrainConfig:
    """The demo recipe's first phase; what it does not set (slab size, organ window, grids, ...)
    is the default. The runs of one build folder share its preprocessed cases (``run``/../cache)."""
    return TrainConfig(
        datasets=[str(samples["lits117"]), str(samples["totalseg"])],
        out=str(run),
        # The adapters run for the organ target too (AdapterConfig's default): a build with them
        # for the tumor target only kept the organ pass's liver Dice (0.962 where this recipe gives
        # 0.920) but lost tumor Dice (0.783, below its baseline, where this recipe gives 0.859)
        # (docs/accuracy.md, "Adapters for tumors only").
        model=ModelConfig(encoder_size=128, roi_size=(32, 128, 128), text_alignment=text_alignment),
        steps=steps,
        lr=1e-3,
        warmup=10,
        sampling=SAMPLING,
        checkpoint_every=25,
        z_split={"LiTS117": Z_TRAIN},
        cache_dir=str(run.parent / "cache"),
        # The adapters train (TrainConfig's default): a build with them reached LiTS tumor Dice
        # 0.859 where the previous demo model (identity adapters) had 0.752, healthy livers clean with
        # the depth criterion of the lesion decision; at a tenth of the learning rate with more
        # healthy negatives a build was worse on both passes (docs/accuracy.md, "The adapters train").
        train_adapters=True,
    )


def organ_phase_config(samples: Dict[str, Path], run: Path, steps: int, init: Path,
                       text_alignment: bool = True) -> TrainConfig:
    """The recipe's second phase: :data:`ORGAN_PHASE` sampling from the model folder ``init``
    (the first phase's weights, exported)."""
    return dataclasses.replace(demo_config(samples, run, steps, text_alignment), sampling=ORGAN_PHASE, lr=ORGAN_PHASE_LR,
                               warmup=20, seed=ORGAN_PHASE_SEED, init=str(init))


def organ_network_config(samples: Dict[str, Path], run: Path, steps: int) -> TrainConfig:
    """The organ network's run (:data:`ORGAN_NETWORK`) of ``steps``: the liver target only,
    adapters neither trained nor run (the pretrained encoder's features), no text alignment (a
    tumor loss)."""
    base = demo_config(samples, run, steps, text_alignment=False)
    model = dataclasses.replace(base.model, adapter=dataclasses.replace(base.model.adapter, for_organs=False))
    return dataclasses.replace(base, model=model, targets=["liver"], sampling=ORGAN_NETWORK_SAMPLING,
                               train_adapters=False)


def paired_organ_pass(organ_model: Optional[Path]) -> Dict:
    """:func:`training.export.export_model`'s keywords that nest a build's organ network with the
    recipe's organ pass (:data:`ORGAN_PASS`, :data:`ORGAN_NEAR_MM`); none without one."""
    return {} if organ_model is None else dict(organ_model=organ_model, organ_pass=ORGAN_PASS,
                                               organ_near_mm=ORGAN_NEAR_MM)


def organ_network_steps(minutes: float) -> int:
    """The organ network's steps in a build of ``minutes``: :data:`ORGAN_NETWORK_STEPS` per 60
    minutes (at least 10), so that a short build keeps most of its TAGS budget."""
    return max(10, round(ORGAN_NETWORK_STEPS * minutes / 60.0))


def train_organ_network(samples: Dict[str, Path], out: Path, steps: Optional[int] = None) -> Tuple[Path, float]:
    """(model folder, training seconds) of the build's organ network: ``out``/organ-net trained
    for ``steps`` (default :data:`ORGAN_NETWORK_STEPS`; a started run keeps the steps it was
    started with), nothing to do when finished, and exported to ``out``/organ-net.model."""
    run = out / ORGAN_NETWORK
    state = checkpoint_state(run)
    if state is not None:
        steps = int(state["train_config"]["steps"])
    steps = steps or ORGAN_NETWORK_STEPS
    if state is None or int(state["step"]) < steps:
        print(f"[demo] training the organ network ({steps} steps, liver only, no adapters)", flush=True)
        train(organ_network_config(samples, run, steps))
    folder = export_model(run, out / f"{ORGAN_NETWORK}.model", overwrite=True, limits=ORGAN_NETWORK_LIMITS + LIMITS)
    return folder, _training_seconds(run)


def phase_steps(steps: int) -> Tuple[int, int]:
    """(first phase, organ phase) steps of a build of ``steps`` TAGS steps in all."""
    organ = max(1, round(steps * ORGAN_PHASE_SHARE))
    return steps - organ, organ


PLAN = "plan.json"
"""The build's TAGS steps per phase, written when it plans them (before any training)."""


def record_plan(out: Path, steps: Tuple[int, int], budget_seconds: Optional[float] = None,
                per_step: Optional[Tuple[float, float]] = None, organ_replanned: bool = False) -> None:
    """Write the build's plan (``steps`` per phase) to ``out``/:data:`PLAN`, with the TAGS
    training budget and the probe's seconds per step of each phase it was made from (what
    :func:`replan_organ_phase` needs) and whether the organ phase has been planned again."""
    out.mkdir(parents=True, exist_ok=True)
    plan = {"steps": [int(v) for v in steps], "organ_replanned": bool(organ_replanned)}
    if budget_seconds is not None and per_step is not None:
        plan.update(budget_seconds=float(budget_seconds), seconds_per_step=[float(v) for v in per_step])
    (out / PLAN).write_text(json.dumps(plan) + "\n")


def replanned_organ_steps(budget_seconds: float, first_phase: Tuple[int, float], per_step: Tuple[float, float]) -> int:
    """Organ-phase steps that fill what the first phase left of ``budget_seconds``.

    ``first_phase``: (steps, training seconds) the first phase took; ``per_step``: the probe's
    seconds per step of (first, organ) phase. The organ phase's cost is the probe's, scaled by
    how the first phase ran against its own probe (the machine's speed drifts by as much as 20 %
    within an hour, and a run's later steps are faster than the probe's early ones). At least one
    step, so that the recipe's second phase always runs."""
    steps, seconds = first_phase
    organ_cost = per_step[1] * (seconds / max(steps, 1)) / per_step[0]
    return max(1, int((budget_seconds - seconds) / organ_cost))


def replan_organ_phase(out: Path) -> Optional[Tuple[int, int]]:
    """After the first phase of the build in ``out``: plan the organ phase again from the first
    phase's measured speed (:func:`replanned_organ_steps`) and record it, once, before the organ
    phase starts. Returns the new plan, or None when there is nothing to re-plan (a plan without
    its budget, an organ phase already planned again or started)."""
    if not (out / PLAN).is_file() or has_checkpoint(out / RUNS[1]):
        return None
    plan = json.loads((out / PLAN).read_text())
    if plan.get("organ_replanned") or "budget_seconds" not in plan:
        return None
    logged = _logged_checkpoints(out / RUNS[0])
    first_steps, first_seconds = logged[-1]
    per_step = tuple(plan["seconds_per_step"])
    organ = replanned_organ_steps(plan["budget_seconds"], (first_steps, first_seconds), per_step)
    steps = (int(plan["steps"][0]), organ)
    record_plan(out, steps, plan["budget_seconds"], per_step, organ_replanned=True)
    print(f"[demo] the first phase trained {first_steps} steps in {first_seconds:.0f} s "
          f"({first_seconds / max(first_steps, 1):.2f} s per step; the probe said {per_step[0]:.2f} s): "
          f"the organ phase gets {organ} steps (planned: {plan['steps'][1]}) for the "
          f"{plan['budget_seconds'] - first_seconds:.0f} s left", flush=True)
    return steps


def planned_steps(out: Path) -> Optional[Tuple[int, int]]:
    """The two phases' steps of an interrupted build in ``out`` as it planned them (so that
    running the build again finishes the same plan), or None when it has not planned yet. A
    build folder from before :data:`PLAN` existed: the steps its runs were started with, the
    organ phase's derived from the first's when it had not started (possibly one step off)."""
    if (out / PLAN).is_file():
        first, second = json.loads((out / PLAN).read_text())["steps"]
        return int(first), int(second)
    first, second = (checkpoint_state(out / run) for run in RUNS)
    if first is None:
        return None
    planned = first["train_config"]["steps"]
    return planned, second["train_config"]["steps"] if second else phase_steps(round(
        planned / (1 - ORGAN_PHASE_SHARE)))[1]


def train_tags(samples: Dict[str, Path], out: Path, steps: Tuple[int, int],
               text_alignment: bool = True) -> Tuple[TrainConfig, TrainConfig]:
    """Both phases of the recipe, ``steps`` = (first, organ phase): ``out``/run, exported to
    ``out``/run.model, then ``out``/run-organ from it; an interrupted build resumes. A build whose
    plan records its budget plans the organ phase again after the first
    (:func:`replan_organ_phase`). Returns both phases' configs."""
    first = demo_config(samples, out / RUNS[0], steps[0], text_alignment)
    train(first)
    steps = replan_organ_phase(out) or steps
    if not has_checkpoint(out / RUNS[1]):  # a started second phase keeps the weights it began from
        export_model(out / RUNS[0], out / "run.model", overwrite=True)
    second = organ_phase_config(samples, out / RUNS[1], steps[1], out / "run.model", text_alignment)
    train(second)
    return first, second


def trained_phase_steps(out: Path) -> Tuple[int, int]:
    """Steps trained by each phase of the build in ``out``; a ValueError if it has not both runs."""
    states = [checkpoint_state(out / run) for run in RUNS]
    if not all(states):
        raise ValueError(f"{out} holds no two-phase demo build (training runs {' and '.join(RUNS)})")
    return tuple(int(state["step"]) for state in states)


def seconds_per_step(samples: Dict[str, Path], probe: Path, sampling: SamplingConfig = SAMPLING) -> float:
    """Seconds per TAGS training step of the demo recipe with ``sampling`` on the machine it runs
    on: steps :data:`PROBE_CHECKPOINT_EVERY` + 1 to :data:`PROBE_STEPS` of a throw-away run in
    ``probe`` (removed afterwards), read from the run's own log."""
    import shutil

    shutil.rmtree(probe, ignore_errors=True)
    cfg = dataclasses.replace(demo_config(samples, probe, 10 * PROBE_STEPS), progress=False, sampling=sampling,
                              checkpoint_every=PROBE_CHECKPOINT_EVERY)
    train(cfg, stop_after=PROBE_STEPS)
    logged = _logged_checkpoints(probe)
    (first_step, first), (last_step, last) = logged[0], logged[-1]
    shutil.rmtree(probe, ignore_errors=True)
    return (last - first) / (last_step - first_step)


def planned_total_steps(budget_seconds: float, per_step: Tuple[float, float]) -> int:
    """TAGS steps that fill ``budget_seconds`` when :data:`ORGAN_PHASE_SHARE` of them cost
    ``per_step[1]`` seconds (the organ phase) and the others ``per_step[0]`` (at least 10)."""
    mean = (1.0 - ORGAN_PHASE_SHARE) * per_step[0] + ORGAN_PHASE_SHARE * per_step[1]
    return max(10, int(budget_seconds / mean))


def _logged_checkpoints(run: Path) -> List[Tuple[int, float]]:
    """(step, training seconds behind it) of each logged checkpoint of the run in ``run``, in
    order (resumes included, see :data:`training.train.METRICS`)."""
    lines = [json.loads(x) for x in (run / METRICS).read_text().splitlines()]
    return [(int(line["step"]), float(line["seconds"])) for line in lines if "seconds" in line]  # not validations


def _training_seconds(run: Path) -> float:
    """Training seconds behind the last logged checkpoint of the run in ``run``."""
    return _logged_checkpoints(run)[-1][1]


RUNS = ("run", "run-organ")
"""The recipe's two training runs in a build folder, in order."""


def phase_seconds(out: Path) -> Tuple[float, float]:
    """TAGS training seconds of each phase of the build in ``out``."""
    return tuple(_training_seconds(out / run) for run in RUNS)


def train_same_budget_baseline(first: TrainConfig, out: Path, phases: Tuple[float, float]) -> Dict:
    """The DynUNet baseline in ``out``/baseline for the seconds TAGS trained (``phases``: each
    phase's, :func:`phase_seconds`, the organ network's counted with the first), on the same
    samples, drawn as TAGS drew them: the first phase's sampling, then :data:`ORGAN_PHASE` for the
    share of the time TAGS spent in its organ phase."""
    model_cfg = ModelConfig.from_dict(checkpoint_state(out / RUNS[-1])["model_config"])
    print(f"[demo] training the DynUNet baseline for the same {sum(phases):.0f} s", flush=True)
    return train_baseline(first, model_cfg, sum(phases), out / "baseline",
                          schedule=((phases[0] / sum(phases), ORGAN_PHASE),))


HEALTHY_VALIDATION_GRIDS = ((1.25, 0.7, 0.7), (2.5, 0.8, 0.8), (5.0, 0.8, 0.8))
"""(z, y, x) mm grids the healthy validation abdomen is also resampled to (thin-slice, thick-slice
and 5 mm clinical series): a lesion decision that leaves it clean at its own 1.5 mm grid alone
still let the same patient, stored at 0.68 x 0.68 x 1.43 mm, show three false lesions. On the
5 mm grid the shipped model's most contrasted confident false candidate (2.3 ml, 43.9 HU darker
than the liver, highest probability 0.9947) passes a decision of >= 0.99 and 40 HU."""


def validation_cases(samples: Dict[str, Path]) -> List[ValidationCase]:
    """LiTS-117's validation slab (organ prompt from its label) and the healthy aorta-report
    abdomen (organ from the model's organ pass, as the application finds it), as stored and on
    :data:`HEALTHY_VALIDATION_GRIDS`."""
    healthy = str(samples["totalseg"])
    return [
        ValidationCase(str(samples["lits117"]), "lits117", *Z_VALIDATION, organ_source="label"),
        ValidationCase(healthy, "aorta_abdomen", organ_source="model"),
        *(ValidationCase(healthy, "aorta_abdomen", organ_source="model", spacing=g) for g in HEALTHY_VALIDATION_GRIDS),
    ]


ORGAN_BOUNDARY_DESCRIPTION = ("the TotalSegmentator example CT (a training case) and LiTS-117 slices 0-60 % (its "
                              "training and validation slices)")


def organ_boundary_cases(samples: Dict[str, Path]) -> List[ValidationCase]:
    """The labelled livers of the non-test cases, where the organ boundary is chosen."""
    return [ValidationCase(str(samples["totalseg"]), "totalseg_ct"),
            ValidationCase(str(samples["lits117"]), "lits117", 0.0, Z_TEST)]


TEST_TITLES = {
    "lits": "LiTS-117 slices 60-100 % (tumor prompt from the liver label, an oracle)",
    "healthy": "TotalSegmentator DICOM series, healthy liver (organ from the organ pass, as the application)",
}
"""The demo's test evaluations as the model card titles them."""

METRIC_ROWS = (
    ("dice", "Dice"), ("nsd", "NSD 2 mm"), ("hd95", "HD95 mm"), ("lesion_recall", "lesion recall"),
    ("lesion_precision", "lesion precision"), ("fp_ml_max", "false-positive ml (worst case)"),
    ("false_lesions_total", "false lesions >= 0.1 ml"),
)


def metrics_table(reports: Dict[str, Dict]) -> str:
    """Markdown: one row per (evaluation, target, metric), TAGS beside the baseline."""
    lines = ["| evaluation | target | metric | TAGS | baseline |", "|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for title, rep in reports.items():
        tags, base = rep["summary"].get("tags", {}), rep["summary"].get("baseline", {})
        for target in sorted(tags):
            organ = not target.endswith("tumor")
            for key, name in METRIC_ROWS[:3] if organ else METRIC_ROWS:
                a, b = tags[target].get(key), base.get(target, {}).get(key)
                if a is None and b is None:
                    continue
                lines.append(f"| {title} | {target} | {name} | {fmt(a)} | {fmt(b)} |")
    return "\n".join(lines)


def _tags_and_baseline(samples: Dict[str, Path], out: Path, minutes: float,
                       reuse_training: bool) -> Tuple[Tuple[int, int], float, Dict, Optional[Path], float]:
    """(TAGS steps of each phase, their seconds, baseline summary, the organ network's model
    folder, its seconds) of the build in ``out``: trained now (a new plan, or the plan of an
    interrupted build), or read back (``reuse_training``). The organ network trains first; the
    two phases get the rest of the TAGS budget. A build folder planned before the recipe had an
    organ network (a plan, no organ network run) is finished and reused without one."""
    organ_run = out / ORGAN_NETWORK
    if reuse_training:
        phases, seconds = trained_phase_steps(out), sum(phase_seconds(out))
        organ_model = out / f"{ORGAN_NETWORK}.model" if (out / f"{ORGAN_NETWORK}.model").is_dir() else None
        organ_seconds = _training_seconds(organ_run) if organ_model is not None else 0.0
        base = json.loads((out / "baseline" / SUMMARY).read_text())
        print(f"[demo] reusing the trained TAGS runs ({sum(phases)} steps), "
              f"{'organ network ' if organ_model else ''}and baseline in {out}", flush=True)
    else:
        plan = planned_steps(out)
        organ_model, organ_seconds = (None, 0.0) if plan is not None and not organ_run.exists() else (
            train_organ_network(samples, out, organ_network_steps(minutes)))
        if plan is None:
            budget = minutes * 60 * TRAIN_SHARE - organ_seconds
            per_step = (seconds_per_step(samples, out / "probe"), seconds_per_step(samples, out / "probe", ORGAN_PHASE))
            plan = phase_steps(planned_total_steps(budget, per_step))
            record_plan(out, plan, budget, per_step)
            print(f"[demo] a step takes {per_step[0]:.2f} s ({per_step[1]:.2f} s organ-weighted): training TAGS for "
                  f"{sum(plan)} steps (about {(plan[0] * per_step[0] + plan[1] * per_step[1]) / 60:.0f} min, the "
                  f"last {plan[1]} organ-weighted) after the organ network's {organ_seconds:.0f} s", flush=True)
        else:
            print(f"[demo] finishing the build started in {out}: {plan[0]} + {plan[1]} TAGS steps", flush=True)
        first, _ = train_tags(samples, out, plan)
        phases, by_phase = trained_phase_steps(out), phase_seconds(out)
        seconds = sum(by_phase)
        # the baseline spends the organ network's time as TAGS' first phase spent its own
        base = train_same_budget_baseline(first, out, (by_phase[0] + organ_seconds, by_phase[1]))
    return phases, seconds, base, organ_model, organ_seconds


def build_demo(out: str | Path, minutes: float = 60.0, overwrite: bool = False, reuse_training: bool = False) -> Path:
    """Build the demo model folder at ``out``/model within about ``minutes`` on this machine.

    A build interrupted while training is finished by running it again (the plan it started
    with, not a new probe). ``reuse_training``: when ``out`` already holds both finished TAGS
    runs and the baseline, only choose the organ boundary and lesion decisions, evaluate and
    export again (after a change to those steps).
    """
    out = Path(out)
    t0 = time.time()
    final = out / RUNS[-1]
    if reuse_training and not (has_checkpoint(final) and (out / "baseline" / SUMMARY).is_file()):
        raise ValueError(f"--reuse-training: {out} holds no finished build ({' and '.join(RUNS)} "
                         "with a baseline beside them)")
    samples_dir = out / "samples"
    samples = (
        {"lits117": samples_dir / "Dataset501_LiTS117", "totalseg": samples_dir / "Dataset502_TotalSegLiver"}
        if (samples_dir / "Dataset502_TotalSegLiver" / "dataset.json").is_file()
        else build_samples(samples_dir, overwrite=True)
    )
    # TAGS and the baseline get the same wall time; the rest is loading, calibration, evaluation.
    phases, seconds, base, organ_model, organ_seconds = _tags_and_baseline(samples, out, minutes, reuse_training)
    steps = sum(phases)
    tmp_model = out / "model.unevaluated"
    paired = paired_organ_pass(organ_model)
    export_model(final, tmp_model, overwrite=True, **paired)
    from tags.inference import TagsPredictor

    predictors = {"tags": TagsPredictor.from_model_folder(tmp_model),
                  "baseline": baseline_predictor(out / "baseline")}
    print("[demo] choosing the organ boundary on labelled non-test cases", flush=True)
    boundaries, boundary_reports = {}, {}
    for method, pred in predictors.items():
        predicted = organ_masks(pred, "liver", organ_boundary_cases(samples))
        boundaries[method], boundary_reports[method] = choose_organ_boundary(predicted, ORGAN_BOUNDARY_DESCRIPTION)
        pred.config = dataclasses.replace(pred.config, organ_boundary=boundaries[method])
        print(f"[demo] {method}: {boundary_reports[method]['chosen']}", flush=True)
    print("[demo] choosing the lesion decision on validation cases", flush=True)
    described = ("LiTS-117 slices 50-60 % (organ from its label) and the healthy TotalSegmentator aorta-report "
                 "abdomen (organ from the organ pass)")
    decisions, calibration = {}, {}
    for method, pred in predictors.items():
        found = collect_candidates(pred, "liver_tumor", validation_cases(samples))
        decisions[method], calibration[method] = choose_lesion_decision(found, described)
        pred.config = dataclasses.replace(pred.config, lesion_decision=decisions[method])
        print(f"[demo] {method}: {calibration[method]['chosen']}", flush=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "lesion_decision.json").write_text(json.dumps(calibration, indent=2) + "\n")
    (out / "eval" / "organ_boundary.json").write_text(json.dumps(boundary_reports, indent=2) + "\n")
    print("[demo] evaluating on the test cases", flush=True)
    lits = evaluate(predictors, samples["lits117"], z_from=Z_TEST, organ_source="label", progress=True)
    healthy = evaluate(predictors, samples["totalseg"], split="test", organ_source="model", progress=True)
    write_report(lits, out / "eval" / "lits117_test")
    write_report(healthy, out / "eval" / "totalseg_dicom_healthy")
    reports = {TEST_TITLES["lits"]: lits, TEST_TITLES["healthy"]: healthy}
    metrics = {
        "lits117_test (last 40% of slices; organ prompt from the ground-truth liver label)": lits["summary"],
        "totalseg_dicom_series healthy liver (held-out patient; organ from the model's organ pass)":
            healthy["summary"],
        "lesion_decision": {k: v["chosen"] for k, v in calibration.items()},
        "organ_boundary": {k: v["chosen"] for k, v in boundary_reports.items()},
        "baseline": base,
        "tags_training_seconds": seconds + organ_seconds,
    }
    command = "tags-train demo " + shlex.quote(str(out)) + f" --minutes {minutes:g}"
    from tags.device import machine_info

    precision = json.loads((final / TRAIN_CONFIG).read_text())["precision"]
    timing = {"tags_training_seconds": seconds + organ_seconds, "organ_network_seconds": organ_seconds,
              "baseline_seconds": base.get("seconds"),
              "machine": {**machine_info(), "training_precision": precision}}
    if reuse_training:
        previous = out / "model" / METADATA
        if previous.is_file() and "build_seconds" in (built := json.loads(previous.read_text())):
            timing["build_seconds"] = built["build_seconds"]
        timing["decided_and_evaluated_again_seconds"] = round(time.time() - t0, 1)
        command += " (then again with --reuse-training)"
    else:
        timing["build_seconds"] = round(time.time() - t0, 1)
    machine = timing["machine"]
    history = (f"two phases: {phases[0]} steps of the demo recipe, then {phases[1]} steps fine-tuned from them "
               f"weighted to the organ and its surroundings")
    organ_text = ""
    if organ_model is not None:
        organ_steps = int(checkpoint_state(out / ORGAN_NETWORK)["step"])
        organ_text = f", and the organ pass's second network (organ/) {organ_steps} steps in {organ_seconds:.0f} s"
    markdown = (metrics_table(reports) + f"\n\nTAGS trained {steps} steps in {seconds:.0f} s ({history}){organ_text}; "
                f"the baseline ({base['architecture']}) {base['steps']} steps in the same time, on {machine['cpu']} "
                f"({machine['threads']} threads, {machine['cpu_capability']}, {precision}). Command: `{command}`.")
    export_model(final, out / "model", metrics=metrics, limits=LIMITS, overwrite=True, steps=steps, history=history,
                 lesion_decision=decisions["tags"], organ_boundary=boundaries["tags"], metrics_markdown=markdown,
                 extra_metadata={"built_by": command, **timing}, **paired)
    import shutil

    shutil.rmtree(tmp_model, ignore_errors=True)
    print(markdown)
    print(f"[demo] model folder {out / 'model'} built in {time.time() - t0:.0f} s", flush=True)
    return out / "model"


if __name__ == "__main__":
    build_demo(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 60.0)
