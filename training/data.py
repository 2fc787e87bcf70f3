"""Training samples: cases on the model grids, crops around organs, prompt augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from tags.config import ModelConfig, TargetSpec
from tags.geometry import spacing_from_affine, to_canonical
from tags.preprocessing import grid_shape, normalize_hu, resample
from tags.prompts import SlicePrompts, derive_prompts

from .datasets import Dataset, LabelledTarget, load_case


BODY_HU = -500.0
"""Voxels above this are body (organ negatives are centred on them)."""
OUTSIDE = "outside:"
"""Key prefix of :meth:`GridCase.body_voxels_outside` in :attr:`GridCase.voxels`."""


@dataclass
class GridCase:
    """One case on one model grid (canonical orientation).

    Attributes:
        image: (D, H, W) float32 HU (normalised per crop, after any synthetic tumor).
        labels: {target name: bool mask}; a tumor-free case has empty tumor masks.
        tumor_free: the dataset says this case holds no tumor (a healthy organ).
    """

    name: str
    image: np.ndarray
    labels: Dict[str, np.ndarray]
    spacing: Tuple[float, float, float]
    tumor_free: bool = False
    voxels: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def label_voxels(self, name: str) -> np.ndarray:
        """Flat indices of the voxels of label ``name`` (computed once, or read from the cache)."""
        if name not in self.voxels:
            self.voxels[name] = np.flatnonzero(self.labels[name])
        return self.voxels[name]

    def body_voxels_outside(self, name: str) -> np.ndarray:
        """Flat indices of body voxels (above -500 HU) outside label ``name``: organ negatives."""
        key = OUTSIDE + name
        if key not in self.voxels:
            self.voxels[key] = np.flatnonzero((np.asarray(self.image) > BODY_HU) & ~np.asarray(self.labels[name]))
        return self.voxels[key]


@dataclass
class Sample:
    target: TargetSpec
    image: torch.Tensor  # (1, D, H, W) in [0, 1]
    organ: Optional[torch.Tensor]  # (1, D, H, W) 0/1, None for organ targets
    label: torch.Tensor  # (1, D, H, W) 0/1
    prompts: Optional[SlicePrompts]

    def pin_memory(self) -> "Sample":
        """The tensors in page-locked memory (a DataLoader's ``pin_memory=True`` calls this)."""
        pin = lambda t: t.pin_memory() if t is not None else None  # noqa: E731
        return replace(self, image=pin(self.image), organ=pin(self.organ), label=pin(self.label))


def target_masks(label: np.ndarray, targets: Mapping[str, LabelledTarget]) -> Dict[str, np.ndarray]:
    """{target name: mask}: the label values of each target (an organ's include its tumors')."""
    return {name: np.isin(label, t.values) for name, t in targets.items()}


def prepare_case(
    image_hu: np.ndarray, affine: np.ndarray, label: np.ndarray, targets: Mapping[str, LabelledTarget],
    model: ModelConfig, name: str, z_range: Optional[Tuple[float, float]] = None,
) -> Dict[str, GridCase]:
    """The case on the tumor grid and on the organ grid: {"tumor": GridCase, "organ": GridCase}.

    ``z_range``: keep only this fraction range of the canonical slices (e.g. (0, 0.6)), for
    splitting one volume into training and held-out parts along z.
    """
    canon, caff, _ = to_canonical(image_hu, affine)
    lab = to_canonical(label, affine)[0]
    if z_range is not None:
        d = canon.shape[0]
        lo, hi = int(round(z_range[0] * d)), int(round(z_range[1] * d))
        canon, lab = canon[lo:hi], lab[lo:hi]
    spacing = spacing_from_affine(caff)
    masks = target_masks(lab, targets)
    out = {}
    for grid, sp in (("tumor", model.preprocessing.spacing), ("organ", model.preprocessing.organ_spacing)):
        shape = grid_shape(canon.shape, spacing, sp)
        img = resample(torch.from_numpy(np.ascontiguousarray(canon, dtype=np.float32)), shape, mode="linear",
                       anti_alias=model.preprocessing.anti_alias)
        labels = {
            k: resample(torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)), shape, mode="nearest").numpy() > 0.5
            for k, m in masks.items()
        }
        real = tuple(n * s / m for n, s, m in zip(canon.shape, spacing, shape))
        out[grid] = GridCase(name, img.numpy(), labels, real)
    return out


