"""Synthetic hypodense liver tumors on healthy livers (a random transform in MONAI's style).

Follows the published recipe of Hu et al., "Label-Free Liver Tumor Segmentation" (CVPR 2023),
written anew with numpy/scipy so it runs on a CPU inside the training loop:

- a size class drawn uniformly from tiny / small / medium / large / mix; base radius 4, 8, 16,
  32 mm, each ellipsoid axis 0.75-1.25 x the base; counts tiny 3-10, small 3-10, medium 2-5,
  large 1-3 (mix: one draw of each class);
- each centre a random voxel of the liver mask eroded in-plane by a 5 x 5 structuring element
  (the recipe's erosion of the chosen slice), on an axial slice between 30 % and 70 % of the
  liver's extent along the slices (of the liver inside the array given: training applies it to
  crops);
- the ellipsoid deformed by a random elastic displacement on a 3-point grid per axis pair
  (sigma per class: tiny 0.5-1, small 1-2, medium 3-6, large 5-10 mm), nearest-neighbour,
  then clipped to the liver;
- a texture: uniform noise smoothed (sigma 3-15), rescaled to 0.05-0.25 as a per-voxel
  probability of a 0/1 draw, smoothed again (sigma 4 or 7), scaled so the mean of its brighter
  half is 0.5-0.55, clipped to [0, 1];
- HU lowered by U(65, 145) x texture x (tumor mask blurred with sigma 1-2), inside the liver only.

Radii and every smoothing sigma are in mm (the paper's 1 mm voxels) and converted with the
array's spacing, so the same tumors come out on the 1.5 mm model grid. Each tumor is generated in its own bounding box,
so the cost grows with the tumors, not the volume (``scripts/bench_synthetic_tumors.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from monai.transforms import RandomizableTransform
from scipy import ndimage

SIZE_CLASSES: Dict[str, Dict[str, Tuple[float, float]]] = {
    "tiny": {"radius_mm": (4.0, 4.0), "count": (3, 10), "sigma": (0.5, 1.0)},
    "small": {"radius_mm": (8.0, 8.0), "count": (3, 10), "sigma": (1.0, 2.0)},
    "medium": {"radius_mm": (16.0, 16.0), "count": (2, 5), "sigma": (3.0, 6.0)},
    "large": {"radius_mm": (32.0, 32.0), "count": (1, 3), "sigma": (5.0, 10.0)},
}
"""Per size class: base radius (mm), number of tumors (inclusive range), elastic sigma (mm)."""

CHOICES = ("tiny", "small", "medium", "large", "mix")
AXIS_SCALE = (0.75, 1.25)
HU_DROP = (65.0, 145.0)
Z_RANGE = (0.3, 0.7)


@dataclass
class SyntheticTumor:
    """One inserted tumor: its class, centre (voxel index) and semi-axes (mm)."""

    size_class: str
    centre: Tuple[int, int, int]
    radii_mm: Tuple[float, float, float]
    voxels: int


class SynthesizeLiverTumors(RandomizableTransform):
    """Insert synthetic tumors into a healthy liver: (HU, liver, tumor) -> (HU', tumor').

    Args:
        prob: probability of inserting tumors at all (the recipe uses 0.9).
        choices: size classes to draw from (uniformly).

    Call with ``image`` (D, H, W) HU, ``liver`` (D, H, W) bool, ``spacing`` (z, y, x) mm and
    optionally ``tumor`` (existing tumor labels). A liver that already has tumor labels is left
    alone (real tumors are not mixed with synthetic ones). Returns new arrays (inputs are not
    modified); :attr:`tumors` lists what the last call inserted.
    """

    def __init__(self, prob: float = 0.9, choices: Sequence[str] = CHOICES) -> None:
        super().__init__(prob)
        unknown = set(choices) - set(CHOICES)
        if unknown:
            raise ValueError(f"unknown tumor size classes {sorted(unknown)}; known: {CHOICES}")
        self.choices = tuple(choices)
        self.tumors: list[SyntheticTumor] = []

    def __call__(
        self, image: np.ndarray, liver: np.ndarray, spacing: Sequence[float], tumor: Optional[np.ndarray] = None,
        randomize: bool = True,
    ) -> Tuple[np.ndarray, np.ndarray]:
        image = np.array(image, dtype=np.float32, copy=True)
        liver = np.asarray(liver, dtype=bool)
        out = np.zeros(image.shape, bool) if tumor is None else np.array(tumor, dtype=bool, copy=True)
        self.tumors = []
        if randomize:
            self.randomize(None)
        if not self._do_transform or out.any() or not liver.any():
            return image, out
        size_class = self.choices[self.R.randint(len(self.choices))]
        classes = list(SIZE_CLASSES) if size_class == "mix" else [size_class]
        eroded = ndimage.binary_erosion(liver, structure=np.ones((1, 5, 5), bool))
        centres = _centre_candidates(eroded if eroded.any() else liver)
        for cls in classes:
            spec = SIZE_CLASSES[cls]
            count = 1 if size_class == "mix" else int(self.R.randint(spec["count"][0], spec["count"][1] + 1))
            for _ in range(count):
                centre = tuple(int(v) for v in centres[self.R.randint(len(centres))])
                self._insert(image, liver, out, centre, cls, spacing)
        return image, out

    def _insert(self, image: np.ndarray, liver: np.ndarray, out: np.ndarray, centre, cls: str, spacing) -> None:
        spec = SIZE_CLASSES[cls]
        radii_mm = tuple(spec["radius_mm"][0] * self.R.uniform(*AXIS_SCALE) for _ in range(3))
        mm = np.asarray(spacing, dtype=float)
        radii = np.array(radii_mm) / mm
        sigma_elastic = self.R.uniform(*spec["sigma"]) / mm  # the recipe's 1 mm voxels, per axis
        # Box around the ellipsoid with room for the deformation and the edge blur.
        half = np.ceil(radii * 1.2 + 2 * sigma_elastic + 3).astype(int)
        lo = np.maximum(np.array(centre) - half, 0)
        hi = np.minimum(np.array(centre) + half + 1, image.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.ogrid[tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, centre))]
        ellipsoid = sum((g / r) ** 2 for g, r in zip(grid, radii)) <= 1.0
        shape = _elastic(ellipsoid, sigma_elastic, self.R) & liver[box]
        if not shape.any():
            return
        texture = _texture(shape.shape, self.R, mm)
        edge = ndimage.gaussian_filter(shape.astype(np.float32), self.R.uniform(1.0, 2.0) / mm)
        drop = self.R.uniform(*HU_DROP) * texture * edge * liver[box]
        image[box] -= drop.astype(np.float32)
        out[box] |= shape
        self.tumors.append(SyntheticTumor(cls, centre, radii_mm, int(shape.sum())))


def _centre_candidates(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` on slices between 30 % and 70 % of its extent along the slices."""
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    z0, z1 = z[0], z[-1]
    lo = int(np.floor(z0 + Z_RANGE[0] * (z1 - z0)))
    hi = int(np.ceil(z0 + Z_RANGE[1] * (z1 - z0)))
    band = np.zeros_like(mask)
    band[lo : hi + 1] = mask[lo : hi + 1]
    return np.argwhere(band if band.any() else mask)


