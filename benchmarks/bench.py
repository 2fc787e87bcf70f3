"""Model benchmark: one TAGS window forward against this machine's matmul peak, and TAGS beside
a 3DSAM-adapter-style network on the same region of interest.

    python -m benchmarks.bench [--device cpu|cuda|cuda:N] [--model FOLDER] [--dtype fp32]
        [--window-sides 128 256] [--compile] [--peer-roi 128] [--json out.json]

Prints and (with --json) writes:
  * the machine (CPU model, torch's CPU capability, native bf16 or not, threads) and the device
    everything runs on (``"device"``; on CUDA also ``"cuda_device"``: torch.cuda.get_device_name,
    compute capability, memory);
  * the sustained matmul GFLOP/s of the device in each dtype run (CPU: fp32, and bf16 where the
    CPU has it natively; CUDA: fp32, bf16 and fp16; unless --dtype says otherwise; fp16 only on
    CUDA), measured in the same run;
  * one forward of a TAGS model window (the model folder's roi_size): GFLOP counted by
    torch.utils.flop_counter (the useful ones: padded window queries skipped, as the predictor
    runs them; upstream TinyViT's count beside it), seconds, achieved GFLOP/s and the
    fraction of the matmul peak of the dtype it ran in (fp32, bf16 autocast; eager and, with
    --compile, torch.compile), against the peak measured at the start and, pair by pair,
    against a peak measured just before each timed call (:func:`paired_peak_fraction`; the
    machine's speed drifts);
  * the same region of interest (a cube of --peer-roi voxels at 1 mm) through
    TagsPredictor.predict (resampling to the model grid, anatomy prompts, sliding windows) and
    through :class:`benchmarks.peer_3dsam.SAM3DAdapterStyle` (forward only, random weights, on the
    same device): seconds, GFLOP, peak memory, and the speed-up.
Peak memory per step is the process's VmHWM after resetting it (Linux /proc/self/clear_refs) and,
on CUDA, torch.cuda.max_memory_allocated after resetting it (``peak_cuda_mb``). On CUDA every
timed call is followed by torch.cuda.synchronize, so time.perf_counter measures the kernels.
Numbers, not assertions: this benchmark passes or fails nothing.
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
from tags.inference.onednn import flop_formulas
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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The dtypes benchmarked (fp16 only on CUDA: CPU autocast has no fast fp16 path)."""


def default_dtypes(device: str | torch.device = "cpu") -> List[str]:
    """CPU: fp32, and bf16 where the CPU has it natively (emulated bf16, AVX2, is several times
    slower than fp32 and no precision the predictor would choose there). CUDA: fp32, bf16, fp16."""
    if torch.device(device).type == "cuda":
        return ["fp32", "bf16", "fp16"]
    return ["fp32", "bf16"] if tags_device.cpu_has_native_bf16() else ["fp32"]


def checked_device(device: str | torch.device, dtypes: List[str]) -> torch.device:
    """``device`` as a torch.device; a ValueError naming the problem when it is no CPU or CUDA
    device, torch sees no CUDA device, or ``dtypes`` holds fp16 on the CPU."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {str(device)!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {str(device)!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but torch sees no CUDA device")
    if dev.type == "cpu" and "fp16" in dtypes:
        raise ValueError("--dtype fp16 runs only on CUDA (--device cuda); on the CPU use fp32 or bf16")
    return dev


def synchronize(device: str | torch.device = "cpu") -> None:
    """Wait for the device's queued kernels (CUDA); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(dtype: str, device: str | torch.device = "cpu"):
    """The autocast context of ``dtype`` on ``device`` (:func:`tags.device.autocast`)."""
    return tags_device.autocast(torch.device(device), dtype)