def load_training_cases(
    datasets: Sequence[Dataset], model: ModelConfig, z_split: Optional[Dict[str, float]] = None
) -> List[Dict[str, GridCase]]:
    """Every training case of ``datasets`` on both grids. ``z_split[name] = f`` keeps the first
    fraction f of that dataset's slices (canonical order, inferior first) for training."""
    cases = []
    for ds in datasets:
        for case in ds.cases:
            img, aff, lab = load_case(case)
            zr = (0.0, z_split[ds.name]) if z_split and ds.name in z_split else None
            grids = prepare_case(img, aff, lab, ds.targets, model, f"{ds.name}/{case.name}", zr)
            if case.name in ds.tumor_free:
                for gc in grids.values():
                    mark_tumor_free(gc, model.tumor_targets)
            cases.append(grids)
    return cases


def mark_tumor_free(case: GridCase, tumors: Sequence[TargetSpec]) -> None:
    """Give a healthy case an empty mask for every tumor target whose organ it labels."""
    case.tumor_free = True
    for t in tumors:
        if t.organ in case.labels and t.name not in case.labels:
            case.labels[t.name] = np.zeros(case.image.shape, bool)


PAD_HU = -1024.0
"""What a crop holds where it leaves the volume (air)."""


def _crop(
    arrays: Sequence[np.ndarray], centre: Sequence[int], size: Sequence[int], fills: Sequence[float] = ()
) -> List[np.ndarray]:
    """Crops of ``size`` centred near ``centre``, padded with ``fills`` (default 0) where they
    leave the volume."""
    shape = arrays[0].shape
    out = []
    starts = [int(c) - s // 2 for c, s in zip(centre, size)]
    for i, a in enumerate(arrays):
        buf = np.full(tuple(size), fills[i] if i < len(fills) else 0, a.dtype)
        src = tuple(slice(max(0, st), min(n, st + s)) for st, s, n in zip(starts, size, shape))
        dst = tuple(slice(sl.start - st, sl.stop - st) for sl, st in zip(src, starts))
        buf[dst] = a[src]
        out.append(buf)
    return out


def augment_intensity(image: torch.Tensor, seed: int) -> torch.Tensor:
    """MONAI intensity augmentation of a (1, D, H, W) crop in [0, 1], deterministic for ``seed``.

    No flips or rotations: the model relies on the canonical orientation. Noise up to 0.06 of
    the window (24 HU in the 400 HU window: a thin-slice portal venous series) and mild blur
    (a smoother reconstruction kernel), so that parenchyma mottled by noise is not taken for a
    lesion.
    """
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandScaleIntensity,
        RandShiftIntensity,
    )
    from monai.utils import convert_to_tensor

    t = Compose([
        RandScaleIntensity(factors=0.1, prob=0.5),
        RandShiftIntensity(offsets=0.05, prob=0.5),
        RandAdjustContrast(gamma=(0.8, 1.25), prob=0.3),
        RandGaussianSmooth(sigma_x=(0.25, 0.8), sigma_y=(0.25, 0.8), sigma_z=(0.25, 0.8), prob=0.15),
        RandGaussianNoise(std=0.06, prob=0.4, sample_std=True),
    ])
    t.set_random_state(seed=seed)
    # A plain tensor, not a MetaTensor: MetaTensor's __torch_function__ would follow every op of
    # the network forward and backward.
    return convert_to_tensor(t(image), track_meta=False).float().clamp(0, 1)


def augment_prompts(p: SlicePrompts, rng: np.random.Generator, *, drop: float, jitter: float, img_size: int) -> SlicePrompts:
    """Box jitter (fraction of box size), and each prompt type dropped with probability ``drop``."""
    boxes = p.boxes.clone()
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2).clamp(min=1.0)
    boxes = (boxes + torch.from_numpy(rng.normal(0, jitter, boxes.shape).astype(np.float32)) * wh).clamp(0, img_size - 1)
    box_valid = p.box_valid & (rng.random() >= drop)
    labels = p.point_labels if rng.random() >= drop else torch.full_like(p.point_labels, -1)
    dense = p.dense if rng.random() >= drop else None
    return SlicePrompts(boxes, box_valid, p.points, labels, dense)