def _elastic(mask: np.ndarray, sigma: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """``mask`` deformed by a smooth random displacement (3 control points per axis, std
    ``sigma`` voxels per axis, cubic upsampling) in each of the three axis pairs, nearest-neighbour."""
    out = mask
    for axes in ((0, 1), (1, 2), (0, 2)):
        coords = np.indices(out.shape, dtype=np.float32)
        for ax in axes:
            control = rng.normal(0.0, sigma[ax], size=(3, 3, 3)).astype(np.float32)
            zoom = [n / 3 for n in out.shape]
            coords[ax] += ndimage.zoom(control, zoom, order=3, mode="nearest", grid_mode=True)[
                : out.shape[0], : out.shape[1], : out.shape[2]
            ]
        out = ndimage.map_coordinates(out.astype(np.uint8), coords, order=0, mode="constant") > 0
    return out


def _texture(shape: Tuple[int, ...], rng: np.random.RandomState, mm: np.ndarray) -> np.ndarray:
    """Tumor texture in [0, 1] on a box of ``shape`` with voxel size ``mm`` (the recipe's
    smoothing sigmas are in 1 mm voxels; see the module docstring)."""
    noise = ndimage.gaussian_filter(rng.uniform(0, 1, size=shape).astype(np.float32), rng.uniform(3, 15) / mm)
    span = float(noise.max() - noise.min())
    p = 0.05 + (noise - noise.min()) / (span if span > 0 else 1.0) * 0.20
    spots = (rng.uniform(0, 1, size=shape) < p).astype(np.float32)
    tex = ndimage.gaussian_filter(spots, (4.0 if rng.uniform() < 0.5 else 7.0) / mm)
    bright = tex[tex >= np.median(tex)]
    mean = float(bright.mean()) if bright.size and bright.mean() > 0 else 1.0
    tex = tex * rng.uniform(0.5, 0.55) / mean
    return np.clip(tex, 0.0, 1.0)
