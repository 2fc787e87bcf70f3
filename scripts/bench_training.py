"""Training data path at scale: time to the first step (cold and warm cache), peak RSS per rank
and steps per second with 0 and 2 loader workers, for 1 and 2 processes, on simulated datasets.

    .venv/bin/python scripts/bench_training.py DATASET [DATASET ...] [--out build/bench-training]
        [--steps 12] [--encoder-size 128]

DATASET folders come from scripts/simulate_dataset.py. Every run is `tags-train train` (or
`torchrun --nproc_per_node 2 -m training.cli train`, gloo) in its own process group with
checkpoints every step; the time to the first step is from process start to the first
checkpoint file (the first step included), the start-up from process start to the run's
train_config.json (the network built, before the first step; on a cold cache the preprocessing
too), steps per second from the metrics.jsonl lines after the first step, peak RSS
the largest resident set of the process and its children (os.wait4). The data path alone (the
training run's sample stream, no network: cache opened, samples drawn and augmented) is timed
with 0 and 2 loader workers in a process of its own. One more run takes
`--activation-checkpointing` (the memory mode). Writes OUT/bench_training.json and prints a
table. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_train(dataset: Path, out: Path, cache: Path, *, steps: int, workers: int, nproc: int,
              encoder_size: int, extra: Sequence[str] = ()) -> Dict:
    """One training run (``extra``: more ``tags-train train`` options); its timings and peak RSS.
    ``seconds_to_start``: until the run folder's train_config.json exists (written once the
    network is built, before the first step; a cold cache's preprocessing comes before it)."""
    shutil.rmtree(out, ignore_errors=True)
    train = ["train", str(dataset), "--out", str(out), "--steps", str(steps), "--checkpoint-every", "1",
             "--keep-checkpoints", "1", "--cache-dir", str(cache), "--workers", str(workers),
             "--encoder-size", str(encoder_size), "--no-progress", *extra]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29600 + int(time.time()) % 300), "-m", "training.cli", *train]
    else:
        cmd = [sys.executable, "-m", "training.cli", *train]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    log = out.with_name(out.name + ".log")
    t0 = time.time()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        first = started = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # the child's rusage: its ranks included
            if pid:
                break
            if started is None and (out / "train_config.json").is_file():
                started = time.time() - t0
            if first is None and any((out / "checkpoints").glob("step-*.safetensors")):
                first = time.time() - t0
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    steady = (lines[-1]["step"] - lines[0]["step"]) / max(1e-9, lines[-1]["seconds"] - lines[0]["seconds"])
    return {"seconds_to_start": round(started, 1) if started is not None else None,
            "seconds_to_first_step": round(first if first is not None else time.time() - t0, 1),
            "wall_s": round(time.time() - t0, 1), "steps_per_s": round(steady, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


LOADER_CHILD = "--loader-child"
"""First argument of this script run as the child that times the sample stream (:func:`sample_stream`)."""


def sample_stream(dataset: str, cache: str, workers: int, steps: int, encoder_size: int) -> Dict:
    """Samples per second of the training sample stream alone, in this process: the cache opened,
    ``steps`` samples drawn and augmented with ``workers`` loader workers (after the first batch),
    and this process's peak RSS (without the workers')."""
    import resource
    from dataclasses import replace

    from tags.config import ModelConfig
    from tags.network import build_tags
    from training.cache import cached_training_cases
    from training.data import SamplingConfig
    from training.datasets import read_dataset
    from training.loader import StepSamples, step_loader
    from training.train import TrainConfig, model_config_for

    cfg = TrainConfig(datasets=[dataset], out="", model=replace(ModelConfig(), encoder_size=encoder_size))
    model = model_config_for(cfg, 384)
    net = build_tags(model, pretrained=False)
    t0 = time.time()
    cases = cached_training_cases([read_dataset(dataset)], model, cache)
    opened = time.time() - t0
    samples = StepSamples(cases, model, SamplingConfig(), seed=0, rank=0, steps=steps, img_size=net.img_size,
                          mask_size=net.prompt_encoder.mask_input_size[0])
    it = iter(step_loader(samples, 0, steps, workers=workers))
    next(it)  # workers started, first batch
    t0 = time.time()
    n = sum(1 for _ in it)
    return {"cache_open_s": round(opened, 2), "samples_per_s": round(n / (time.time() - t0), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def loader_rate(dataset: Path, cache: Path, *, workers: int, steps: int, encoder_size: int) -> Dict:
    """:func:`sample_stream` in a child process of its own (a fresh heap for its peak RSS)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, __file__, LOADER_CHILD, str(dataset), str(cache), str(workers), str(steps),
                          str(encoder_size)], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(dataset: Path, out: Path, steps: int, encoder_size: int) -> Dict:
    cache = out / f"cache-{dataset.name}"
    shutil.rmtree(cache, ignore_errors=True)
    res: Dict = {"cases": json.loads((dataset / "dataset.json").read_text())["numTraining"]}
    kw = dict(steps=steps, encoder_size=encoder_size)
    res["cold_1proc_w0"] = run_train(dataset, out / "run", cache, workers=0, nproc=1, **{**kw, "steps": 2})
    res["warm_1proc_w0"] = run_train(dataset, out / "run", cache, workers=0, nproc=1, **kw)
    res["warm_1proc_w2"] = run_train(dataset, out / "run", cache, workers=2, nproc=1, **kw)
    res["warm_2proc_w0"] = run_train(dataset, out / "run", cache, workers=0, nproc=2, **kw)
    res["warm_1proc_w0_activation_checkpointing"] = run_train(dataset, out / "run", cache, workers=0, nproc=1,
                                                              extra=["--activation-checkpointing"], **kw)
    res["loader_only"] = {f"w{w}": loader_rate(dataset, cache, workers=w, steps=4 * steps, encoder_size=encoder_size)
                          for w in (0, 2)}
    return res


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [LOADER_CHILD]:
        dataset, cache, workers, steps, encoder_size = argv[1:]
        print(json.dumps(sample_stream(dataset, cache, int(workers), int(steps), int(encoder_size))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+")
    p.add_argument("--out", default=str(REPO / "build" / "bench-training"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--encoder-size", type=int, default=128)
    a = p.parse_args(argv)
    from tags.device import machine_info

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report: Dict = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
                    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                             text=True).stdout.strip(),
                    "steps": a.steps, "encoder_size": a.encoder_size, "datasets": {}}
    for d in a.datasets:
        report["datasets"][Path(d).name] = measure(Path(d), out, a.steps, a.encoder_size)
        (out / "bench_training.json").write_text(json.dumps(report, indent=2) + "\n")
    rows: List[str] = [f"{'dataset':28s} {'run':40s} {'start s':>7s} {'first step s':>12s} {'steps/s':>8s} "
                       f"{'peak RSS MB':>11s} {'wall s':>7s}"]
    for name, res in report["datasets"].items():
        for k, v in res.items():
            if k == "loader_only":
                rows.append(f"{name:28s} loader alone: " + ", ".join(
                    f"{w[1:]} workers {r['samples_per_s']} samples/s ({r['peak_rss_mb']} MB)" for w, r in v.items()))
            elif isinstance(v, dict):
                start = "" if v["seconds_to_start"] is None else f"{v['seconds_to_start']:.1f}"
                rows.append(f"{name:28s} {k:40s} {start:>7s} {v['seconds_to_first_step']:12.1f} "
                            f"{v['steps_per_s']:8.3f} {v['peak_rss_mb']:11d} {v['wall_s']:7.1f}")
    print("\n".join(rows))
    print(f"written: {out / 'bench_training.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
