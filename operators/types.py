"""The result types passed between the operators, without the MONAI Deploy SDK.

The operators (SDK) and the plain writers (:mod:`operators.seg_writer`,
:mod:`operators.lesion_report`, :mod:`operators.preview`) share these types; importing this
module imports neither ``monai.deploy`` nor ``holoscan`` (tests/test_library_equivalence.py
checks it), so the writers can be used and tested without the SDK.

Stage timings travel with the CT (:attr:`CTSeries.timings`): every operator times its stage
the same way, ``with ct.timings.stage("organs"): ...``, and the SEG writer reports them in
tags_results.json ("timings_s").
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from tags.config import TargetSpec
    from tags.preprocessing import PreparedCT

DISPLAY_RGB = {"tumor": (255, 40, 40), "organ": (0, 220, 0)}
"""Display colour per target kind: the preview's contours and the SEG's Recommended Display
CIELab Value, so a viewer shows the same colours as the preview (tumors red, organs green)."""


@dataclass
class StageTimings:
    """Seconds per stage of one run, in the order the stages finished.

    Stages: "startup" (the run's start to the first operator's compute: for ``python app`` the
    process start, so imports, the SDK's graph and the model's load), "load" (the study's files
    read into the selected series' volume), "preprocess", "organs", "tumors", "write". A stage
    that raised is not recorded. The model stages also record the sliding windows they ran per
    target (:meth:`add_windows`): the work behind their seconds.
    """

    seconds: Dict[str, float] = field(default_factory=dict)
    windows: Dict[str, Dict[str, dict]] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name``."""
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0

    def record(self, name: str, seconds: float) -> None:
        """A stage timed elsewhere (start-up and load, from clock readings other operators took)."""
        self.seconds[name] = seconds

    def add_windows(self, stage: str, target: str, count: int, shape: Sequence[int],
                    nested: Optional[Tuple[int, Sequence[int]]] = None,
                    rows: Optional[Tuple[int, int]] = None) -> None:
        """Stage ``stage`` ran ``count`` model windows of (d, h, w) ``shape`` for ``target``, and
        ``nested`` = (count, shape) on the model folder's nested organ model beside them; ``rows``
        = (window rows run, rows of the ROI) when the organ search stopped at the organ's extent
        or ran every row of several."""
        entry = {"count": int(count), "shape": [int(n) for n in shape]}
        if rows is not None:
            entry["rows"] = {"run": int(rows[0]), "of": int(rows[1])}
        if nested is not None:
            entry["organ_model"] = {"count": int(nested[0]), "shape": [int(n) for n in nested[1]]}
        self.windows.setdefault(stage, {})[target] = entry

    def __getitem__(self, name: str) -> float:
        return self.seconds[name]

    def rounded(self, digits: int = 2) -> Dict[str, float]:
        """As written to tags_results.json."""
        return {k: round(v, digits) for k, v in self.seconds.items()}

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())


@dataclass(frozen=True)
class SkippedFile:
    """A file of the input that was not loaded: its name, why, and whether it looked like a
    DICOM file (a damaged one) rather than something else."""

    name: str
    reason: str
    damaged_dicom: bool

    def to_dict(self) -> dict:
        return {"file": self.name, "reason": self.reason, "damaged_dicom": self.damaged_dicom}


@dataclass
class CTSeries:
    """The selected CT series, prepared for the model.

    Attributes:
        prepared: canonical HU volume, affine, reorientation, spacing, body box.
        datasets: the source pydicom datasets in the SDK volume's slice order (index d of the
            source array; :meth:`PreparedCT.to_source` maps canonical arrays to that order).
        study_uid, series_uid: of the source series.
        label: a log-safe description (series number, slice count, grid; no identifiers).
        timings: seconds per stage, recorded by the operators as the data passes.
        skipped_files: files of the input the loader could not parse (:class:`SkippedFile`),
            reported in tags_results.json.
    """

    prepared: "PreparedCT"
    datasets: list
    study_uid: str
    series_uid: str
    label: str
    timings: StageTimings = field(default_factory=StageTimings)
    skipped_files: List[SkippedFile] = field(default_factory=list)


@dataclass
class OrganMasks:
    """Organ masks on the canonical grid of the CT, with where each came from.

    Attributes:
        masks: {organ name: (D, H, W) bool, canonical}.
        sources: {organ name: "model" or a description of the study SEG}.
    """

    masks: Dict[str, np.ndarray]
    sources: Dict[str, str]


@dataclass
class TargetOutcome:
    """One segmented structure.

    Attributes:
        mask: (D, H, W) bool on the canonical grid of the CT.
        status: "ok", "organ_absent" (the organ mask was empty) or "organ_implausible" (the
            mask was not plausibly the organ); in both latter cases nothing was searched and
            ``reason`` says why. An organ's own outcome takes that status and reason, with an
            empty mask, when the tumor search refused its mask.
        organ_source: where the organ mask (anatomy prompt) came from.
    """

    target: "TargetSpec"
    mask: np.ndarray
    status: str
    organ_source: str
    voxel_ml: float
    reason: Optional[str] = None

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def display_rgb(self) -> Tuple[int, int, int]:
        """The colour this structure is drawn in (:data:`DISPLAY_RGB` of its kind)."""
        return DISPLAY_RGB[self.target.kind]

    @property
    def ml(self) -> float:
        return self.voxels * self.voxel_ml


@dataclass
class Segmentation:
    """Everything the writers need: the CT, tumor outcomes, organ outcomes, model identity,
    the model's HU window (``ModelConfig.preprocessing.hu_window``, for the preview) and where
    the model ran (``runtime``: device and precision)."""

    ct: CTSeries
    tumors: List[TargetOutcome]
    organs: List[TargetOutcome]
    model_name: str
    model_version: str
    hu_window: Tuple[float, float]
    runtime: Dict[str, str] = field(default_factory=dict)
