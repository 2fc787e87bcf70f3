"""Model configuration: the single definition of everything training and inference share.

A :class:`ModelConfig` is written to ``config.json`` in the model folder and read back by the
predictor, so preprocessing, the model grid and the targets are never copied between scripts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

FORMAT_VERSION = 9
"""Version of the model-folder format this code writes (2: ``text_alignment`` and
``lesion_decision`` in config.json; 3: ``preprocessing.anti_alias``; 4: ``organ_boundary``;
5: the encoder's 3D adapters trained and in weights.safetensors: up to version 4 they were frozen
by mistake, stayed the identity they are initialised to, and were not written;
6: ``lesion_decision.min_depth_mm``; 7: ``adapter.for_organs``; 8: ``organ_pass`` and the nested
organ model folder; 9: ``organ_pass`` "near_union" and ``organ_near_mm``)."""
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
"""Versions this code reads (a version-1 folder gets the defaults of the newer keys)."""
UNTRAINED_ADAPTERS_BEFORE = 5
"""Folders of a version below this hold no adapter weights; their adapters are the identity."""


def check_format_version(version: Any) -> None:
    """Raise a ValueError naming ``version`` unless this code reads it (:data:`READABLE_VERSIONS`)."""
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"format version {version!r} is not supported by this code "
            f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM code sequence item), e.g. a SNOMED CT code."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class TargetSpec:
    """One structure the model segments.

    Args:
        name: short identifier, e.g. ``"liver_tumor"``.
        kind: ``"tumor"`` (needs an organ mask as anatomy prompt) or ``"organ"`` (text prompt only,
            segmented on the coarse organ grid).
        sentence: the text prompt, e.g. ``"a computerized tomography of a liver tumor"``.
        organ: for a tumor, the name of the organ target whose mask gives its anatomy prompts.
        category: SNOMED CT segmentation category (e.g. 49755003 Morphologically abnormal structure).
        type: SNOMED CT segmented property type.
        label_value: label value of this target in training label maps of the source dataset.
    """

    name: str
    kind: str
    sentence: str
    category: Code
    type: Code
    organ: Optional[str] = None
    label_value: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in ("tumor", "organ"):
            raise ValueError(f"target {self.name!r}: kind must be 'tumor' or 'organ', not {self.kind!r}")
        if self.kind == "tumor" and not self.organ:
            raise ValueError(f"target {self.name!r}: a tumor target needs the name of its organ")


@dataclass(frozen=True)
class AdapterConfig:
    """3D adapters inserted in the frozen 2D encoder.

    Args:
        bottleneck: hidden width of each adapter (Linear C->bottleneck->C).
        kernel_depth: depth of the depth-wise Conv3d across neighbouring slabs (odd).
        slab_size: neighbouring slices grouped into one encoder image ("token slab"). 1 encodes
            every slice; k encodes one image per k slices (cost / k).
        for_organs: the adapters also run in organ targets' windows. Off, an organ target sees
            the pretrained encoder's features (the adapters are the identity for it and learn from
            tumor targets only): in one demo build that kept the organ pass's liver Dice (0.962
            against 0.920) and lost tumor Dice (0.783 against 0.859) (docs/accuracy.md, "Adapters
            for tumors only"). Folders of format version 6 and below had them on.
    """

    bottleneck: int = 32
    kernel_depth: int = 3
    slab_size: int = 4
    for_organs: bool = True

    def runs_for(self, kind: str) -> bool:
        """Whether the adapters run in the windows of a target of ``kind`` ("organ" or "tumor")."""
        return kind != "organ" or self.for_organs


@dataclass(frozen=True)
class PreprocessingConfig:
    """Intensity and grid preprocessing, applied identically in training and inference.

    Args:
        hu_window: (low, high) HU clip; values are then mapped linearly to [0, 1] (the
            LiteMedSAM/MedSAM convention for CT).
        spacing: model grid spacing (z, y, x) in mm for tumor targets.
        organ_spacing: coarse grid spacing (z, y, x) in mm for the organ pass. 6 mm between
            slices costs two thirds of the organ pass; the demo model built on it was worse
            (docs/accuracy.md, "Organ grid and the spread between builds").
        margin_mm: margin added around the organ bounding box before cropping the ROI.
        anti_alias: the CT is Gaussian-filtered along every axis it is downsampled on before
            it is resampled to a model grid (:func:`tags.preprocessing.resample`), in training
            and at inference alike. Off for models trained without it (format version < 3).
    """

    hu_window: Tuple[float, float] = (-160.0, 240.0)
    spacing: Tuple[float, float, float] = (1.5, 1.5, 1.5)
    organ_spacing: Tuple[float, float, float] = (4.0, 3.0, 3.0)
    margin_mm: float = 10.0
    anti_alias: bool = False

    def __post_init__(self) -> None:
        for name in ("spacing", "organ_spacing"):
            grid = getattr(self, name)
            if len(grid) != 3 or not all(v > 0 for v in grid):
                raise ValueError(f"{name} needs three spacings (z, y, x) in mm above 0, not {list(grid)}")


@dataclass(frozen=True)
class PromptConfig:
    """How anatomy prompts are derived from an organ mask (per slice)."""

    num_positive: int = 3
    num_negative: int = 3
    ring_mm: float = 10.0
    mask_logit: float = 4.0


@dataclass(frozen=True)
class LesionDecision:
    """Which connected components (26-connected, model output >= 0.5) of a tumor target are kept.

    A component is kept when its highest probability reaches ``min_max_probability``, its
    volume ``min_volume_ml`` and, if set, its contrast ``min_contrast_hu`` (the organ's median HU
    outside all candidates minus the component's median HU: how much darker than the parenchyma
    it is; the demo model knows only hypodense tumors) and, if set, its depth ``min_depth_mm``
    (how far its deepest voxel lies inside the organ mask: the organ pass's mask can take in a
    neighbour's edge, such as fluid in the stomach beside the liver, where the tumor pass finds
    a dark "lesion"; a tumor inside the organ that touches its surface reaches that depth once
    its diameter does); the rest are removed from the mask before anything is written, so the
    SEG, the SR, the JSON and ``tags-train evaluate`` see the same lesions. Chosen on validation
    cases only (``chosen_on`` says which and how); the defaults keep everything.
    """

    min_max_probability: float = 0.5
    min_volume_ml: float = 0.0
    min_contrast_hu: Optional[float] = None
    chosen_on: str = "default (no decision: every component kept)"
    min_depth_mm: Optional[float] = None


@dataclass(frozen=True)
class OrganBoundary:
    """How the organ pass's mask is grown to the organ's edge on the CT grid
    (:func:`tags.organ_boundary.refine_boundary`): voxels within ``band_mm`` of the mask whose HU
    lies within ``hu_sigmas`` robust standard deviations of the organ's interior HU are added.
    Chosen on labelled non-test cases (``chosen_on`` says which and how)."""

    band_mm: float = 3.0
    hu_sigmas: float = 2.5
    chosen_on: str = "default"

    def __post_init__(self) -> None:
        if self.band_mm < 0 or self.hu_sigmas <= 0:
            raise ValueError(f"organ_boundary needs band_mm >= 0 and hu_sigmas > 0, not {self.band_mm} and "
                             f"{self.hu_sigmas}")


ORGAN_PASSES = ("own", "organ_model", "union", "near_union")
"""The values of :attr:`ModelConfig.organ_pass`; all but "own" need a nested organ model folder."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a TAGS model except its weights.

    Args:
        backbone: key of the backbone registry (``"litemedsam"`` or ``"sam_vit_b"``).
        encoder_size: encoder input side; None: the backbone's native size (256 LiteMedSAM,
            1024 SAM ViT-B).
        roi_size: model window (D, H, W) in voxels of the model grid.
        organ_roi_size: window (D, H, W) for the coarse organ pass.
        head_channels: width of the 3D head.
        train_mask_decoder: fine-tune SAM's mask decoder too (default: it stays frozen and only
            adapters, prompt fusion, text projection and head train).
        fusion_heads: attention heads of the prompt fusion.
        text_encoder: name of the text encoder that made the stored embeddings.
        text_dim: width of those embeddings.
        text_alignment: the network has TAGS' text-alignment branch (trained with it; see
            :mod:`tags.alignment`). Inference does not use it.
        targets: the structures this model segments.
        lesion_decision: which connected components of a tumor mask count as lesions.
        organ_boundary: how organ masks are grown to the organ's edge on the CT grid (None: the
            organ pass's mask as it is).
        organ_bounds: plausibility bounds of the organ masks that tumor targets search in
            ({organ: {"ml": [lo, hi], "hu": [lo, hi], "side": "right"|"left"|None}}); None: the
            library's bounds (:data:`tags.plausibility.ORGAN_BOUNDS`); {}: no check (e.g. a test
            model whose organ pass is untrained).
        organ_pass: which network finds the organs (:data:`ORGAN_PASSES`): ``"own"`` this one;
            ``"organ_model"`` the model folder's nested organ model; ``"union"`` both, an organ
            voxel being one either finds (the higher of the two probabilities); ``"near_union"``
            this network's organ with the nested model's voxels within ``organ_near_mm`` of it
            (the nested model fills the organ's edge, but reaches no further than that distance).
        organ_near_mm: the distance (mm, on the organ grid) of ``"near_union"``.
    """

    backbone: str = "litemedsam"
    encoder_size: Optional[int] = None
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    roi_size: Tuple[int, int, int] = (64, 128, 128)
    organ_roi_size: Tuple[int, int, int] = (32, 128, 128)
    head_channels: int = 16
    fusion_heads: int = 8
    train_mask_decoder: bool = False
    text_encoder: str = "minilm"
    text_dim: int = 384
    text_alignment: bool = False
    targets: Tuple[TargetSpec, ...] = ()
    lesion_decision: LesionDecision = field(default_factory=LesionDecision)
    organ_boundary: Optional[OrganBoundary] = None
    organ_bounds: Optional[Dict[str, Dict[str, Any]]] = None
    organ_pass: str = "own"
    organ_near_mm: float = 20.0
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.encoder_size is not None and self.encoder_size <= 0:
            raise ValueError(f"encoder_size must be a positive number of pixels, not {self.encoder_size}")
        if self.organ_pass not in ORGAN_PASSES:
            raise ValueError(f"organ_pass must be one of {list(ORGAN_PASSES)}, not {self.organ_pass!r}")
        if not self.organ_near_mm > 0:
            raise ValueError(f"organ_near_mm must be a positive distance in mm, not {self.organ_near_mm}")

    def target(self, name: str) -> TargetSpec:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"model has no target {name!r}; it has {[t.name for t in self.targets]}")

    @property
    def tumor_targets(self) -> List[TargetSpec]:
        return [t for t in self.targets if t.kind == "tumor"]

    @property
    def organ_targets(self) -> List[TargetSpec]:
        return [t for t in self.targets if t.kind == "organ"]

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        check_format_version(d.get("format_version"))
        d = dict(d)
        d["format_version"] = FORMAT_VERSION  # read as the current version (newer keys default)
        d["adapter"] = AdapterConfig(**d.get("adapter", {}))
        pre = dict(d.get("preprocessing", {}))
        for k in ("hu_window", "spacing", "organ_spacing"):
            if k in pre:
                pre[k] = tuple(float(v) for v in pre[k])
        d["preprocessing"] = PreprocessingConfig(**pre)
        d["prompts"] = PromptConfig(**d.get("prompts", {}))
        d["lesion_decision"] = LesionDecision(**d.get("lesion_decision", {}))
        if d.get("organ_boundary") is not None:
            d["organ_boundary"] = OrganBoundary(**d["organ_boundary"])
        for k in ("roi_size", "organ_roi_size"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        d["targets"] = tuple(
            TargetSpec(
                **{**t, "category": Code(**t["category"]), "type": Code(**t["type"])}
            )
            for t in d.get("targets", [])
        )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config.json has unknown keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))
