"""Choose the lesion decision (:class:`tags.config.LesionDecision`) on validation cases only.

Every validation case is predicted without a decision; each candidate lesion (connected
component of probability >= 0.5) is recorded with its highest probability, volume and whether it
overlaps a labelled tumor. On a healthy (tumor-free) case every candidate is false. The decision
kept is the one with no false lesion of at least 0.1 ml and at most 1 ml of false volume on the
healthy validation cases that gives the best lesion F1 on the tumor validation cases; if none
reaches that, the one with the least false volume on healthy cases.

:func:`recalibrate` re-chooses the decision (and the organ boundary refinement, see
:mod:`training.boundary_choice`) of an exported model folder (``tags-train calibrate``): the weights stay, config.json gets the new decision, the card says what changed and
metadata.json keeps the previous decision, so a site can choose it on its own validation cases.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from tags.config import LesionDecision
from tags.geometry import spacing_from_affine
from tags.lesion_decision import components, depths_up_to, keeps
from tags.lesions import CONNECTIVITY
from tags.inference import TagsPredictor
from tags.preprocessing import prepare_ct

from .data import target_masks
from .evaluate import MIN_LESION_ML, canonical_case

PROBABILITY_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)
"""Highest-probability thresholds tried. The grid reaches 0.9995 (a logit of 7.6): with 0.99 at
its top, two builds of the demo recipe both chose 0.99, the grid's edge, while their true
validation lesions of 0.1 ml or more peaked at 0.995-0.99999 and the healthy validation
abdomen's false candidates at 0.994-0.998."""
VOLUME_GRID_ML = (MIN_LESION_ML, 0.25, 0.5, 1.0, 2.0)
"""Volume thresholds tried (ml), from the smallest lesion the report lists (the application's
default ``--min-lesion-ml``) up: the SEG never carries a tumor speck the SR does not list."""
CONTRAST_GRID_HU = (None,) + tuple(float(hu) for hu in range(10, 65, 5))
"""Contrast thresholds tried (HU darker than the parenchyma), 5 HU apart: a coarser grid (10 HU)
left the choice between a cut just above the healthy validation CT's most contrasted false
candidates and one far above them."""
DEPTH_GRID_MM = (None, 5.0, 10.0, 15.0, 20.0)
"""Depth thresholds tried (mm inside the organ mask; candidates' depths are measured exactly up
to the largest, :func:`tags.lesion_decision.depths_up_to`). The organ pass's mask of the healthy
validation abdomen takes in fluid of the stomach beside the liver and the fat of its fissure,
where the tumor pass finds dark "lesions" 12-16 mm deep and 40-59 HU darker than the liver:
contrast and probability alone could not remove them without removing the true lesions."""
MAX_HEALTHY_FP_ML = 1.0


@dataclass(frozen=True)
class Candidate:
    case: str
    healthy: bool
    max_probability: float
    volume_ml: float
    true: bool
    contrast_hu: Optional[float] = None
    in_organ: Optional[bool] = None
    depth_mm: Optional[float] = None


@dataclass(frozen=True)
class ValidationCase:
    """A validation case: dataset folder, case name, optional slice range, organ source
    ("label": the organ's label where the case has one, else the model's organ pass; "model":
    always the organ pass) and optional (z, y, x) spacing in mm to resample the case to first
    (the same patient as another scanner grid would store it: false candidates depend on the
    grid the CT comes in)."""

    dataset: str
    case: str
    z_from: Optional[float] = None
    z_to: Optional[float] = None
    organ_source: str = "label"
    spacing: Optional[Tuple[float, float, float]] = None

    @property
    def name(self) -> str:
        return self.case + (f" at {'x'.join(f'{v:g}' for v in self.spacing)} mm" if self.spacing else "")

    @classmethod
    def parse(cls, spec: str) -> "ValidationCase":
        """``DATASET:CASE[:Z_FROM:Z_TO]`` (slice fractions in canonical order, e.g. 0.5:0.6)."""
        parts = spec.rsplit(":", 3) if spec.count(":") >= 3 else spec.rsplit(":", 1)
        if len(parts) not in (2, 4) or not all(parts[:2]):
            raise ValueError(f"validation case {spec!r}: expected DATASET:CASE or DATASET:CASE:Z_FROM:Z_TO")
        try:
            z = tuple(float(v) for v in parts[2:])
        except ValueError:
            raise ValueError(f"validation case {spec!r}: Z_FROM and Z_TO must be fractions (e.g. 0.5:0.6)") from None
        if z and not 0.0 <= z[0] < z[1] <= 1.0:
            raise ValueError(f"validation case {spec!r}: need 0 <= Z_FROM < Z_TO <= 1")
        return cls(parts[0], parts[1], *z)


