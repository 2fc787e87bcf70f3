"""MAP packaging: the Dockerfile lints clean, the build context is complete, and the application
run from that context with the MAP's environment writes the same SEG as the direct run.

These run without a container engine; tests/test_map_image.py builds and runs the image itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from app import run

from helpers import app_model_folder, result_files

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_dockerfile_lints_clean():
    proc = subprocess.run([str(BIN / "hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return app_model_folder(tmp_path_factory.mktemp("models") / "tags", organ_model=True)


@pytest.fixture(scope="module")
def context(model, tmp_path_factory):
    sys.path.insert(0, str(REPO / "scripts"))
    from map_context import build_context

    return build_context(model, tmp_path_factory.mktemp("map") / "context")


def test_build_context_is_complete(context, model):
    assert (context / "Dockerfile").read_text() == (REPO / "Dockerfile").read_text()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        m = re.match(r"COPY (?:--chown=\S+ )?(\S+) ", line)
        if m:
            assert (context / m.group(1)).exists(), f"COPY source {m.group(1)} missing from the context"
    app_json = json.loads((context / "map" / "app.json").read_text())
    assert json.loads(app_json["command"]) == ["python3", "/opt/holoscan/app"]
    assert app_json["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert json.loads((context / "map" / "pkg.json").read_text())["version"] == "0.1.0"
    # one model, its nested organ model inside it (not beside it as a second model)
    assert [p.name for p in (context / "models").iterdir()] == [model.name]
    assert (context / "models" / model.name / "metadata.json").is_file()
    assert (context / "models" / model.name / "organ" / "metadata.json").is_file()
    for pkg in ("tags", "operators", "training", "app"):
        assert (context / "src" / pkg / "__init__.py").is_file()


def test_app_runs_from_the_context_with_the_map_environment(context, model, tmp_path):
    from training.sample_study import build_totalseg_study

    study = build_totalseg_study(tmp_path / "study")
    app_json = json.loads((context / "map" / "app.json").read_text())
    root = tmp_path / "container"  # stands in for the container's file system

    def local(path: str) -> str:
        if path.startswith("/opt/holoscan/"):
            return str(context / path[len("/opt/holoscan/"):])
        return str(root / path.lstrip("/"))

    workdir = Path(local(app_json["workingDirectory"]))
    workdir.mkdir(parents=True)
    env = {k: local(v) if v.startswith("/") else str(workdir / v) for k, v in app_json["environment"].items()}
    # what the Dockerfile's COPY steps put outside /opt/holoscan
    for src, dst in (("app.config", "HOLOSCAN_CONFIG_PATH"), ("map/app.json", "HOLOSCAN_APP_MANIFEST_PATH"),
                     ("map/pkg.json", "HOLOSCAN_PKG_MANIFEST_PATH")):
        Path(env[dst]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(context / src, env[dst])
    shutil.copytree(study, env["HOLOSCAN_INPUT_PATH"])
    command = [sys.executable if c == "python3" else local(c) for c in json.loads(app_json["command"])]
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(context / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    packaged = result_files(env["HOLOSCAN_OUTPUT_PATH"])

    direct_out = tmp_path / "direct"
    run(["-i", str(study), "-o", str(direct_out), "-m", str(model)])
    direct = result_files(direct_out)
    a, b = pydicom.dcmread(packaged["seg"]), pydicom.dcmread(direct["seg"])
    assert np.array_equal(a.pixel_array, b.pixel_array)
    assert [s.SegmentLabel for s in a.SegmentSequence] == [s.SegmentLabel for s in b.SegmentSequence]
    ja, jb = (json.loads(f["results"].read_text()) for f in (packaged, direct))
    assert ja["tumors"] == jb["tumors"] and ja["organs"] == jb["organs"]