def matmul_gflops(dtype: str, n: Optional[int] = None, repeats: int = 10, device: str | torch.device = "cpu") -> float:
    """Sustained GFLOP/s of an n x n matmul in ``dtype`` (fp32, bf16, fp16) on ``device``, best
    of 3 (n: 2048 on the CPU, 4096 on CUDA, where a 2048 matmul is over too quickly to time well)."""
    device = torch.device(device)
    n = n or (4096 if device.type == "cuda" else 2048)
    dt = DTYPES[dtype]
    a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * repeats / best / 1e9


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of ``fn()`` without gradients, oneDNN's fused convolutions counted like plain ones
    (:func:`tags.inference.onednn.flop_formulas`; torch's counter has no formula for them)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_formulas()) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, its device work included (synchronised before and after)."""
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t


def best_seconds(fn: Callable[[], object], dtype: str, repeats: int, warmup: int = 1,
                 device: str | torch.device = "cpu") -> Dict[str, float]:
    """Best of ``repeats`` timed calls after ``warmup`` calls; first-call seconds and peak MB too
    (the process's RSS; on CUDA also the peak allocated device memory, ``peak_cuda_mb``)."""
    device = torch.device(device)
    reset_peak_rss()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    first = None
    with torch.no_grad(), autocast(dtype, device):
        for _ in range(warmup):
            seconds = timed(fn, device)
            first = first if first is not None else seconds
        times = [timed(fn, device) for _ in range(repeats)]
    r = {"seconds": min(times), "first_call_seconds": first, "peak_rss_mb": round(peak_rss_mb())}
    if device.type == "cuda":
        r["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return r


def paired_peak_fraction(fn: Callable[[], object], gflop: float, dtype: str, pairs: int,
                         device: str | torch.device = "cpu") -> Dict:
    """``fn`` timed ``pairs`` times, each right after a short matmul-peak measurement in the same
    dtype, and its achieved GFLOP/s divided by that peak pair by pair. This machine's speed drifts
    (the fp32 peak measured 145-176 GFLOP/s within minutes on the 2-core AVX2 EPYC), so a peak measured once at the
    start and a window timed later can differ by the drift, not by the model. Reports the
    median fraction and its range, the best time and the peaks."""
    device = torch.device(device)
    fractions, times, peaks = [], [], []
    with torch.no_grad(), autocast(dtype, device):
        fn()  # warm-up
        for _ in range(pairs):
            peak = matmul_gflops(dtype, repeats=4, device=device)
            times.append(timed(fn, device))
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


def build_predictor(model: Optional[str], precision: str, compile: bool, device: str | torch.device = "cpu",
                    **predictor_kwargs):
    """A TagsPredictor on ``device``: the model folder, or the demo-like configuration with the
    pretrained LiteMedSAM base and random adapters/fusion/head. ``predictor_kwargs`` go to
    :class:`tags.inference.TagsPredictor` (e.g. ``tumor_windows=WindowPolicy(sides=(128, 256))``)."""
    kw = dict(device=device, precision=precision, compile=compile, **predictor_kwargs)
    if model:
        return TagsPredictor.from_model_folder(model, **kw)
    config = bench_config(None)
    torch.manual_seed(0)
    net = build_tags(config)
    text = {t.name: torch.randn(config.text_dim) for t in config.targets}
    return TagsPredictor.from_network(net, text, **kw)


def ellipsoid_organ(shape) -> np.ndarray:
    """(d, h, w) bool: an organ-like ellipsoid filling most of a window of ``shape``."""
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return (zz**2 / 0.8 + yy**2 / 0.5 + xx**2 / 0.6) <= 1.0


def window_inputs(net: TagsNet, roi, device: str | torch.device = "cpu") -> tuple:
    """One model window on ``device``: image in [0, 1], text, anatomy prompts from an ellipsoid
    organ, organ (the same values on every device: generated on the CPU, then moved)."""
    config = net.config
    d, h, w = roi
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, d, h, w, generator=g)
    organ = ellipsoid_organ(roi)
    prompts = derive_prompts(organ, config.preprocessing.spacing, img_size=net.img_size,
                             mask_size=net.prompt_encoder.mask_input_size[0], config=config.prompts)
    text = torch.randn(1, config.text_dim, generator=g)
    return image.to(device), text.to(device), prompts.to(device), torch.from_numpy(organ)[None, None].float().to(device)


# -- the benchmark -------------------------------------------------------------------------------
def device_info(device: torch.device) -> Dict:
    """What the JSON records about the device: its name and, on CUDA, the GPU."""
    info: Dict = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["cuda_device"] = {"name": torch.cuda.get_device_name(device), "capability": f"{props.major}.{props.minor}",
                               "memory_mb": round(props.total_memory / 2**20), "torch_cuda": torch.version.cuda}
    return info


def window_gflop(config: ModelConfig, inputs: tuple, device: torch.device) -> Dict:
    """The useful FLOPs of one window: those of the network as built with the padded window queries
    skipped as the predictor does (use_inference_attention), not of the predictor's inference copy
    (its head's first convolution has zero-weight input channels whose multiplications do no useful
    work) nor of upstream TinyViT (attention at padded positions it then crops away)."""
    plain = build_tags(config, pretrained=False).eval().to(device)
    upstream = count_gflop(lambda: plain(*inputs))
    use_inference_attention(plain)
    return {"gflop": round(count_gflop(lambda: plain(*inputs)), 1), "gflop_upstream_tinyvit": round(upstream, 1)}


def bench_window(pred, inputs: tuple, gflop: float, peak: float, dt: str, repeats: int, device: torch.device) -> Dict:
    """One window's forward in ``dt``: best seconds, GFLOP/s, fraction of the peak, paired fractions."""
    r = best_seconds(lambda: pred.model.net(*inputs), dt, repeats, device=device)
    r["gflops_achieved"] = round(gflop / r["seconds"], 1)
    r["fraction_of_matmul_peak"] = round(gflop / r["seconds"] / peak, 3)
    r.update(paired_peak_fraction(lambda: pred.model.net(*inputs), gflop, dt, pairs=max(3, repeats + 1), device=device))
    return r


def bench_peer(peer_roi: int, dtypes: List[str], device: torch.device, g: torch.Generator) -> Dict:
    """The 3DSAM-adapter-style forward on a peer_roi^3 cube: GFLOP, parameters, per dtype seconds (warm) and peak MB."""
    from .peer_3dsam import SAM3DAdapterStyle

    torch.manual_seed(0)
    net = SAM3DAdapterStyle(roi=peer_roi).eval().to(device)
    x = torch.rand(1, 1, peer_roi, peer_roi, peer_roi, generator=g).to(device)
    # FLOPs do not depend on the dtype: counted in the last one asked (bf16 or fp16 when asked: faster).
    with autocast(dtypes[-1], device):
        gflop = count_gflop(lambda: net(x))
    res: Dict = {"gflop": round(gflop, 1), "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 1)}
    for dt in dtypes:
        res[dt] = best_seconds(lambda: net(x), dt, repeats=1, warmup=1, device=device)
        res[dt]["gflops_achieved"] = round(gflop / res[dt]["seconds"], 1)
    return res


def run(model: Optional[str] = None, *, compile: bool = False, peer_roi: int = 128, peer: bool = True,
        repeats: int = 2, dtypes: Optional[List[str]] = None, predictor_kwargs: Optional[Dict] = None,
        device: str | torch.device = "cpu") -> Dict:
    device = checked_device(device, dtypes or [])
    dtypes = dtypes or default_dtypes(device)
    out: Dict = {
        "machine": tags_device.machine_info(),
        **device_info(device),
        "model": model or "demo-like configuration, random adapters (" + json.dumps(DEMO_LIKE) + ")",
        "predictor": {k: dataclasses.asdict(v) if isinstance(v, WindowPolicy) else v
                      for k, v in (predictor_kwargs or {}).items()},
        "matmul_gflops": {dt: round(matmul_gflops(dt, device=device), 1) for dt in dtypes},
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
        # One load (and compilation) per variant.
        pred = build_predictor(model, dt, comp, device=device, **(predictor_kwargs or {}))
        # One model window.
        roi = tuple(pred.config.roi_size)
        inputs = window_inputs(pred.model.net, roi, device)
        if "gflop" not in out["window"]:
            out["window"].update(roi=list(roi), **window_gflop(pred.config, inputs, device))
        out["window"][name] = bench_window(pred, inputs, out["window"]["gflop"], out["matmul_gflops"][dt], dt,
                                           repeats, device)
        # The whole predict path on the cube.
        tumor = pred.config.tumor_targets[0]
        run_tags = lambda: pred.predict(cube, affine, {tumor.organ: organ}, [tumor.name])  # noqa: E731
        out["same_roi"]["tags"][name] = best_seconds(run_tags, dt, repeats, device=device)
    if peer:
        res = out["same_roi"]["peer_3dsam_adapter_style"] = bench_peer(peer_roi, dtypes, device, g)
        out["same_roi"]["speedup"] = {
            k: round(res[k.split("-")[0]]["seconds"] / v["seconds"], 1) for k, v in out["same_roi"]["tags"].items()
        }
    return out


def _peak(v: Dict) -> str:
    """``peak N MB`` (the process's RSS), with the peak allocated CUDA memory beside it on CUDA."""
    cuda = f", CUDA {v['peak_cuda_mb']} MB" if "peak_cuda_mb" in v else ""
    return f"peak {v['peak_rss_mb']} MB{cuda}"


def format_report(r: Dict) -> str:
    w = r["window"]
    cuda = r.get("cuda_device")
    lines = [
        f"machine: {r['machine']['cpu']} ({r['machine'].get('cpu_capability')}, native bf16: "
        f"{r['machine'].get('native_bf16')}), {r['machine']['threads']} threads, torch {r['machine']['torch']}",
        *([f"device: {r['device']} ({cuda['name']}, compute capability {cuda['capability']}, "
           f"{cuda['memory_mb']} MB, CUDA {cuda['torch_cuda']})"] if cuda else []),
        "matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r["matmul_gflops"].items()),
        f"TAGS window {'x'.join(map(str, w['roi']))} (D x H x W): {w['gflop']:.1f} GFLOP per forward "
        f"({w.get('gflop_upstream_tinyvit', w['gflop']):.1f} with upstream TinyViT's padded queries)",
    ]
    for k, v in w.items():
        if isinstance(v, dict):
            lines.append(f"  {k:14s} {v['seconds']:6.2f} s  {v['gflops_achieved']:7.1f} GFLOP/s  "
                         f"{100 * v['fraction_of_matmul_peak']:4.0f}% of the {k.split('-')[0]} matmul peak  "
                         f"(first call {v['first_call_seconds']:.1f} s, {_peak(v)})")
            lines.append(f"  {'':14s} paired with a peak measured just before each call: median "
                         f"{100 * v['fraction_of_matmul_peak_paired']:.0f}% (range "
                         f"{100 * v['fraction_range'][0]:.0f}-{100 * v['fraction_range'][1]:.0f}%)")
    s = r["same_roi"]
    lines.append(f"same ROI, {s['roi_voxels'][0]}^3 voxels at 1 mm:")
    for k, v in s["tags"].items():
        lines.append(f"  TAGS predict {k:14s} {v['seconds']:7.2f} s  {_peak(v)}")
    p = s.get("peer_3dsam_adapter_style") or {}
    for k in DTYPES:
        if k in p:
            lines.append(f"  3DSAM-adapter-style {k:7s} {p[k]['seconds']:7.2f} s  {_peak(p[k])}  "
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
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the models and matmuls run")
    p.add_argument("--dtype", action="append", choices=list(DTYPES),
                   help="dtypes to run, repeatable (default: fp32, and bf16 where the CPU has it natively; "
                        "on CUDA fp32, bf16 and fp16); fp16 only on CUDA")
    p.add_argument("--window-sides", type=int, nargs=2, metavar=("SMALLEST", "LARGEST"), default=None,
                   help="in-plane window sides of the tumor pass (default: the predictor's; 128 256: not below 128)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    a = p.parse_args(argv)
    try:
        device = checked_device(a.device, a.dtype or [])
    except ValueError as e:
        p.error(str(e))
    keep_freed_memory()  # as the application does; both models run under it
    if a.threads:
        torch.set_num_threads(a.threads)
    kwargs = {"tumor_windows": WindowPolicy(sides=tuple(a.window_sides))} if a.window_sides else None
    r = run(a.model, compile=a.compile, peer_roi=a.peer_roi, peer=not a.no_peer, repeats=a.repeats, dtypes=a.dtype,
            predictor_kwargs=kwargs, device=device)
    print(format_report(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
        print(f"written: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
