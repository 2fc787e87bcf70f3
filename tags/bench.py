"""Benchmark of one TAGS forward on a model window, against this machine's matmul peak.

    python -m tags.bench [--roi 64 128 128] [--slab 4] [--threads N] [--json out.json]

Prints forward seconds in fp32 and bf16, GFLOP (torch.utils.flop_counter), achieved GFLOP/s,
the matmul GFLOP/s measured in the same run, and peak RSS. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import AdapterConfig, ModelConfig
from .network import build_tags
from .prompts import derive_prompts


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Sustained GFLOP/s of an n x n matmul in ``dtype`` (best of a few runs)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * repeats / best / 1e9


def _inputs(config: ModelConfig, roi):
    d, h, w = roi
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, d, h, w, generator=g)
    organ = np.zeros(roi, bool)
    organ[d // 8 : -d // 8, h // 4 : -h // 4, w // 5 : -w // 4] = True
    prompts = derive_prompts(organ, config.preprocessing.spacing, img_size=256, mask_size=256, config=config.prompts)
    text = torch.randn(1, config.text_dim, generator=g)
    return image, text, prompts, torch.from_numpy(organ)[None, None].float()


def run(roi=(64, 128, 128), slab: int = 4, repeats: int = 2, dtypes: Optional[List[str]] = None) -> Dict:
    config = ModelConfig(adapter=AdapterConfig(slab_size=slab), roi_size=tuple(roi))
    net = build_tags(config).eval()
    inputs = _inputs(config, roi)
    out: Dict = {
        "roi": list(roi),
        "slab_size": slab,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_gflops": {},
        "forward": {},
    }
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(*inputs)
    gflop = fc.get_total_flops() / 1e9
    out["gflop"] = gflop
    for name in dtypes or ["fp32", "bf16"]:
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        out["matmul_gflops"][name] = matmul_gflops(dtype)
        ctx = contextlib.nullcontext() if name == "fp32" else torch.autocast("cpu", dtype=torch.bfloat16)
        times = []
        with torch.no_grad(), ctx:
            net(*inputs)  # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                net(*inputs)
                times.append(time.perf_counter() - t)
        sec = min(times)
        out["forward"][name] = {
            "seconds": sec,
            "gflops_achieved": gflop / sec,
            "fraction_of_matmul_peak": gflop / sec / out["matmul_gflops"][name],
        }
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def format_report(r: Dict) -> str:
    lines = [
        f"TAGS forward, ROI {r['roi'][0]}x{r['roi'][1]}x{r['roi'][2]} (D x H x W), slab {r['slab_size']}, "
        f"{r['threads']} threads, torch {r['torch']}",
        f"  GFLOP per forward: {r['gflop']:.1f}",
    ]
    for name, f in r["forward"].items():
        lines.append(
            f"  {name}: {f['seconds']:.2f} s, {f['gflops_achieved']:.1f} GFLOP/s achieved, "
            f"matmul peak {r['matmul_gflops'][name]:.1f} GFLOP/s "
            f"({100 * f['fraction_of_matmul_peak']:.0f}% of peak)"
        )
    lines.append(f"  peak RSS: {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--roi", type=int, nargs=3, default=[64, 128, 128], metavar=("D", "H", "W"),
                   help="model window in voxels (default 64 128 128)")
    p.add_argument("--slab", type=int, default=4, help="slices per encoder slab (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per dtype, best is reported")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--dtype", action="append", choices=["fp32", "bf16"], help="dtypes to run (default both)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    r = run(tuple(a.roi), a.slab, a.repeats, a.dtype)
    print(format_report(r))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(r, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
