"""Dataset readers (Medical Segmentation Decathlon and nnU-Net v2 raw layouts), the target
table mapping each dataset's label values to TAGS targets, and the dataset sanity check.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tags.config import TargetSpec
from tags.targets import ORGAN_CODES, organ_target, tumor_target

from .samples import read_nifti

TUMOR_WORDS = ("tumor", "tumour", "tumors", "tumours", "cancer", "cancers", "carcinoma", "lesion", "lesions",
               "neoplasm", "metastasis", "metastases")
"""Words that make a label a tumor target ("cancer" in MSD Task03/07, "tumor" in KiTS, "liver_tumor")."""

MIN_SPACING_MM, MAX_SPACING_MM = 0.2, 8.0
MAX_OBLIQUE_COS = 0.99  # the nearest patient axis of every image axis must be at least this aligned


class DatasetError(ValueError):
    """A dataset that cannot be used; the message lists every problem found."""


@dataclass
class Case:
    name: str
    image: Path
    label: Optional[Path]


@dataclass
class Dataset:
    """A dataset folder.

    Attributes:
        cases: training cases (imagesTr without the ``validation`` ones).
        validation_cases: imagesTr cases dataset.json lists under ``"validation"``: never
            trained on, used to choose the lesion threshold (their label file may be absent).
        test_cases: imagesTs/labelsTs.
        tumor_free: case names dataset.json lists under ``"tumor_free"``: known to hold no tumor
            of any target, so their tumor masks are empty (not unknown).
        organ_free: case names under ``"organ_free"``: no labelled organ in the image at all
            (e.g. a thorax above the liver); their empty label is intended.
    """

    name: str
    root: Path
    layout: str  # "msd" or "nnunetv2"
    labels: Dict[str, Tuple[int, ...]]  # label name -> label values (an nnU-Net v2 region lists several)
    cases: List[Case]
    test_cases: List[Case] = field(default_factory=list)
    validation_cases: List[Case] = field(default_factory=list)
    tumor_free: frozenset = frozenset()
    organ_free: frozenset = frozenset()

    @property
    def labelled_validation_cases(self) -> List[Case]:
        """The validation cases whose label file exists (the ones that can be scored)."""
        return [c for c in self.validation_cases if c.label is not None and c.label.exists()]

    @property
    def targets(self) -> Dict[str, "LabelledTarget"]:
        """{target name: LabelledTarget}, from the label names (:func:`targets_from_labels`)."""
        return targets_from_labels(self.labels, f"{self.name} ({self.root.name})")


@dataclass(frozen=True)
class LabelledTarget:
    """A TAGS target and the label values whose union is its mask in this dataset's label maps."""

    spec: TargetSpec
    values: Tuple[int, ...]


def _words(text: str) -> List[str]:
    return [w for w in re.split(r"[^a-z]+", text.lower()) if w]


def _organ_in(words: Sequence[str]) -> Optional[str]:
    found = {o for o in ORGAN_CODES for w in words if w in (o, o + "s")}
    return found.pop() if len(found) == 1 else None


def targets_from_labels(labels: Mapping[str, Sequence[int]], dataset_name: str = "") -> Dict[str, LabelledTarget]:
    """TAGS targets from a dataset's label names: an organ TAGS knows (``tags.targets.ORGAN_CODES``:
    "liver", "Kidney") is an organ target; a label with a tumor word (:data:`TUMOR_WORDS`: "cancer",
    "tumor", "liver_tumor") a tumor target of the organ it names, else of the dataset's only organ,
    else of the organ in the dataset's name (MSD Task10_Colon labels only "colon cancer primaries").

    An organ's mask is the union of its own values, its tumors' and, in a one-organ dataset,
    every other foreground label's (a KiTS cyst lies in the kidney), so plain-integer label
    maps and nnU-Net v2 regions (KiTS23: ``"kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2``)
    give the same masks. Labels that are neither (e.g. "masses", "cyst") make no target.

    Raises:
        DatasetError: no target recognised, a tumor whose organ cannot be told, or two labels
            for the same target.
    """
    fg = {str(k): tuple(int(v) for v in vs) for k, vs in labels.items() if str(k).lower() != "background"}
    organs: Dict[str, Tuple[int, ...]] = {}
    tumors: Dict[str, Tuple[Optional[str], Tuple[int, ...]]] = {}
    named = {name: _organ_in(_words(name)) for name in fg}  # the organ each label names, if one
    for name, values in fg.items():
        organ = named[name]
        if any(w in TUMOR_WORDS for w in _words(name)):
            tumors[name] = (organ, values)
        elif organ:
            if organ in organs:
                raise DatasetError(f"dataset {dataset_name!r}: two labels name the {organ}; merge them into one "
                                   "label (an nnU-Net v2 region)")
            organs[organ] = values
    single = next(iter(organs)) if len(organs) == 1 else _organ_in(_words(dataset_name)) if not organs else None
    out: Dict[str, LabelledTarget] = {}
    for name, values in fg.items():  # in the label table's order (organ before tumor, as the model's targets)
        if name in tumors:
            organ = tumors[name][0] or single
            if organ is None:
                raise DatasetError(f"dataset {dataset_name!r}: label {name!r} names a tumor but not its organ, and "
                                   f"the dataset does not name exactly one organ TAGS knows "
                                   f"({', '.join(sorted(ORGAN_CODES))})")
            spec = tumor_target(organ, values[0] if len(values) == 1 else None)
            if spec.name in out:
                raise DatasetError(f"dataset {dataset_name!r}: two labels are tumors of the {organ}; merge them")
            out[spec.name] = LabelledTarget(spec, values)
        elif named[name] in organs:
            organ = named[name]
            inside = set(values) | {v for o, vs in tumors.values() if (o or single) == organ for v in vs}
            if len(organs) == 1:
                inside |= {v for vs in fg.values() for v in vs}
            out[organ] = LabelledTarget(organ_target(organ, values[0] if len(values) == 1 else None),
                                        tuple(sorted(inside)))
    if not out:
        raise DatasetError(f"dataset {dataset_name!r}: none of its labels {sorted(fg)} names an organ TAGS knows "
                           f"({', '.join(sorted(ORGAN_CODES))}) or a tumor ({', '.join(TUMOR_WORDS[:5])}, ...)")
    return out


