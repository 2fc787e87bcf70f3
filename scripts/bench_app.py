"""End-to-end benchmark of the application: DICOM in -> SEG out, wall time, peak RSS, stages.

    .venv/bin/python scripts/bench_app.py [--model models/liver-demo] [--out build/bench] [--slices 200 300]

Cases: the TotalSegmentator sample study (20 x 512 x 512, JPEG 2000), and 512 x 512 x N series
built from real CT pixels (the TotalSegmentator source distribution's aorta_report CT,
233 x 167 x 191 at 1.5 mm, resampled to 512 x 512 pixels of 0.684 mm and N slices over its
287 mm, padded with air). Each case runs `python app` in its own process; peak RSS is that
process's ru_maxrss (os.wait4). Writes OUT/bench_app.json and prints a table. Numbers, not
assertions: nothing here passes or fails.

The distance to the compute limit, per case: each model stage's GFLOP (the windows the
application ran, from tags_results.json's "windows", times one window's FLOPs counted by
torch.utils.flop_counter on the model as it runs), its ideal seconds at the matmul peak measured
in the same run in the precision the application used (the best of a measurement before and after
the cases), and the end-to-end wall time as a multiple of the whole run's pure-compute ideal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def large_series(out: Path, slices: int) -> Path:
    """A 512 x 512 x ``slices`` CT series from real CT pixels (cached in ``out``)."""
    folder = out / f"ct-512x512x{slices}"
    if (folder / f"CT{slices:04d}.dcm").is_file():
        return folder
    import SimpleITK as sitk

    from training.dicom_series import SeriesInfo, write_ct_series
    from training.registry_data import totalseg_sdist_dir

    img = sitk.ReadImage(str(totalseg_sdist_dir() / "aorta_report" / "example_ct.nii.gz"))
    size, spacing = np.array(img.GetSize()), np.array(img.GetSpacing())
    fov = size * spacing
    new_spacing = [max(fov[0], fov[1]) / 512, max(fov[0], fov[1]) / 512, fov[2] / slices]
    origin = np.array(img.GetOrigin()) - np.array([0, (512 * new_spacing[1] - fov[1]) / 2, 0])
    res = sitk.Resample(img, [512, 512, slices], sitk.Transform(), sitk.sitkLinear, origin.tolist(), new_spacing,
                        img.GetDirection(), -1024.0, sitk.sitkFloat32)
    vol = sitk.GetArrayFromImage(res)  # (z, y, x)
    direction = np.array(res.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = (direction * np.array(new_spacing))[:, [2, 1, 0]]
    affine[:3, 3] = res.GetOrigin()
    write_ct_series(vol, affine, folder, SeriesInfo(uid_seed=f"bench-{slices}", series_description=f"bench 512x512x{slices}"))
    return folder


def run_case(name: str, study: Path, model: Path, out: Path, extra: list) -> dict:
    result = out / f"result-{name}"
    subprocess.run(["rm", "-rf", str(result)], check=True)
    log = out / f"app-{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(REPO / "app"), "-i", str(study), "-o", str(result), "-m", str(model),
                                 *extra], stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name}: the application failed, see {log}")
    summary = json.loads((result / "tags_results.json").read_text())
    return {
        "case": name,
        "series": summary["ct"]["series"],
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 0),
        "stages_s": summary["timings_s"],
        "windows": summary["windows"],
        "runtime": summary["runtime"],
        "tumors": {k: v["volume_ml"] for k, v in summary["tumors"].items()},
        "organs": {k: (v["volume_ml"], v["organ_source"]) for k, v in summary["organs"].items()},
    }


def stage_window_gflop(pred, stage: str, target: str, shape: list, precision: str, nested: bool = False) -> float:
    """GFLOP of one model window of (d, h, w) ``shape`` of ``target`` in ``stage`` ("organs":
    image only; "tumors": image and an ellipsoid organ mask, whose anatomy prompts are derived),
    counted on the window model that runs it for ``pred`` (a TagsPredictor): the nested organ
    model's when ``nested`` (its windows beside the own network's) or when it runs the organ pass
    alone (``organ_pass`` "organ_model")."""
    import torch

    from benchmarks.bench import count_gflop, ellipsoid_organ
    from tags.device import autocast

    organ_pass = stage == "organs"
    if organ_pass and (nested or pred.config.organ_pass == "organ_model"):
        pred = pred.organ_predictor
    config = pred.config
    trained = config.organ_roi_size if organ_pass else config.roi_size
    spacing = config.preprocessing.organ_spacing if organ_pass else config.preprocessing.spacing
    g = torch.Generator().manual_seed(0)
    channels = [torch.rand(1, 1, *shape, generator=g)]
    if not organ_pass:
        channels.append(torch.from_numpy(ellipsoid_organ(shape))[None, None].float())
    x = torch.cat(channels, dim=1)
    with autocast(pred.device, precision):
        return count_gflop(lambda: pred.model(x, config.target(target), trained, spacing))


def compute_limit(model: Path, rows: list, peaks: dict) -> None:
    """Adds to each row its model stages' GFLOP and ideal seconds at the matmul peak of the
    precision the application ran in, and the wall time as a multiple of the whole ideal."""
    from tags.inference import TagsPredictor

    predictors: dict = {}  # precision -> the model folder's predictor
    counted: dict = {}
    for r in rows:
        precision = r["runtime"]["precision"]
        if precision not in predictors:
            predictors[precision] = TagsPredictor.from_model_folder(model, device="cpu", precision=precision)
        peak = peaks[precision]
        stages = {}
        for stage, targets in r["windows"].items():
            gflop = 0.0
            for target, w in targets.items():
                for nested, run in ((False, w), (True, w.get("organ_model"))):
                    if run is None:
                        continue
                    key = (stage, target, tuple(run["shape"]), precision, nested)
                    if key not in counted:
                        counted[key] = stage_window_gflop(predictors[precision], stage, target, run["shape"],
                                                          precision, nested)
                    gflop += run["count"] * counted[key]
            stages[stage] = {"seconds": r["stages_s"].get(stage), "gflop": round(gflop, 1),
                             "ideal_s": round(gflop / peak, 2),
                             "times_ideal": round(r["stages_s"][stage] / (gflop / peak), 1) if gflop else None}
        ideal = sum(v["gflop"] for v in stages.values()) / peak
        r["compute"] = {"matmul_peak_gflops": round(peak, 1), "precision": precision, "stages": stages,
                        "ideal_s": round(ideal, 2), "wall_times_ideal": round(r["wall_s"] / ideal, 1) if ideal else None}


def measure_peaks(precisions) -> dict:
    from benchmarks.bench import matmul_gflops

    return {p: matmul_gflops(p) for p in sorted(precisions)}


def analyse(model: Path, rows: list, peaks_before: dict) -> tuple:
    """(rows with their compute limit, the peaks used): runs in a child process (see main)."""
    after = measure_peaks(peaks_before)
    peaks = {p: max(peaks_before[p], after[p]) for p in peaks_before}
    compute_limit(model, rows, peaks)
    return rows, {"before": peaks_before, "after": after}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "liver-demo"))
    p.add_argument("--out", default=str(REPO / "build" / "bench"))
    p.add_argument("--slices", type=int, nargs="*", default=[200, 300])
    p.add_argument("--tag", default="", help="name of this configuration: writes OUT/bench_app-TAG.json")
    p.add_argument("--app-args", nargs=argparse.REMAINDER, default=[], help="passed to the application")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from training.sample_study import build_totalseg_study

    cases = [("totalseg-20x512x512", out / "totalseg")]
    if not (out / "totalseg").is_dir():
        build_totalseg_study(out / "totalseg")
    # Series are built in a child process: a forked application process would otherwise start
    # with this process's pages, and its peak RSS (ru_maxrss survives exec) would include them.
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        cases += [(f"ct-512x512x{n}", pool.submit(large_series, out, n).result()) for n in a.slices]
        peaks_before = None
        rows = []
        for name, study in cases:
            rows.append(run_case(name, study, Path(a.model), out, a.app_args))
            if peaks_before is None:  # the precision is known once the application has run
                peaks_before = pool.submit(measure_peaks, {rows[0]["runtime"]["precision"]}).result()
        rows, peaks = pool.submit(analyse, Path(a.model), rows, peaks_before).result()
    import psutil

    from tags.device import machine_info

    report = {"machine": {**machine_info(), "cpus": os.cpu_count(),
                          "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                          "python": platform.python_version()},
              "model": a.model, "date": time.strftime("%Y-%m-%d"), "app_args": a.app_args,
              "env": {k: v for k, v in os.environ.items() if k.startswith(("TAGS_", "TORCHINDUCTOR_"))},
              "matmul_peak_gflops": peaks, "cases": rows}
    path = out / (f"bench_app-{a.tag}.json" if a.tag else "bench_app.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'case':24} {'wall s':>7} {'peak RSS MB':>12}  stages (s)")
    for r in rows:
        stages = ", ".join(f"{k} {v}" for k, v in r["stages_s"].items())
        print(f"{r['case']:24} {r['wall_s']:7.1f} {r['peak_rss_mb']:12.0f}  {stages}")
    print(f"\n{'case':24} {'stage':8} {'seconds':>8} {'GFLOP':>8} {'ideal s':>8} {'x ideal':>8}   (matmul peak, precision)")
    for r in rows:
        c = r["compute"]
        for stage, v in c["stages"].items():
            print(f"{r['case']:24} {stage:8} {v['seconds']:8.2f} {v['gflop']:8.0f} {v['ideal_s']:8.2f} {v['times_ideal'] or 0:8.1f}")
        print(f"{r['case']:24} {'all':8} {r['wall_s']:8.1f} {'':8} {c['ideal_s']:8.2f} {c['wall_times_ideal'] or 0:8.1f}"
              f"   ({c['matmul_peak_gflops']} GFLOP/s, {c['precision']})")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
