"""scripts/gpu_check.sh, the check prepared for a machine with an NVIDIA GPU, runs on the CPU:
every step succeeds, the benchmark JSON names its device and times a window, and the application
writes a SEG for each sample study. A few minutes on 2 cores (the script at its smallest)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("TAGS_DEVICE", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert {"device", "cuda-tests", "bench", "app-totalseg", "app-lits117"} <= set(steps)
    assert summary["ok"] and summary["device"] == "cpu" and summary["commit"]
    for s in steps.values():
        assert s["exit_code"] == 0 and s["ok"] and s["seconds"] > 0, s
        assert Path(s["output"]).exists() and f"[gpu-check] {s['name']}" in proc.stdout
    assert len(proc.stdout.splitlines()) == len(steps) + 1  # one line per step, then the summary

    bench = json.loads(Path(steps["bench"]["output"]).read_text())
    assert bench["device"] == "cpu" and bench["window"]["fp32"]["seconds"] > 0
    assert bench["same_roi"]["roi_voxels"] == [64, 64, 64]
    for study in ("totalseg", "lits117"):
        results = Path(steps[f"app-{study}"]["output"])
        assert results == out / f"app-{study}" / "tags_results.json"
        assert list(results.parent.glob("SEG_*.dcm"))
