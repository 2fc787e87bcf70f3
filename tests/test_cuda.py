"""The CUDA path: the committed demo model on an NVIDIA GPU agrees with the CPU, in fp32 and in
bf16 / fp16 autocast, and the model benchmark runs there. Marked ``cuda``: skipped without a GPU;
``pytest -m cuda`` (scripts/gpu_check.sh) runs only these; with TAGS_REQUIRE_CUDA=1 (the script
on a GPU machine) they run, and fail, when torch sees no GPU instead of skipping."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tags.inference import TagsPredictor

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TAGS_REQUIRE_CUDA") != "1", reason="no CUDA device")]

DEMO = Path(__file__).resolve().parents[1] / "models" / "liver-demo"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def case(lits117):
    """LiTS-117 (128^3 at its estimated 1.5 mm) with its true liver as the tumor search region."""
    from training.samples import lits117_affine

    image, labels = lits117
    return np.ascontiguousarray(image), lits117_affine(), labels >= 1


def predict(case, device: str, precision: str) -> np.ndarray:
    image, affine, liver = case
    pred = TagsPredictor.from_model_folder(DEMO, device=device, precision=precision)
    assert pred.device.type == torch.device(device).type
    return pred.predict(image, affine, {"liver": liver}, ["liver_tumor"])["liver_tumor"].probability


@pytest.fixture(scope="module")
def cpu_fp32(case):
    return predict(case, "cpu", "fp32")


def test_cuda_fp32_matches_the_cpu(case, cpu_fp32):
    """fp32 on CUDA (cuDNN convolutions may use TF32) gives the CPU's tumor mask."""
    cuda = predict(case, "cuda", "fp32")
    assert cuda.shape == cpu_fp32.shape and np.isfinite(cuda).all()
    assert np.abs(cuda - cpu_fp32).max() < 0.1
    assert dice(cuda > 0.5, cpu_fp32 > 0.5) > 0.98


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_stays_close_to_fp32(case, cpu_fp32, precision):
    """bf16 / fp16 autocast on CUDA: finite, and the tumor mask close to fp32's (bf16 instead of
    fp32 moves the demo model's held-out Dice by less than 0.02 on the CPU)."""
    prob = predict(case, "cuda", precision)
    assert np.isfinite(prob).all() and prob.max() > 0.5
    assert dice(prob > 0.5, cpu_fp32 > 0.5) > 0.9


def test_bench_runs_on_cuda():
    from benchmarks import bench

    r = bench.run(None, peer_roi=32, repeats=1, dtypes=["fp32", "bf16", "fp16"], device="cuda")
    assert r["device"].startswith("cuda") and r["cuda_device"]["name"] == torch.cuda.get_device_name()
    for dt in ("fp32", "bf16", "fp16"):
        w = r["window"][dt]
        assert r["matmul_gflops"][dt] > 0 and w["seconds"] > 0 and w["peak_cuda_mb"] > 0
        assert r["same_roi"]["tags"][dt]["peak_cuda_mb"] > 0
        assert r["same_roi"]["peer_3dsam_adapter_style"][dt]["peak_cuda_mb"] > 0
    assert "device: cuda" in bench.format_report(r)
