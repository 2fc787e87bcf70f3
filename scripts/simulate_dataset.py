"""A realistic-size training dataset made from the real CTs the registry packages ship, to measure
the training data path at scale on a machine without a large dataset.

    .venv/bin/python scripts/simulate_dataset.py OUT --cases 24 [--samples build/samples] [--seed 0]

Each case takes one of the labelled sample CTs (LiTS-117 with its liver and tumors; the
TotalSegmentator CT with its liver), resamples it to 512 x 512 pixels in plane and 300-500
slices (trilinear image, nearest labels), flips it left-right at random, shifts it by up to 10 %
of each side (air-filled), and gives healthy livers synthetic tumors
(:class:`training.synthetic_tumors.SynthesizeLiverTumors`, on a 2 mm copy, mapped back). Written
as an nnU-Net v2 raw dataset (int16 CT, uint8 labels: 1 liver, 2 tumor). Not for training a
model: the same two patients over and over; for time and memory measurements only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _resize(a: np.ndarray, shape, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    kw = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t, size=tuple(shape), mode=mode, **kw)[0, 0].numpy()


def simulate_case(img: np.ndarray, aff: np.ndarray, lab: np.ndarray, rng: np.random.Generator):
    """(image int16, label uint8, affine) of one simulated case from one source case."""
    from training.synthetic_tumors import SynthesizeLiverTumors

    depth = int(rng.integers(300, 501))
    shape = (depth, 512, 512)
    spacing = np.linalg.norm(aff[:3, :3], axis=0) * np.array(img.shape) / np.array(shape)
    image = _resize(img, shape, "trilinear")
    label = _resize(lab, shape, "nearest").astype(np.uint8)
    if not (label == 2).any():  # a healthy liver: synthetic tumors, made on a 2 mm copy
        coarse = tuple(max(8, int(round(n * s / 2.0))) for n, s in zip(shape, spacing))
        synth = SynthesizeLiverTumors(prob=1.0)
        synth.set_random_state(seed=int(rng.integers(2**31)))
        small_img, small_tumor = synth(_resize(image, coarse, "trilinear"), _resize(label, coarse, "nearest") > 0,
                                       (2.0, 2.0, 2.0))
        tumor = _resize(small_tumor.astype(np.float32), shape, "nearest") > 0.5
        drop = _resize(small_img - _resize(image, coarse, "trilinear"), shape, "trilinear")
        image = np.where(tumor, image + drop, image)
        label[tumor & (label > 0)] = 2
    if rng.random() < 0.5:
        image, label = image[:, :, ::-1], label[:, :, ::-1]
    shift = [int(rng.integers(-n // 10, n // 10 + 1)) for n in shape]
    image = np.roll(image, shift, axis=(0, 1, 2))
    label = np.roll(label, shift, axis=(0, 1, 2))
    for axis, s in enumerate(shift):  # what rolled in from the other side is air / background
        if s:
            idx = [slice(None)] * 3
            idx[axis] = slice(0, s) if s > 0 else slice(s, None)
            image[tuple(idx)], label[tuple(idx)] = -1024, 0
    out_aff = aff.copy()
    out_aff[:3, :3] = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0) * spacing
    return np.clip(image, -1024, 3071).astype(np.int16), label, out_aff


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="dataset folder to write (Dataset9xx_Sim...)")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--samples", default=str(REPO / "build" / "samples"), help="tags-train samples output")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from training.samples import build_samples, read_nifti, write_nifti

    samples = Path(a.samples)
    if not (samples / "Dataset502_TotalSegLiver" / "dataset.json").is_file():
        build_samples(samples, overwrite=True)
    sources = [(samples / "Dataset501_LiTS117" / "imagesTr" / "lits117_0000.nii.gz",
                samples / "Dataset501_LiTS117" / "labelsTr" / "lits117.nii.gz"),
               (samples / "Dataset502_TotalSegLiver" / "imagesTr" / "totalseg_ct_0000.nii.gz",
                samples / "Dataset502_TotalSegLiver" / "labelsTr" / "totalseg_ct.nii.gz")]
    loaded = [(*read_nifti(i), read_nifti(lab)[0]) for i, lab in sources]
    out = Path(a.out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(exist_ok=True)
    rng = np.random.default_rng(a.seed)
    for k in range(a.cases):
        img, aff, lab = loaded[k % len(loaded)]
        image, label, affine = simulate_case(img, aff, lab, rng)
        write_nifti(out / "imagesTr" / f"sim_{k:03d}_0000.nii.gz", image, affine)
        write_nifti(out / "labelsTr" / f"sim_{k:03d}.nii.gz", label, affine)
        print(f"sim_{k:03d}: {image.shape}, tumor voxels {int((label == 2).sum())}", flush=True)
    (out / "dataset.json").write_text(json.dumps({
        "name": out.name, "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
        "numTraining": a.cases, "file_ending": ".nii.gz",
        "source": "simulated from LiTS-117 (CC BY-NC-SA 4.0) and the TotalSegmentator example CT (Apache-2.0) "
                  "by scripts/simulate_dataset.py; for measurements only",
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
