"""Evaluation: Dice, NSD, HD95 and lesion-wise detection, TAGS side by side with a baseline.

Where tumor targets need an organ mask, ``organ_source`` says where it comes from and the
report records it: ``"label"`` uses the ground-truth organ label of the case (an oracle prompt,
as 3DSAM-adapter's evaluation uses ground-truth clicks), ``"model"`` the model's own organ pass.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage
from tqdm import tqdm

from tags.geometry import spacing_from_affine, to_canonical
from tags.inference import TagsPredictor
from tags.preprocessing import prepare_ct

from .data import target_masks
from .datasets import load_case, read_dataset


def _finite(v: float) -> Optional[float]:
    return None if v is None or not np.isfinite(v) else float(v)


MIN_LESION_ML = 0.1
"""Smallest predicted component counted as a false lesion (the application's default
``--min-lesion-ml``: smaller ones are not reported)."""


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], nsd_mm: float = 2.0) -> Dict:
    """Dice, NSD at ``nsd_mm``, HD95 (mm), lesion-wise detection recall/precision, false positives.

    Both masks empty: Dice 1, NSD 1, HD95 0. One empty: Dice 0, NSD 0, HD95 null.
    A ground-truth lesion (26-connected component) is detected when any predicted voxel
    overlaps it; a predicted component is a true positive when it overlaps any lesion.
    ``fp_ml``: predicted volume outside the truth; ``false_lesions``: predicted components of at
    least :data:`MIN_LESION_ML` that overlap no lesion (on a healthy organ: every reported lesion).
    """
    pred, truth = pred.astype(bool), truth.astype(bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: Dict = {"voxels_pred": int(pred.sum()), "voxels_truth": int(truth.sum()),
                 "fp_ml": round(float((pred & ~truth).sum()) * voxel_ml, 3)}
    if not pred.any() and not truth.any():
        out.update(dice=1.0, nsd=1.0, hd95=0.0)
    elif not pred.any() or not truth.any():
        out.update(dice=0.0, nsd=0.0, hd95=None)
    else:
        p = torch.from_numpy(pred)[None, None].float()
        t = torch.from_numpy(truth)[None, None].float()
        out["dice"] = float(compute_dice(p, t, include_background=True)[0, 0])
        p2 = torch.cat([1 - p, p], 1)
        t2 = torch.cat([1 - t, t], 1)
        out["nsd"] = _finite(float(compute_surface_dice(p2, t2, class_thresholds=[nsd_mm], spacing=list(spacing))[0, 0]))
        out["hd95"] = _finite(float(compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                                               spacing=list(spacing))[0, 0]))
    structure = np.ones((3, 3, 3), bool)
    lt, nt = ndimage.label(truth, structure)
    lp, np_ = ndimage.label(pred, structure)
    detected = len(set(np.unique(lt[pred])) - {0})
    hit = set(np.unique(lp[truth])) - {0}
    true_pos = len(hit)
    sizes = np.bincount(lp.ravel(), minlength=np_ + 1)
    false_lesions = sum(1 for k in range(1, np_ + 1) if k not in hit and sizes[k] * voxel_ml >= MIN_LESION_ML)
    out.update(
        lesions_truth=int(nt), lesions_pred=int(np_), false_lesions=int(false_lesions),
        lesion_recall=_finite(detected / nt) if nt else None,
        lesion_precision=_finite(true_pos / np_) if np_ else None,
    )
    return out


def canonical_case(case, z_from: Optional[float] = None, z_to: Optional[float] = None, label_required: bool = True):
    """(image HU, affine, label) of a case in canonical orientation, contiguous; with
    ``z_from`` / ``z_to``, only the canonical slices in that fraction range (``z_from`` on: the
    part ``--z-split`` holds out), the affine moved to the first kept slice. The label is None
    for an unlabelled case unless ``label_required``."""
    img, aff, lab = load_case(case)
    if lab is None and label_required:
        raise ValueError(f"{case.name}: no label to evaluate against")
    img, aff, reo = to_canonical(img, aff)
    lab = reo.apply(lab) if lab is not None else None
    if z_from is not None or z_to is not None:
        lo = int(round((z_from or 0.0) * img.shape[0]))
        hi = int(round((z_to if z_to is not None else 1.0) * img.shape[0]))
        img = img[lo:hi]
        lab = lab[lo:hi] if lab is not None else None
        aff = aff.copy()
        aff[:3, 3] += aff[:3, 0] * lo
    return np.ascontiguousarray(img), aff, (np.ascontiguousarray(lab) if lab is not None else None)


def evaluate(
    predictors: Dict[str, TagsPredictor],
    dataset: str | Path,
    *,
    split: str = "train",
    z_from: Optional[float] = None,
    organ_source: str = "label",
    nsd_mm: float = 2.0,
    targets: Optional[List[str]] = None,
    progress: bool = False,
) -> Dict:
    """Evaluate every predictor (e.g. {"tags": ..., "baseline": ...}) on a dataset's cases.

    Args:
        split: "train" (imagesTr/labelsTr), "validation" (the imagesTr cases dataset.json lists
            under ``"validation"``, those with a label file) or "test" (imagesTs/labelsTs).
        z_from: evaluate only canonical slices from this fraction on (the part held out by
            ``--z-split DATASET:z_from`` in training); the volume is cut before prediction.
        organ_source: "label" (ground-truth organ as prompt, an oracle) or "model".
        progress: a progress bar over the cases.
    """
    if organ_source not in ("label", "model"):
        raise ValueError("organ_source must be 'label' or 'model'")
    ds = read_dataset(dataset)
    if split not in ("train", "validation", "test"):
        raise ValueError("split must be 'train', 'validation' or 'test'")
    cases = {"train": ds.cases, "test": ds.test_cases,
             "validation": ds.labelled_validation_cases}[split]
    if not cases:
        raise ValueError(f"{ds.root}: no {split} cases")
    rows: List[Dict] = []
    for case in tqdm(cases, desc=f"evaluate {ds.name}", disable=not progress, unit="case"):
        img, aff, lab = canonical_case(case, z_from)
        spacing = spacing_from_affine(aff)
        body = prepare_ct(img, aff).body_box  # the organ pass searches the body, as the application does
        truth = target_masks(lab, ds.targets)
        if case.name in ds.tumor_free:  # a healthy organ: its tumor truth is empty, not unknown
            for pred in predictors.values():
                for t in pred.config.tumor_targets:
                    if t.organ in truth:
                        truth.setdefault(t.name, np.zeros(lab.shape, bool))
        for method, pred in predictors.items():
            names = [t.name for t in pred.config.targets if t.name in truth and (targets is None or t.name in targets)]
            organ_names = [n for n in names if pred.config.target(n).kind == "organ"]
            organs = {k: v.mask() for k, v in pred.segment_organs(img, aff, organ_names, region=body).items()} if organ_names else {}
            tumor_names = [n for n in names if pred.config.target(n).kind == "tumor"]
            if tumor_names:
                needed = {pred.config.target(n).organ for n in tumor_names}
                if organ_source == "label":
                    prompts = {o: truth[o] for o in needed}
                else:
                    missing = [o for o in needed if o not in organs]
                    prompts = {**organs, **{k: v.mask() for k, v in pred.segment_organs(img, aff, missing, region=body).items()}}
                results = pred.predict(img, aff, prompts, tumor_names)
            else:
                results = {}
            masks = {**organs, **{k: v.mask() for k, v in results.items()}}
            for n in names:
                m = segmentation_metrics(masks[n], truth[n], spacing, nsd_mm)
                rows.append({"case": case.name, "method": method, "target": n, **m})
    summary: Dict = {}
    for method in predictors:
        for n in sorted({r["target"] for r in rows if r["method"] == method}):
            sel = [r for r in rows if r["method"] == method and r["target"] == n]
            summary.setdefault(method, {})[n] = {
                k: _finite(float(np.mean([r[k] for r in sel if r[k] is not None]))) if any(r[k] is not None for r in sel) else None
                for k in ("dice", "nsd", "hd95", "lesion_recall", "lesion_precision")
            }
            summary[method][n]["fp_ml_max"] = max(r["fp_ml"] for r in sel)
            summary[method][n]["false_lesions_total"] = sum(r["false_lesions"] for r in sel)
    return {
        "dataset": ds.name, "split": split, "z_from": z_from, "nsd_tolerance_mm": nsd_mm,
        "organ_prompt_source": "ground-truth organ label (oracle)" if organ_source == "label" else "model organ pass",
        "summary": summary, "cases": rows,
    }


def write_report(report: Dict, out: str | Path) -> None:
    """``out``.json (everything) and ``out``.csv (one row per case, method, target)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = report["cases"]
    with out.with_suffix(".csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["case"])
        w.writeheader()
        w.writerows(rows)