def find_case(vc: ValidationCase):
    """(the dataset, the case) ``vc`` names, in any split; a ValueError naming it if it is not there."""
    from .datasets import read_dataset

    ds = read_dataset(vc.dataset)
    found = [c for c in ds.cases + ds.validation_cases + ds.test_cases if c.name == vc.case]
    if not found:
        raise ValueError(f"validation case {vc.case!r} is not in {ds.root}")
    return ds, found[0]


def collect_candidates(predictor: TagsPredictor, target: str, cases: Sequence[ValidationCase]) -> Dict:
    """Candidate lesions and true lesion counts of ``target`` on ``cases`` (no decision applied)."""
    spec = predictor.config.target(target)
    out: Dict = {"candidates": [], "true_lesions": 0, "cases": []}
    for vc in cases:
        ds, case = find_case(vc)
        healthy = case.name in ds.tumor_free
        img, aff, lab = canonical_case(case, vc.z_from, vc.z_to, label_required=not healthy)
        if vc.spacing is not None:
            img, aff, lab = resampled_case(img, aff, lab, vc.spacing)
        spacing = spacing_from_affine(aff)
        truth = target_masks(lab, ds.targets) if lab is not None else {}
        tumor = truth.get(target, np.zeros(img.shape, bool))
        if vc.organ_source == "label" and spec.organ in truth:
            organ = truth[spec.organ]
        else:
            region = prepare_ct(img, aff).body_box
            organ = predictor.segment_organs(img, aff, [spec.organ], region=region)[spec.organ].mask()
        result = predictor.predict(img, aff, {spec.organ: organ}, [target], decide=False)[target]
        labels, comps = components(result.probability, float(np.prod(spacing)) / 1000.0, hu=img, organ=organ)
        depth = depths_up_to(labels, [c.label for c in comps], organ, spacing, max(d for d in DEPTH_GRID_MM if d))
        on_tumor = np.bincount(labels[tumor], minlength=len(comps) + 1) > 0  # per label: touches a true lesion
        for c in comps:
            out["candidates"].append(Candidate(vc.name, healthy, c.max_probability, c.volume_ml,
                                               bool(on_tumor[c.label]), c.contrast_hu, c.in_organ, depth[c.label]))
        out["true_lesions"] += int(ndimage.label(tumor, CONNECTIVITY)[1])
        out["cases"].append({"case": vc.name, "healthy": healthy, "status": result.status,
                             "reason": result.reason, "candidates": len(comps)})
    return out


def resampled_case(img: np.ndarray, aff: np.ndarray, lab: Optional[np.ndarray], spacing: Sequence[float]):
    """(image, affine, label) of a canonical case resampled to ``spacing`` (z, y, x) mm over
    the same field of view: image trilinear, label nearest."""
    import torch

    from tags.preprocessing import grid_shape, resample

    old = spacing_from_affine(aff)
    shape = grid_shape(img.shape, old, spacing)
    image = resample(torch.from_numpy(np.ascontiguousarray(img, np.float32)), shape, mode="linear").numpy()
    label = (resample(torch.from_numpy(lab.astype(np.float32)), shape, mode="nearest").numpy().round().astype(lab.dtype)
             if lab is not None else None)
    scale = np.array([n / m for n, m in zip(img.shape, shape)])  # new voxel = scale x old voxel
    new = aff.copy()
    new[:3, :3] = aff[:3, :3] * scale
    new[:3, 3] = aff[:3, 3] + aff[:3, :3] @ ((scale - 1.0) / 2.0)  # voxel centres kept (align_corners=False)
    return image, new, label


