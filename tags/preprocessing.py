"""Preprocessing defined once, for training and inference alike: HU window, ROI crop, resampling.

All functions take canonical-orientation arrays (see :mod:`tags.geometry`) indexed (D, H, W)
with spacing (z, y, x) in mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .geometry import Reorientation

Box = Tuple[slice, slice, slice]


def normalize_hu(volume_hu: np.ndarray | torch.Tensor, window: Sequence[float]):
    """Clip to the HU window and map it linearly to [0, 1] (float32; a tensor stays a tensor).

    MONAI's ``ScaleIntensityRange`` (clip=True): bit-identical to clip-then-scale on real CT
    (tests/test_library_equivalence.py). MONAI is imported inside the functions, not with this module, because
    importing it also imports the MONAI Deploy SDK.
    """
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRange

    lo, hi = float(window[0]), float(window[1])
    scale = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    if isinstance(volume_hu, torch.Tensor):
        out = scale(volume_hu.float())
        return out.as_tensor() if isinstance(out, MetaTensor) else out
    out = scale(np.asarray(volume_hu, dtype=np.float32))
    return out.numpy(force=True) if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32)


def bounding_box(mask: np.ndarray, margin_mm: float, spacing: Sequence[float]) -> Optional[Box]:
    """Bounding box of a mask grown by ``margin_mm`` on every side, clipped to the array.

    Returns None for an empty mask. MONAI's ``generate_spatial_bounding_box`` with the margin in
    voxels, ceil(margin_mm / spacing) per axis (the same boxes on real CT masks:
    tests/test_library_equivalence.py).
    """
    from monai.transforms.utils import generate_spatial_bounding_box

    mask = np.asarray(mask)
    if not mask.any():
        return None
    margin = [int(np.ceil(margin_mm / spacing[axis])) for axis in range(3)]
    start, end = generate_spatial_bounding_box(mask[None], select_fn=lambda m: m != 0, margin=margin, allow_smaller=True)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, end))


def largest_component(mask: np.ndarray) -> Tuple[np.ndarray, int, int]:
    """(label image, number of components, label of the largest) of the 6-connected components
    of the bool ``mask``; the label is 0 when there is none."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return labels, 0, 0
    return labels, n, 1 + int(np.argmax(np.bincount(labels.ravel(), minlength=n + 1)[1:]))


def grid_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Tuple[int, int, int]:
    """Shape of the same field of view sampled at ``target`` spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def anti_alias_sigmas(shape_in: Sequence[int], shape_out: Sequence[int]) -> Tuple[float, float, float]:
    """Gaussian sigma per axis (input voxels) before downsampling ``shape_in`` to ``shape_out``:
    (f - 1) / 2 for a downsampling factor f > 1 (scikit-image's ``rescale`` rule), 0 elsewhere."""
    return tuple(max(0.0, (n / m - 1.0) / 2.0) for n, m in zip(shape_in, shape_out))


def _smoothed(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """(1, C, D, H, W) ``x`` blurred by a separable Gaussian of ``sigmas`` (voxels per axis; 0:
    that axis untouched), edges replicated (MONAI's separable filtering)."""
    from monai.networks.layers import gaussian_1d, separable_filtering

    kernels = [gaussian_1d(torch.tensor(s), normalize=True).to(x) if s > 0 else torch.ones(1).to(x)
               for s in sigmas]
    return separable_filtering(x, kernels, mode="replicate")


def resample(array: torch.Tensor, shape: Sequence[int], *, mode: str, anti_alias: bool = False) -> torch.Tensor:
    """Resample a (D, H, W) or (C, D, H, W) tensor to ``shape`` over the same field of view.

    ``mode``: "linear" (trilinear, voxel centres kept, ``align_corners=False``) or "nearest".
    ``anti_alias`` (linear only): along every axis that is downsampled, a Gaussian pre-filter
    (:func:`anti_alias_sigmas`) first, so detail finer than the new grid is averaged instead of
    aliased (a model folder says whether its grids were made so,
    ``PreprocessingConfig.anti_alias``). Same shape in, same tensor out (no copy, no
    interpolation error).
    """
    if tuple(array.shape[-3:]) == tuple(shape):
        return array
    squeeze = array.dim() == 3
    x = array[None, None] if squeeze else array[None]
    if mode == "linear":
        sigmas = anti_alias_sigmas(x.shape[-3:], shape) if anti_alias else (0.0, 0.0, 0.0)
        if any(sigmas):
            x = _smoothed(x.float(), sigmas)
        y = F.interpolate(x.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    elif mode == "nearest":
        y = F.interpolate(x.float(), size=tuple(shape), mode="nearest-exact")
    else:
        raise ValueError(f"unknown resampling mode {mode!r}")
    return y[0, 0] if squeeze else y[0]


# -- whole-volume preparation (model independent) -------------------------------------------------

BODY_HU = -500.0
"""Voxels above this HU count as body (or table) for the body bounding box."""


class CTInputError(ValueError):
    """A CT volume that cannot be processed; the message names the problem."""


@dataclass
class PreparedCT:
    """A CT volume in canonical orientation with its geometry, before any model-specific step.

    Attributes:
        hu: (D, H, W) float32 HU, canonical orientation (d -> +z, h -> +y, w -> +x).
        affine: canonical (d, h, w, 1) -> LPS mm.
        reorientation: maps the source array to ``hu`` and back (:meth:`to_source`).
        spacing: (z, y, x) mm, floats.
        body_box: canonical box around voxels above :data:`BODY_HU` (the whole volume if none).
    """

    hu: np.ndarray
    affine: np.ndarray
    reorientation: "Reorientation"
    spacing: Tuple[float, float, float]
    body_box: Box

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """A canonical (D, H, W) array back in the source slice/row/column order."""
        return np.ascontiguousarray(self.reorientation.invert(array))

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


def check_hu(volume: np.ndarray) -> None:
    """Refuse values that cannot be Hounsfield units (raw stored values, NaN, wrong modality).

    CT in HU spans air (-1000) to dense bone/metal (a few thousand); raw 12-bit stored values
    without the rescale intercept are all >= 0 with soft tissue near 1000.
    """
    if not np.isfinite(volume).all():
        raise CTInputError("the CT volume contains NaN or infinite values")
    lo, med, hi = (float(v) for v in np.percentile(volume[:: max(1, volume.shape[0] // 16)], [0.5, 50, 99.5]))
    # Padding outside the reconstruction circle is often -2048 or -3024 and metal can exceed
    # 3000 (extended HU), so only a median far from body values is refused.
    if not -2000 <= med <= 1500:
        raise CTInputError(f"median pixel value {med:.0f} is not a Hounsfield value of a body CT (wrong rescale or modality?)")
    if lo >= 0 and med > 500:
        raise CTInputError(
            f"pixel values {lo:.0f}..{hi:.0f} (median {med:.0f}) look like raw stored values, not Hounsfield units "
            "(missing RescaleIntercept?)"
        )


def prepare_ct(volume_hu: np.ndarray, affine: np.ndarray) -> PreparedCT:
    """Canonical orientation, HU check and body box of a (D, H, W) HU volume with its affine."""
    from .geometry import spacing_from_affine, to_canonical

    vol = np.asarray(volume_hu, dtype=np.float32)
    check_hu(vol)
    canon, canon_affine, reo = to_canonical(vol, affine)
    canon = np.ascontiguousarray(canon)
    spacing = spacing_from_affine(canon_affine)
    body = bounding_box(canon > BODY_HU, 0.0, spacing)
    full = tuple(slice(0, n) for n in canon.shape)
    return PreparedCT(canon, canon_affine, reo, spacing, body or full)
