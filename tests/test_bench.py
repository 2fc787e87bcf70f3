"""The model benchmark runs end to end at a small size and reports what docs/performance.md
tabulates (numbers only: nothing about speed is asserted)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import bench
from benchmarks.peer_3dsam import SAM3DAdapterStyle


def test_peer_network_shapes_and_size():
    net = SAM3DAdapterStyle(roi=32).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 32, 32, 32))
    assert out.shape == (1, 2, 32, 32, 32) and torch.isfinite(out).all()
    # ViT-B encoder + adapters + necks: the published design has about 114 M parameters in use
    # (with its prompt branch, which is left out here).
    assert 95e6 < sum(p.numel() for p in net.parameters()) < 115e6


def test_bench_report_has_every_number(tmp_path):
    r = bench.run(None, peer_roi=32, repeats=1, dtypes=["fp32"])
    assert r["matmul_gflops"]["fp32"] > 0
    w = r["window"]["fp32"]
    assert r["window"]["gflop"] > 100 and w["seconds"] > 0 and 0 < w["fraction_of_matmul_peak"]
    assert len(w["paired_seconds"]) == len(w["paired_matmul_gflops"]) >= 3
    lo, hi = w["fraction_range"]
    assert 0 < lo <= w["fraction_of_matmul_peak_paired"] <= hi
    assert r["same_roi"]["tags"]["fp32"]["seconds"] > 0
    peer = r["same_roi"]["peer_3dsam_adapter_style"]
    assert peer["gflop"] > 50 and peer["fp32"]["seconds"] > 0
    assert r["same_roi"]["speedup"]["fp32"] > 0
    text = bench.format_report(r)
    assert "GFLOP per forward" in text and "paired with a peak" in text
    assert r["machine"]["cpu_capability"] and isinstance(r["machine"]["native_bf16"], bool)
    assert r["device"] == "cpu" and "cuda_device" not in r and "peak_cuda_mb" not in w
    # A CUDA run's report names the GPU and puts the device's peak memory beside the RSS.
    r.update(device="cuda:0",
             cuda_device={"name": "NVIDIA T", "capability": "8.0", "memory_mb": 1, "torch_cuda": "13.0"})
    w["peak_cuda_mb"] = 123
    text = bench.format_report(r)
    assert "device: cuda:0 (NVIDIA T, compute capability 8.0" in text and "CUDA 123 MB" in text


def test_profile_parts_cover_either_backbone():
    """scripts/profile_window.py times the encoder's own parts: TinyViT's four stages, ViT's blocks."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from profile_window import parts

    from tags.config import AdapterConfig, ModelConfig
    from tags.network import build_tags

    lite = list(parts(build_tags(ModelConfig(encoder_size=128), pretrained=False)))
    assert lite[:6] == ["image_encoder.encoder.patch_embed", *(f"image_encoder.encoder.layers.{i}" for i in range(4)),
                        "image_encoder.encoder.neck"]
    vit = build_tags(ModelConfig(backbone="sam_vit_b", adapter=AdapterConfig(slab_size=2)), pretrained=False, img_size=128)
    names = list(parts(vit))
    assert [n for n in names if ".blocks." in n] == [f"image_encoder.encoder.blocks.{i}" for i in range(12)]
    assert names[-4:] == ["fusion", "mask_decoder.transformer", "mask_decoder.output_upscaling", "head"]


def test_default_dtypes_run_bf16_only_where_native(monkeypatch):
    import tags.device

    monkeypatch.setattr(tags.device, "cpu_has_native_bf16", lambda: False)
    assert bench.default_dtypes() == ["fp32"]
    monkeypatch.setattr(tags.device, "cpu_has_native_bf16", lambda: True)
    assert bench.default_dtypes() == ["fp32", "bf16"]
    assert bench.default_dtypes("cuda:1") == ["fp32", "bf16", "fp16"]


def test_fp16_and_unknown_devices_are_refused_before_any_work(capsys):
    for argv, message in ((["--dtype", "fp16"], "fp16 runs only on CUDA"),
                          (["--device", "gpu"], "device must be cpu, cuda or cuda:N, not 'gpu'")):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