@dataclass(frozen=True)
class SamplingConfig:
    """What one training step draws.

    Args:
        organ_fraction: probability of an organ-target sample (when tumor targets exist too).
        negative_fraction: tumor samples that are crops of a healthy organ, label empty.
        synthetic_fraction: tumor samples with synthetic tumors inserted into a healthy organ
            (:class:`training.synthetic_tumors.SynthesizeLiverTumors`); the rest are real tumors.
        organ_negative_fraction: organ samples centred on body voxels outside the organ (the
            thorax above a liver, the pelvis below it), label what little organ lies in the crop.
        organ_synthetic_fraction: organ samples of a tumor-free organ with synthetic tumors
            (:data:`ORGAN_SYNTHETIC_CLASSES`) inserted, the organ label unchanged: a tumor is
            part of its organ, so the organ pass learns to keep a liver full of tumors whole.
        prompt_drop, box_jitter: prompt augmentation (:func:`augment_prompts`).
        phase_probability, phase_hu: contrast-phase augmentation (:func:`shift_organ_hu`): with
            this probability the organ's median HU in the crop is moved to a value drawn from
            ``phase_hu``, tumors inside it moving along (their contrast to the organ is kept), so
            that a healthy liver is not told from a tumor by its absolute HU (unenhanced livers
            lie near 50 HU, portal venous ones near 90-130 HU).
    """

    organ_fraction: float = 0.3
    negative_fraction: float = 0.0
    synthetic_fraction: float = 0.0
    organ_negative_fraction: float = 0.0
    organ_synthetic_fraction: float = 0.0
    prompt_drop: float = 0.2
    box_jitter: float = 0.05
    phase_probability: float = 0.0
    phase_hu: Tuple[float, float] = (40.0, 140.0)


ORGAN_SYNTHETIC_CLASSES = ("medium", "large")
"""Synthetic tumor size classes of organ samples: tiny and small ones are a voxel or two on the
coarse organ grid."""


def shift_organ_hu(image_hu: np.ndarray, organ: np.ndarray, target_hu: float, spacing: Sequence[float]) -> np.ndarray:
    """``image_hu`` with the organ's median HU moved to ``target_hu``: an offset applied inside
    the organ, its edge blurred over about 1.5 mm (no step at the label's border)."""
    from scipy import ndimage

    if not organ.any():
        return image_hu
    offset = float(target_hu) - float(np.median(image_hu[organ]))
    weight = ndimage.gaussian_filter(organ.astype(np.float32), [1.5 / s for s in spacing])
    return (image_hu + offset * weight).astype(np.float32)


def _pick(pool: List[GridCase], rng: np.random.Generator) -> GridCase:
    return pool[rng.integers(len(pool))]


