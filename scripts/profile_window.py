"""Where one TAGS window forward spends its time: seconds and GFLOP per part of the network.

    .venv/bin/python scripts/profile_window.py [--model models/liver-demo] [--precision fp32|bf16]
        [--repeats 3] [--json out.json]

Times each part (the encoder's patch embedding, each stage or block, neck; fusion, decoder
transformer, output upscaling, 3D head) with forward pre/post hooks over ``--repeats`` forwards
after one warm-up, counts its FLOPs with torch.utils.flop_counter, and prints the achieved
GFLOP/s of each part beside this machine's matmul peak in the same precision, measured in the
same run. The parts do not add up to the whole window exactly (text conditioning, prompt
embedding, interpolations and the einsum of the mask are outside them). ``--precision`` fp32 (the
default, the dtype of a CPU without native bf16) or bf16 (the predictor's autocast, for CPUs
with native bf16). Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import build_predictor, matmul_gflops, window_inputs  # noqa: E402
from tags.device import autocast, machine_info  # noqa: E402
from tags.inference.onednn import flop_formulas  # noqa: E402
from tags.runtime import keep_freed_memory  # noqa: E402


def parts(net) -> dict:
    """name -> (first module, last module) of each part, in forward order; names are the modules'
    paths in the network. The encoder's parts are its own top-level modules, with each block of a
    block list apart (TinyViT: patch_embed, layers.0-3, neck; SAM's ViT: patch_embed, blocks.0-11,
    neck). The output upscaling is timed from its first layer's start to its last layer's end
    (``TagsNet.decode_slices`` calls its layers one by one, not the Sequential)."""
    named = {}
    for name, child in net.image_encoder.encoder.named_children():
        if isinstance(child, torch.nn.ModuleList):
            named.update({f"image_encoder.encoder.{name}.{i}": (m, m) for i, m in enumerate(child)})
        else:
            named[f"image_encoder.encoder.{name}"] = (child, child)
    upscaling = net.mask_decoder.output_upscaling
    named.update({"fusion": (net.fusion, net.fusion),
                  "mask_decoder.transformer": (net.mask_decoder.transformer, net.mask_decoder.transformer),
                  "mask_decoder.output_upscaling": (upscaling[0], upscaling[-1]), "head": (net.head, net.head)})
    return named


def profile(model: str, repeats: int = 3, precision: str = "fp32") -> dict:
    pred = build_predictor(model, precision, False)
    net = pred.model.net
    inputs = window_inputs(net, tuple(pred.config.roi_size))
    named = parts(net)
    seconds: dict = defaultdict(float)
    started: dict = {}
    handles = []

    def timed(name, first, last):
        def start(m, a):
            started[name] = time.perf_counter()

        def stop(m, a, o):
            seconds[name] += time.perf_counter() - started[name]

        return [first.register_forward_pre_hook(start), last.register_forward_hook(stop)]

    for name, (first, last) in named.items():
        handles += timed(name, first, last)
    with torch.no_grad(), autocast(pred.device, precision):
        net(*inputs)  # warm-up
        seconds.clear()
        peak = matmul_gflops(precision)
        t = time.perf_counter()
        for _ in range(repeats):
            net(*inputs)
        window = (time.perf_counter() - t) / repeats
        for h in handles:
            h.remove()
        with FlopCounterMode(display=False, depth=None, custom_mapping=flop_formulas()) as fc:
            net(*inputs)
    counts = fc.get_flop_counts()
    rows = {}
    for name, (first, last) in named.items():
        paths = ["TagsNet." + name] if first is last else [k for k in counts if k.startswith(f"TagsNet.{name}.")]
        gflop = sum(sum(counts[k].values()) for k in paths if k in counts) / 1e9
        s = seconds[name] / repeats
        rows[name] = {"seconds": round(s, 4), "gflop": round(gflop, 2), "gflops": round(gflop / s, 1) if s else None}
    total = sum(counts.get("Global", {}).values()) / 1e9
    return {"machine": machine_info(), "model": model, "roi": list(pred.config.roi_size), "precision": precision,
            "matmul_gflops": round(peak, 1), "window_seconds": round(window, 3),
            "window_gflop_inference_net": round(total, 1), "parts": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/liver-demo", help="model folder (default models/liver-demo)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (default) or bf16 autocast, as the predictor runs it")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    keep_freed_memory()
    r = profile(a.model, a.repeats, a.precision)
    print(f"{r['machine']['cpu']}, {a.precision} matmul peak {r['matmul_gflops']} GFLOP/s; window "
          f"{'x'.join(map(str, r['roi']))}: {r['window_seconds']:.2f} s")
    for name, v in r["parts"].items():
        frac = f"{100 * v['gflops'] / r['matmul_gflops']:4.0f}%" if v["gflops"] else "   -"
        print(f"  {name:36s} {1000 * v['seconds']:7.1f} ms {v['gflop']:7.1f} GFLOP {v['gflops'] or 0:7.1f} GFLOP/s {frac}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1))
        print("written:", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