def score(decision: LesionDecision, found: Dict) -> Dict:
    """False lesions / volume on healthy cases, lesion precision / recall / F1 on tumor cases."""
    kept = [c for c in found["candidates"] if keeps(c, decision)]
    healthy = [c for c in kept if c.healthy]
    tumor = [c for c in kept if not c.healthy]
    tp = sum(c.true for c in tumor)
    precision = tp / len(tumor) if tumor else 0.0
    recall = min(1.0, tp / found["true_lesions"]) if found["true_lesions"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    by_case: Dict[str, float] = {}
    for c in healthy:
        by_case[c.case] = by_case.get(c.case, 0.0) + c.volume_ml
    return {
        "healthy_false_lesions": sum(c.volume_ml >= MIN_LESION_ML for c in healthy),
        "healthy_fp_ml_max": round(max(by_case.values(), default=0.0), 3),
        "lesion_precision": round(precision, 3), "lesion_recall_approx": round(recall, 3), "lesion_f1": round(f1, 3),
    }


def choose_lesion_decision(found: Dict, description: str) -> tuple[LesionDecision, Dict]:
    """The decision (see the module docstring) and the score table of every candidate setting."""
    settings = itertools.product(PROBABILITY_GRID, VOLUME_GRID_ML, CONTRAST_GRID_HU, DEPTH_GRID_MM)
    decisions = [LesionDecision(min_max_probability=p, min_volume_ml=v, min_contrast_hu=c, min_depth_mm=depth)
                 for p, v, c, depth in settings]
    table = [(d, score(d, found)) for d in decisions]
    strictness = lambda d: (d.min_max_probability, d.min_volume_ml, d.min_contrast_hu or 0.0,  # noqa: E731
                            d.min_depth_mm or 0.0)
    ok = [(d, s) for d, s in table if s["healthy_false_lesions"] == 0 and s["healthy_fp_ml_max"] <= MAX_HEALTHY_FP_ML]
    if ok:
        # Among settings of equal F1, the strictest: the fewest candidates a new healthy liver can show.
        best, s = max(ok, key=lambda x: (x[1]["lesion_f1"], strictness(x[0])))
        how = "best lesion F1 on tumor validation with no false lesion on healthy validation (strictest on a tie)"
    else:
        best, s = min(table, key=lambda x: (x[1]["healthy_fp_ml_max"], -x[1]["lesion_f1"]))
        how = "no setting kept healthy validation free of false lesions: least false volume"
    chosen = dataclasses.replace(best, chosen_on=f"{description}; {how}")
    report = {"chosen": {**_thresholds(best), "how": how, **s},
              "grid": [{**_thresholds(d), **sc} for d, sc in table],
              "cases": found["cases"], "true_lesions": found["true_lesions"],
              "candidates": len(found["candidates"])}
    return chosen, report


def _thresholds(d: LesionDecision) -> Dict:
    return {"min_max_probability": d.min_max_probability, "min_volume_ml": d.min_volume_ml,
            "min_contrast_hu": d.min_contrast_hu, "min_depth_mm": d.min_depth_mm}


def _described(cases: Sequence[ValidationCase]) -> str:
    return "; ".join(f"{Path(c.dataset).name}:{c.name}" + (f" slices {c.z_from:g}-{c.z_to:g}" if c.z_from is not None
                                                           else "") for c in cases)


def recalibrate(model: str | Path, out: str | Path, cases: Sequence[ValidationCase], *, target: Optional[str] = None,
                metrics: Optional[Callable[[TagsPredictor], str]] = None, command: str = "",
                overwrite: bool = False, organ_cases: Sequence[ValidationCase] = ()) -> tuple[Path, Dict]:
    """Re-choose the organ boundary of the model folder ``model`` on ``organ_cases`` (labelled
    livers, :mod:`training.boundary_choice`; skipped when there are none), then its lesion
    decision on ``cases`` (skipped when there are none), and write the model folder ``out``
    (same weights): config.json with the new choices, the card's "Organ boundary" and "Lesion
    decision" sections rewritten and its "Held-out metrics" replaced by what ``metrics`` returns
    for the predictor with them (markdown; without it the old section, marked as measured
    before), metadata.json's "recalibrations" extended with the previous and the chosen
    settings. Returns (``out``, {"lesion_decision": report or None, "organ_boundary": report or None})."""
    import dataclasses
    import datetime

    from tags.model_folder import AUTOMATIC_METADATA, CARD, load_model_folder, save_model_folder

    from .boundary_choice import choose_organ_boundary, organ_masks
    from .export import _decision_text, boundary_text

    if not cases and not organ_cases:
        raise ValueError("nothing to calibrate: give validation cases, organ boundary cases or both")
    if Path(out).exists() and not overwrite:  # before minutes of prediction, not after
        raise FileExistsError(f"model folder already exists: {out}")
    folder = load_model_folder(model)
    predictor = TagsPredictor.from_model_folder(model)
    config, card = folder.config, (Path(model) / CARD).read_text()
    target = target or config.tumor_targets[0].name
    record: Dict = {"date": datetime.date.today().isoformat(), "command": command, "target": target}
    reports: Dict = {"organ_boundary": None, "lesion_decision": None}
    if organ_cases:
        organ = config.target(target).organ
        boundary, reports["organ_boundary"] = choose_organ_boundary(
            organ_masks(predictor, organ, organ_cases), _described(organ_cases))
        card = _replace_section(card, "Organ boundary", boundary_text(boundary) + " (re-chosen by tags-train calibrate; "
                                f"before: {boundary_text(config.organ_boundary)})")
        record["organ_boundary"] = {"previous": config.organ_boundary and dataclasses.asdict(config.organ_boundary),
                                    "chosen": reports["organ_boundary"]["chosen"]}
        config = predictor.config = dataclasses.replace(config, organ_boundary=boundary)
    if cases:
        decision, report = choose_lesion_decision(collect_candidates(predictor, target, cases), _described(cases))
        reports["lesion_decision"] = report
        card = _replace_section(card, "Lesion decision", _decision_text(decision) + f" (re-chosen by tags-train "
                                f"calibrate; before: {_decision_text(config.lesion_decision)})")
        record.update(previous=dataclasses.asdict(config.lesion_decision), chosen=report["chosen"],
                      candidates=report["candidates"], true_lesions=report["true_lesions"])
        config = predictor.config = dataclasses.replace(config, lesion_decision=decision)
    card = _replace_section(card, "Held-out metrics", metrics(predictor) if metrics else (
        "Measured before recalibration; measure again with tags-train evaluate.\n\n"
        + _section(card, "Held-out metrics")))
    meta = {k: v for k, v in folder.metadata.items() if k not in AUTOMATIC_METADATA}
    meta["recalibrations"] = list(meta.get("recalibrations", [])) + [record]
    net = predictor.model.net
    state = net.state_dict()  # a folder of a version without adapter weights: its identity adapters, written out
    weights = {**{k: state[k] for k in net.adapter_keys}, **folder.weights}
    path = save_model_folder(
        out, config=config, weights=weights, text_embeddings=folder.text_embeddings,
        base_checkpoint_sha256=folder.metadata["base_checkpoint"]["sha256"], card=card, extra_metadata=meta,
        overwrite=overwrite, organ_model=folder.organ.path if folder.organ else None)
    return path, reports


def _section(card: str, title: str) -> str:
    head = f"## {title}\n"
    if head not in card:
        return ""
    body = card.split(head, 1)[1]
    return body.split("\n## ", 1)[0].strip()


def _replace_section(card: str, title: str, body: str) -> str:
    """``card`` with the body of section ``## title`` replaced (appended when missing)."""
    head = f"## {title}\n"
    if head not in card:
        return card.rstrip() + f"\n\n{head}{body.strip()}\n"
    before, rest = card.split(head, 1)
    after = rest.split("\n## ", 1)
    tail = "\n\n## " + after[1] if len(after) > 1 else "\n"
    return f"{before}{head}{body.strip()}{tail}"