def _label_values(value) -> Tuple[int, ...]:
    """An nnU-Net v2 label entry: one value or a region (a list of values)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise DatasetError(f"label value {value!r} is neither an integer nor a list of integers") from None


def read_dataset(root: str | Path) -> Dataset:
    """Read an MSD (TaskXX_Name) or nnU-Net v2 raw (DatasetXXX_Name) dataset folder."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root}: no dataset.json (expected an MSD or nnU-Net v2 raw dataset folder)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_path}: not valid JSON ({e})") from None
    name = str(meta.get("name", root.name))
    if "training" in meta:  # MSD
        labels = {str(v): _label_values(k) for k, v in meta.get("labels", {}).items()}
        cases = [
            Case(Path(t["image"]).name.split(".")[0], root / t["image"], root / t["label"]) for t in meta["training"]
        ]
        tests = [Case(Path(t).name.split(".")[0], root / t, None) for t in meta.get("test", [])]
        return Dataset(name, root, "msd", labels, cases, tests)
    if "channel_names" in meta and "file_ending" in meta:  # nnU-Net v2
        ending = meta["file_ending"]
        labels = {str(k): _label_values(v) for k, v in meta.get("labels", {}).items()}

        def collect(img_dir: str, lab_dir: str) -> List[Case]:
            out = []
            for img in sorted((root / img_dir).glob(f"*_0000{ending}")):
                case = img.name[: -len(f"_0000{ending}")]
                lab = root / lab_dir / f"{case}{ending}"
                out.append(Case(case, img, lab if lab.exists() or lab_dir == "labelsTr" else None))
            return out

        train = collect("imagesTr", "labelsTr")
        val_names = set(meta.get("validation", []))
        return Dataset(
            name, root, "nnunetv2", labels, [c for c in train if c.name not in val_names],
            collect("imagesTs", "labelsTs"), [c for c in train if c.name in val_names],
            frozenset(meta.get("tumor_free", [])), frozenset(meta.get("organ_free", [])),
        )
    raise DatasetError(f"{meta_path}: neither an MSD nor an nnU-Net v2 dataset.json")


def _check_case(case: Case, allowed: set, organ_free: bool = False) -> List[str]:
    problems = []
    try:
        img, aff = read_nifti(case.image)
    except Exception as e:  # noqa: BLE001 - any reader failure is reported as unreadable
        return [f"{case.name}: image {case.image.name} is unreadable ({type(e).__name__})"]
    if case.label is None or not case.label.exists():
        return problems + [f"{case.name}: label file missing"]
    try:
        lab, laff = read_nifti(case.label)
    except Exception as e:  # noqa: BLE001
        return problems + [f"{case.name}: label {case.label.name} is unreadable ({type(e).__name__})"]
    if img.shape != lab.shape:
        problems.append(f"{case.name}: image grid {img.shape} and label grid {lab.shape} differ")
    elif not np.allclose(aff, laff, atol=1e-3):
        problems.append(f"{case.name}: image and label have different spacing, origin or orientation")
    values = set(np.unique(lab).astype(int).tolist())
    unknown = sorted(values - allowed)
    if unknown:
        problems.append(f"{case.name}: unknown label values {unknown} (dataset.json defines {sorted(allowed)})")
    if values <= {0} and not organ_free:
        problems.append(f"{case.name}: label is empty (only background)")
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    if (spacing < MIN_SPACING_MM).any() or (spacing > MAX_SPACING_MM).any():
        problems.append(
            f"{case.name}: odd spacing {np.round(spacing, 3).tolist()} mm "
            f"(expected {MIN_SPACING_MM}-{MAX_SPACING_MM} mm)"
        )
    directions = np.abs(aff[:3, :3] / np.maximum(spacing, 1e-9))
    if (directions.max(axis=0) < MAX_OBLIQUE_COS).any():
        problems.append(f"{case.name}: oblique orientation (an axis is more than 8 degrees off every patient axis)")
    return problems


def check_dataset(root: str | Path) -> Dataset:
    """Read and check a dataset; raises :class:`DatasetError` listing every problem found."""
    ds = read_dataset(root)
    if not ds.cases:
        raise DatasetError(f"{ds.root}: no training cases found")
    ds.targets  # every label name is understood before any file is read
    allowed = {v for vs in ds.labels.values() for v in vs} | {0}
    problems: List[str] = []
    for case in ds.cases:
        problems += _check_case(case, allowed, case.name in ds.organ_free)
    if problems:
        raise DatasetError(f"dataset {ds.root} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return ds


def load_case(case: Case) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(image HU float32, affine, label or None) of a case."""
    img, aff = read_nifti(case.image)
    lab = read_nifti(case.label)[0] if case.label is not None and case.label.exists() else None
    return img.astype(np.float32), aff, lab
