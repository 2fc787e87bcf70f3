"""Dataset readers (Medical Segmentation Decathlon and nnU-Net v2 raw layouts), the target
table mapping each dataset's label values to TAGS targets, and the dataset sanity check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from tags.config import TargetSpec
from tags.targets import organ_target, tumor_target

from .samples import read_nifti

# Label value -> target, per dataset (by its dataset.json name or folder name).
TARGET_TABLE: Dict[str, Dict[int, TargetSpec]] = {
    "Task03_Liver": {1: organ_target("liver", 1), 2: tumor_target("liver", 2)},
    "KiTS": {1: organ_target("kidney", 1), 2: tumor_target("kidney", 2)},
    "Task07_Pancreas": {1: organ_target("pancreas", 1), 2: tumor_target("pancreas", 2)},
    # MSD Colon labels only the tumor; its organ mask must come from elsewhere (e.g. TotalSegmentator).
    "Task10_Colon": {1: tumor_target("colon", 1)},
    "LiTS117": {1: organ_target("liver", 1), 2: tumor_target("liver", 2)},
    "TotalSegLiver": {1: organ_target("liver", 1)},
}

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
    labels: Dict[int, str]
    cases: List[Case]
    test_cases: List[Case] = field(default_factory=list)
    validation_cases: List[Case] = field(default_factory=list)
    tumor_free: frozenset = frozenset()
    organ_free: frozenset = frozenset()

    @property
    def targets(self) -> Dict[int, TargetSpec]:
        for key in (self.name, self.root.name):
            for table_key, table in TARGET_TABLE.items():
                if key == table_key or key.endswith(table_key) or table_key in key:
                    return table
        raise DatasetError(
            f"dataset {self.name!r} is not in the target table; known: {sorted(TARGET_TABLE)}"
        )


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
        labels = {int(k): str(v) for k, v in meta.get("labels", {}).items()}
        cases = [
            Case(Path(t["image"]).name.split(".")[0], root / t["image"], root / t["label"]) for t in meta["training"]
        ]
        tests = [Case(Path(t).name.split(".")[0], root / t, None) for t in meta.get("test", [])]
        return Dataset(name, root, "msd", labels, cases, tests)
    if "channel_names" in meta and "file_ending" in meta:  # nnU-Net v2
        ending = meta["file_ending"]
        labels = {int(v): str(k) for k, v in meta.get("labels", {}).items()}

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
    allowed = set(ds.labels) | {0}
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
