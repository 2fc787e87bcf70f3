"""Model benchmark: one TAGS window forward against this machine's matmul peak, and TAGS beside
a 3DSAM-adapter-style network on the same region of interest.

    python -m benchmarks.bench [--model FOLDER] [--dtype fp32] [--window-sides 128 256] [--compile]
        [--peer-roi 128] [--json out.json]

Prints and (with --json) writes:
  * the machine (CPU model, torch's CPU capability, native bf16 or not, threads);
  * the sustained matmul GFLOP/s of this machine in each dtype run (fp32, and bf16 where the
    CPU has it natively, unless --dtype says otherwise), measured in the same run;
  * one forward of a TAGS model window (the model folder's roi_size): GFLOP counted by
    torch.utils.flop_counter (the useful ones: padded window queries skipped, as the predictor
    runs them; upstream TinyViT's count beside it), seconds, achieved GFLOP/s and the
    fraction of the matmul peak of the dtype it ran in (fp32, bf16 autocast; eager and, with
    --compile, torch.compile), against the peak measured at the start and, pair by pair,
    against a peak measured just before each timed call (:func:`paired_peak_fraction`; the
    machine's speed drifts);
  * the same region of interest (a cube of --peer-roi voxels at 1 mm) through
    TagsPredictor.predict (resampling to the model grid, anatomy prompts, sliding windows) and
    through :class:`benchmarks.peer_3dsam.SAM3DAdapterStyle` (forward only, random weights): seconds,
    GFLOP, peak memory, and the speed-up.
Peak memory per step is the process's VmHWM after resetting it (Linux /proc/self/clear_refs).
Numbers, not assertions: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tags import device as tags_device
from tags.config import ModelConfig
from tags.inference import TagsPredictor, WindowPolicy
from tags.inference.window_attention import use_inference_attention
from tags.network import TagsNet, build_tags
from tags.prompts import derive_prompts
from tags.runtime import keep_freed_memory
from tags.targets import organ_target, tumor_target

DEMO_LIKE = dict(encoder_size=128, roi_size=(32, 128, 128), organ_roi_size=(32, 128, 128))
"""Configuration benchmarked without --model: the demo model's shape (random adapters)."""


# -- measuring ----------------------------------------------------------------------------------
def reset_peak_rss() -> None:
    """Reset the process's peak resident memory (Linux); silently a no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset, MB (VmHWM)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def default_dtypes() -> List[str]:
    """fp32, and bf16 where the CPU has it natively: emulated bf16 (AVX2) is several times slower
    than fp32 and no precision the predictor would choose there."""
    return ["fp32", "bf16"] if tags_device.cpu_has_native_bf16() else ["fp32"]


def autocast(dtype: str):
    """The CPU autocast context of ``dtype`` (:func:`tags.device.autocast`)."""
    return tags_device.autocast(torch.device("cpu"), dtype)


def matmul_gflops(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    """Sustained GFLOP/s of an n x n matmul in ``dtype`` ("fp32" or "bf16"), best of 3."""
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * repeats / best / 1e9


def count_gflop(fn: Callable[[], object]) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def best_seconds(fn: Callable[[], object], dtype: str, repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Best of ``repeats`` timed calls after ``warmup`` calls; first-call seconds and peak MB too."""
    reset_peak_rss()
    first = None
    with torch.no_grad(), autocast(dtype):
        for _ in range(warmup):
            t = time.perf_counter()
            fn()
            first = first if first is not None else time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return {"seconds": min(times), "first_call_seconds": first, "peak_rss_mb": round(peak_rss_mb())}


def paired_peak_fraction(fn: Callable[[], object], gflop: float, dtype: str, pairs: int) -> Dict:
    """``fn`` timed ``pairs`` times, each right after a short matmul-peak measurement in the same
    dtype, and its achieved GFLOP/s divided by that peak pair by pair. This machine's speed drifts
    (the fp32 peak measured 145-176 GFLOP/s within minutes on the 2-core AVX2 EPYC), so a peak measured once at the
    start and a window timed later can differ by the drift, not by the model. Reports the
    median fraction and its range, the best time and the peaks."""
    fractions, times, peaks = [], [], []
    with torch.no_grad(), autocast(dtype):
        fn()  # warm-up
        for _ in range(pairs):
            peak = matmul_gflops(dtype, repeats=4)
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            peaks.append(round(peak, 1))
            fractions.append(gflop / times[-1] / peak)
    return {"fraction_of_matmul_peak_paired": round(float(np.median(fractions)), 3),
            "fraction_range": [round(min(fractions), 3), round(max(fractions), 3)],
            "paired_seconds": [round(v, 3) for v in times], "paired_matmul_gflops": peaks}


