"""Cost of the synthetic-tumor transform per training crop (numbers, not assertions).

    .venv/bin/python scripts/bench_synthetic_tumors.py [--crops 40] [--out build/bench/synthetic_tumors.json]

Crops of the demo's tumor window (32 x 128 x 128 voxels at 1.5 mm) centred on liver voxels of
the TotalSegmentator example CT (healthy liver, resampled to the model grid as training does),
each given synthetic tumors of a size class drawn as in training. Prints and writes the time per
crop (median, 90th percentile, max) per size class, with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", type=int, default=40)
    ap.add_argument("--out", default="build/bench/synthetic_tumors.json")
    a = ap.parse_args()
    import torch

    from tags.geometry import spacing_from_affine, to_canonical
    from tags.preprocessing import grid_shape, resample
    from training.data import PAD_HU, _crop
    from training.registry_data import totalseg_sdist_dir
    from training.samples import TOTALSEG_LIVER, read_nifti
    from training.synthetic_tumors import CHOICES, SynthesizeLiverTumors

    ref = totalseg_sdist_dir()
    ct, aff = read_nifti(ref / "example_ct.nii.gz")
    seg, _ = read_nifti(ref / "example_seg_fast_force_split.nii.gz")
    canon, caff, reo = to_canonical(ct.astype(np.float32), aff)
    shape = grid_shape(canon.shape, spacing_from_affine(caff), (1.5, 1.5, 1.5))
    hu = resample(torch.from_numpy(np.ascontiguousarray(canon)), shape, mode="linear").numpy()
    liver = resample(torch.from_numpy((reo.apply(seg) == TOTALSEG_LIVER).astype(np.float32)), shape,
                     mode="nearest").numpy() > 0.5
    rng = np.random.default_rng(0)
    idx = np.argwhere(liver)
    times = {c: [] for c in CHOICES}
    for i in range(a.crops):
        cls = CHOICES[i % len(CHOICES)]
        centre = idx[rng.integers(len(idx))]
        img_c, liv_c = _crop([hu, liver], centre, (32, 128, 128), fills=(PAD_HU,))
        t = SynthesizeLiverTumors(prob=1.0, choices=[cls])
        t.set_random_state(seed=i)
        t0 = time.perf_counter()
        t(img_c, liv_c, (1.5, 1.5, 1.5))
        times[cls].append(time.perf_counter() - t0)
    rows = {c: {"crops": len(v), "median_ms": round(1000 * float(np.median(v)), 1),
                "p90_ms": round(1000 * float(np.percentile(v, 90)), 1), "max_ms": round(1000 * max(v), 1)}
            for c, v in times.items() if v}
    every = [x for v in times.values() for x in v]
    report = {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
              "crop": "32 x 128 x 128 at 1.5 mm", "per_class": rows,
              "all": {"median_ms": round(1000 * float(np.median(every)), 1),
                      "p90_ms": round(1000 * float(np.percentile(every, 90)), 1)}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['cpu']}: synthetic tumors per 32x128x128 crop")
    for c, r in rows.items():
        print(f"  {c:7s} median {r['median_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms")
    print(f"  all     median {report['all']['median_ms']:7.1f} ms  p90 {report['all']['p90_ms']:7.1f} ms  -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