def _random_voxel(flat: np.ndarray, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """One of the voxels ``flat`` (flat indices into ``shape``), drawn with ``rng``."""
    return np.array(np.unravel_index(int(flat[rng.integers(len(flat))]), tuple(shape)))


def _tumor_free_organ(gc: GridCase, organ: str, tumors: Sequence[TargetSpec]) -> bool:
    """``gc`` labels ``organ`` and no tumor in it (listed as tumor-free, or every tumor target of
    the organ it labels is empty)."""
    if not len(gc.label_voxels(organ)):
        return False
    return gc.tumor_free or not any(len(gc.label_voxels(t.name)) for t in tumors
                                    if t.organ == organ and t.name in gc.labels)


def draw_sample(
    cases: List[Dict[str, GridCase]], targets: Sequence[TargetSpec], model: ModelConfig, rng: np.random.Generator,
    *, sampling: SamplingConfig, img_size: int, mask_size: int, crop_size: Optional[Sequence[int]] = None,
) -> Sample:
    """One random training sample: a target, a case that labels it, a crop around its organ.

    Tumor targets draw a real tumor case, a healthy organ with synthetic tumors or a healthy
    organ as it is (``sampling``); organ targets a crop around the organ or, as negatives, one
    centred elsewhere in the body.
    """
    organs = [t for t in targets if t.kind == "organ"]
    tumors = [t for t in targets if t.kind == "tumor"]
    use_organ = bool(organs) and (not tumors or rng.random() < sampling.organ_fraction)
    pool = organs if use_organ else tumors
    grid = "organ" if use_organ else "tumor"
    t = pool[rng.integers(len(pool))]
    labelled = [c[grid] for c in cases if t.name in c[grid].labels and (use_organ or t.organ in c[grid].labels)]
    if not labelled:
        raise ValueError(f"no training case labels the target {t.name!r}")
    synthetic = organ_synthetic = False
    if use_organ:
        gc = _pick(labelled, rng)
        label = gc.labels[t.name]
        organ = None
        if rng.random() < sampling.organ_negative_fraction and len(gc.body_voxels_outside(t.name)):
            centre = _random_voxel(gc.body_voxels_outside(t.name), gc.image.shape, rng)
        else:
            organ_synthetic = (sampling.organ_synthetic_fraction > 0 and _tumor_free_organ(gc, t.name, tumors)
                               and rng.random() < sampling.organ_synthetic_fraction)
            if len(gc.label_voxels(t.name)) and (organ_synthetic or rng.random() < 0.7):
                centre = _random_voxel(gc.label_voxels(t.name), gc.image.shape, rng)
            else:
                centre = np.array([rng.integers(n) for n in gc.image.shape])
    else:
        # Healthy: listed as tumor-free, or labelling the tumor target with no tumor voxel.
        healthy = [c for c in labelled if _tumor_free_organ(c, t.organ, [t])]
        real = [c for c in labelled if len(c.label_voxels(t.name))] or labelled
        r = rng.random()
        synthetic = bool(healthy) and r < sampling.synthetic_fraction
        negative = bool(healthy) and not synthetic and r < sampling.synthetic_fraction + sampling.negative_fraction
        gc = _pick(healthy if (synthetic or negative) else real, rng)
        label, organ = gc.labels[t.name], gc.labels[t.organ]
        focus = t.name if (len(gc.label_voxels(t.name)) and rng.random() < 0.7) else t.organ
        centre = (_random_voxel(gc.label_voxels(focus), gc.image.shape, rng) if len(gc.label_voxels(focus))
                  else np.array([rng.integers(n) for n in gc.image.shape]))
    size = tuple(crop_size or (model.organ_roi_size if use_organ else model.roi_size))
    arrays = [gc.image, label] + ([organ] if organ is not None else [])
    crops = _crop(arrays, centre, size, fills=(PAD_HU,))
    image_hu, label_crop = crops[0], crops[1]
    region = crops[2] if organ is not None else (crops[1] if use_organ else None)
    if region is not None and region.any() and rng.random() < sampling.phase_probability:
        image_hu = shift_organ_hu(image_hu, region > 0.5, rng.uniform(*sampling.phase_hu), gc.spacing)
    if synthetic or organ_synthetic:
        from .synthetic_tumors import SynthesizeLiverTumors

        synth = SynthesizeLiverTumors(prob=1.0, **({"choices": ORGAN_SYNTHETIC_CLASSES} if organ_synthetic else {}))
        synth.set_random_state(seed=int(rng.integers(2**31)))
        image_hu, tumor_crop = synth(image_hu, crops[2] if synthetic else label_crop > 0.5, gc.spacing)
        if synthetic:
            label_crop = tumor_crop
    prompts = None
    if organ is not None:
        p = derive_prompts(crops[2], gc.spacing, img_size=img_size, mask_size=mask_size,
                           config=model.prompts, seed=int(rng.integers(2**31)))
        prompts = augment_prompts(p, rng, drop=sampling.prompt_drop, jitter=sampling.box_jitter, img_size=img_size)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
    image = normalize_hu(image_hu, model.preprocessing.hu_window)
    return Sample(t, as_t(image), as_t(crops[2]) if organ is not None else None, as_t(label_crop), prompts)