# -- the two models ------------------------------------------------------------------------------
def bench_config(model: Optional[str]) -> ModelConfig:
    if model:
        from tags.model_folder import load_model_folder

        return load_model_folder(model).config
    return ModelConfig(**DEMO_LIKE, targets=(organ_target("liver", 1), tumor_target("liver", 2)))


def build_predictor(model: Optional[str], precision: str, compile: bool, **predictor_kwargs):
    """A TagsPredictor on the CPU: the model folder, or the demo-like configuration with the
    pretrained LiteMedSAM base and random adapters/fusion/head. ``predictor_kwargs`` go to
    :class:`tags.inference.TagsPredictor` (e.g. ``tumor_windows=WindowPolicy(sides=(128, 256))``)."""
    kw = dict(device="cpu", precision=precision, compile=compile, **predictor_kwargs)
    if model:
        return TagsPredictor.from_model_folder(model, **kw)
    config = bench_config(None)
    torch.manual_seed(0)
    net = build_tags(config)
    text = {t.name: torch.randn(config.text_dim) for t in config.targets}
    return TagsPredictor.from_network(net, text, **kw)


def window_inputs(net: TagsNet, roi) -> tuple:
    """One model window: image in [0, 1], text, anatomy prompts from an ellipsoid organ, organ."""
    config = net.config
    d, h, w = roi
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, d, h, w, generator=g)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in roi), indexing="ij")
    organ = (zz**2 / 0.8 + yy**2 / 0.5 + xx**2 / 0.6) <= 1.0
    prompts = derive_prompts(organ, config.preprocessing.spacing, img_size=net.img_size,
                             mask_size=net.prompt_encoder.mask_input_size[0], config=config.prompts)
    text = torch.randn(1, config.text_dim, generator=g)
    return image, text, prompts, torch.from_numpy(organ)[None, None].float()


# -- the benchmark -------------------------------------------------------------------------------
def run(model: Optional[str] = None, *, compile: bool = False, peer_roi: int = 128, peer: bool = True,
        repeats: int = 2, dtypes: Optional[List[str]] = None, predictor_kwargs: Optional[Dict] = None) -> Dict:
    dtypes = dtypes or default_dtypes()
    out: Dict = {
        "machine": tags_device.machine_info(),
        "model": model or "demo-like configuration, random adapters (" + json.dumps(DEMO_LIKE) + ")",
        "predictor": {k: dataclasses.asdict(v) if isinstance(v, WindowPolicy) else v
                      for k, v in (predictor_kwargs or {}).items()},
        "matmul_gflops": {dt: round(matmul_gflops(dt), 1) for dt in dtypes},
        "window": {},
        "same_roi": {},
    }
    # The same region of interest as the peer: a peer_roi^3 cube at 1 mm.
    g = torch.Generator().manual_seed(0)
    cube = (torch.rand(peer_roi, peer_roi, peer_roi, generator=g) * 400 - 160).numpy()
    affine = np.eye(4)
    organ = np.ones(cube.shape, bool)
    out["same_roi"] = {"roi_voxels": [peer_roi] * 3, "spacing_mm": 1.0, "tags": {}, "peer_3dsam_adapter_style": {}}
    variants = [(dt, False) for dt in dtypes] + ([(dt, True) for dt in dtypes] if compile else [])
    for dt, comp in variants:
        name = dt + ("-compiled" if comp else "")
        pred = build_predictor(model, dt, comp, **(predictor_kwargs or {}))  # one load (and compilation) per variant
        # One model window.
        roi = tuple(pred.config.roi_size)
        inputs = window_inputs(pred.model.net, roi)
        if "gflop" not in out["window"]:
            # The useful FLOPs: those of the network as built with the padded window queries skipped
            # as the predictor does (use_inference_attention), not of the predictor's inference copy
            # (its head's first convolution has zero-weight input channels whose multiplications do no
            # useful work) nor of upstream TinyViT (attention at padded positions it then crops away).
            plain = build_tags(pred.config, pretrained=False).eval()
            upstream = count_gflop(lambda: plain(*inputs))
            use_inference_attention(plain)
            out["window"].update(roi=list(roi), gflop=round(count_gflop(lambda: plain(*inputs)), 1),
                                 gflop_upstream_tinyvit=round(upstream, 1))
            del plain
        gflop = out["window"]["gflop"]
        r = best_seconds(lambda: pred.model.net(*inputs), dt, repeats)
        r["gflops_achieved"] = round(gflop / r["seconds"], 1)
        r["fraction_of_matmul_peak"] = round(gflop / r["seconds"] / out["matmul_gflops"][dt], 3)
        r.update(paired_peak_fraction(lambda: pred.model.net(*inputs), gflop, dt, pairs=max(3, repeats + 1)))
        out["window"][name] = r
        # The whole predict path on the cube.
        tumor = pred.config.tumor_targets[0]
        run_tags = lambda: pred.predict(cube, affine, {tumor.organ: organ}, [tumor.name])  # noqa: E731
        out["same_roi"]["tags"][name] = best_seconds(run_tags, dt, repeats)
    if peer:
        from .peer_3dsam import SAM3DAdapterStyle

        torch.manual_seed(0)
        net = SAM3DAdapterStyle(roi=peer_roi).eval()
        x = torch.rand(1, 1, peer_roi, peer_roi, peer_roi, generator=g)
        with autocast(dtypes[-1]):  # FLOPs do not depend on the dtype; bf16 (when asked) is faster where native
            gflop = count_gflop(lambda: net(x))
        res = out["same_roi"]["peer_3dsam_adapter_style"]
        res["gflop"] = round(gflop, 1)
        res["parameters_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 1)
        for dt in dtypes:
            res[dt] = best_seconds(lambda: net(x), dt, repeats=1, warmup=1)  # warm, as TAGS is timed
            res[dt]["gflops_achieved"] = round(gflop / res[dt]["seconds"], 1)
        out["same_roi"]["speedup"] = {
            k: round(res[k.split("-")[0]]["seconds"] / v["seconds"], 1) for k, v in out["same_roi"]["tags"].items()
        }
    return out


def format_report(r: Dict) -> str:
    w = r["window"]
    lines = [
        f"machine: {r['machine']['cpu']} ({r['machine'].get('cpu_capability')}, native bf16: "
        f"{r['machine'].get('native_bf16')}), {r['machine']['threads']} threads, torch {r['machine']['torch']}",
        "matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r["matmul_gflops"].items()),
        f"TAGS window {'x'.join(map(str, w['roi']))} (D x H x W): {w['gflop']:.1f} GFLOP per forward "
        f"({w.get('gflop_upstream_tinyvit', w['gflop']):.1f} with upstream TinyViT's padded queries)",
    ]
    for k, v in w.items():
        if isinstance(v, dict):
            lines.append(f"  {k:14s} {v['seconds']:6.2f} s  {v['gflops_achieved']:7.1f} GFLOP/s  "
                         f"{100 * v['fraction_of_matmul_peak']:4.0f}% of the {k.split('-')[0]} matmul peak  "
                         f"(first call {v['first_call_seconds']:.1f} s, peak {v['peak_rss_mb']} MB)")
            lines.append(f"  {'':14s} paired with a peak measured just before each call: median "
                         f"{100 * v['fraction_of_matmul_peak_paired']:.0f}% (range "
                         f"{100 * v['fraction_range'][0]:.0f}-{100 * v['fraction_range'][1]:.0f}%)")
    s = r["same_roi"]
    lines.append(f"same ROI, {s['roi_voxels'][0]}^3 voxels at 1 mm:")
    for k, v in s["tags"].items():
        lines.append(f"  TAGS predict {k:14s} {v['seconds']:7.2f} s  peak {v['peak_rss_mb']} MB")
    p = s.get("peer_3dsam_adapter_style") or {}
    for k in ("fp32", "bf16"):
        if k in p:
            lines.append(f"  3DSAM-adapter-style {k:7s} {p[k]['seconds']:7.2f} s  peak {p[k]['peak_rss_mb']} MB  "
                         f"({p['gflop']:.0f} GFLOP, {p[k]['gflops_achieved']:.0f} GFLOP/s)")
    if "speedup" in s:
        lines.append("  TAGS speed-up: " + ", ".join(f"{k} {v}x" for k, v in s["speedup"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the demo-like configuration)")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd image encoder")
    p.add_argument("--peer-roi", type=int, default=128, help="side of the cube compared with the peer (default 128)")
    p.add_argument("--no-peer", action="store_true", help="skip the 3DSAM-adapter-style forward")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats for TAGS, best is reported")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--dtype", action="append", choices=["fp32", "bf16"], help="dtypes to run (default fp32, and bf16 where the CPU has it natively)")
    p.add_argument("--window-sides", type=int, nargs=2, metavar=("SMALLEST", "LARGEST"), default=None,
                   help="in-plane window sides of the tumor pass (default: the predictor's; 128 256: not below 128)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    keep_freed_memory()  # as the application does; both models run under it
    if a.threads:
        torch.set_num_threads(a.threads)
    kwargs = {"tumor_windows": WindowPolicy(sides=tuple(a.window_sides))} if a.window_sides else None
    r = run(a.model, compile=a.compile, peer_roi=a.peer_roi, peer=not a.no_peer, repeats=a.repeats, dtypes=a.dtype,
            predictor_kwargs=kwargs)
    print(format_report(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
        print(f"written: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
