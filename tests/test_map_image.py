"""The MAP container image, built and run by a real container engine.

`scripts/build_map.sh --local-base` builds (or, from its layer cache, refreshes) the image
tags-seg-map:<version> on a Debian 12 base made from Debian's packages (the CUDA runtime image
cannot be pulled without nvcr.io). Then the image runs as the MAP specification mounts it: the
study read-only at /var/holoscan/input, /var/holoscan/output, the model baked in, no network,
its non-root user. Its SEG and SR must equal the direct run's (`python app` with the same model
folder), and nothing may be written outside the output folder. The PACS round trip then runs
the image per study through Orthanc.

Skipped, with the reason printed, when no container engine (podman, or docker with a running
daemon) is installed or TAGS_MAP_IMAGE_TEST=0. `.ci/run` installs podman and runs this file
when the packaging inputs differ from those of the last recorded image build
(docs/perf/map-image-build.json), and sets TAGS_MAP_IMAGE_TEST=0 otherwise. With
TAGS_MAP_IMAGE_TEST=1 a missing engine is an error, not a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import check_round_trip, pacs_studies, result_files, sr_content

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "liver-demo"
MAP_UID = 1000  # Dockerfile: user holoscan, 1000:1000


def _engine() -> list | None:
    """The container engine build_map.sh builds with (docker with a running daemon, else podman
    with its settings), None when neither is installed."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_map.sh"), "--engine"], capture_output=True, text=True)
    return proc.stdout.split() if proc.returncode == 0 else None


if os.environ.get("TAGS_MAP_IMAGE_TEST") == "1" and _engine() is None:
    raise RuntimeError("TAGS_MAP_IMAGE_TEST=1 but no container engine (podman or docker) is installed")
ENGINE = None if os.environ.get("TAGS_MAP_IMAGE_TEST") == "0" else _engine()
if ENGINE is None:
    reason = ("TAGS_MAP_IMAGE_TEST=0 (.ci/run: the packaging inputs equal those of the last recorded image build)"
              if os.environ.get("TAGS_MAP_IMAGE_TEST") == "0" else
              "no container engine (podman, or docker with a running daemon) is installed: the MAP image is not built")
    print(f"\n[test_map_image] skipped: {reason}")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def image():
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_map.sh"), "--local-base", "--model", str(MODEL)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"\n[test_map_image] build_map.sh: {time.perf_counter() - t0:.0f} s; {proc.stdout.strip().splitlines()[-2]}")
    return json.loads((REPO / "build" / "map-image" / "build.json").read_text())["image"]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    from training.sample_study import build_sample_studies

    return build_sample_studies(tmp_path_factory.mktemp("studies") / "studies")


def _run_container(image: str, study: Path, out: Path, name: str) -> float:
    """Runs the image on ``study`` the way the MAP specification mounts it; returns the wall
    time from `run` to its exit. The container is kept (for `diff`) and removed afterwards."""
    out.mkdir(parents=True)
    os.chown(out, MAP_UID, MAP_UID)
    subprocess.run([*ENGINE, "rm", "-f", name], capture_output=True)
    t0 = time.perf_counter()
    proc = subprocess.run([*ENGINE, "run", "--name", name, "--network", "none",
                           "-v", f"{study}:/var/holoscan/input:ro", "-v", f"{out}:/var/holoscan/output", image],
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return seconds


def _paths(diff: list) -> set:
    return {p for p in diff if p not in ("C", "A", "D")}


def _engine_only_diff(image: str) -> list:
    name = "tags-map-test-true"
    subprocess.run([*ENGINE, "rm", "-f", name], capture_output=True)
    subprocess.run([*ENGINE, "run", "--name", name, "--network", "none", "--entrypoint", "/bin/true", image], check=True)
    try:
        return subprocess.run([*ENGINE, "diff", name], capture_output=True, text=True, check=True).stdout.split()
    finally:
        subprocess.run([*ENGINE, "rm", "-f", name], capture_output=True)


def test_image_console_scripts_run(image):
    """The console scripts the image installs (tags-train, tags-bench) import and answer --help,
    so a site can measure its own machine with the image it deploys."""
    for script in ("tags-train", "tags-bench"):
        proc = subprocess.run([*ENGINE, "run", "--rm", "--network", "none", "--entrypoint", script, image, "--help"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{script} --help in the image failed:\n{proc.stderr[-2000:]}"
        assert "usage:" in proc.stdout


@pytest.mark.parametrize("name", ["totalseg", "lits117"])
def test_container_run_equals_the_direct_run(image, studies, tmp_path, name):
    container = f"tags-map-test-{name}"
    out = tmp_path / "container"
    seconds = _run_container(image, studies[name], out, container)
    try:
        changed = subprocess.run([*ENGINE, "diff", container], capture_output=True, text=True, check=True).stdout.split()
        user = subprocess.run([*ENGINE, "inspect", "--format", "{{.Config.User}}", container],
                              capture_output=True, text=True, check=True).stdout.strip()
    finally:
        subprocess.run([*ENGINE, "rm", "-f", container], capture_output=True)
    # `diff` lists paths changed in the container's own file system (the mounts are not in it):
    # nothing outside /var/holoscan/output, which is a mount, beyond what the engine itself
    # changes in any container (podman: /etc, for hosts and hostname).
    assert _paths(changed) == _paths(_engine_only_diff(image)), f"the container wrote outside /var/holoscan/output: {changed}"
    assert user == "holoscan"
    packaged = result_files(out)
    assert {p.stat().st_uid for p in packaged.values()} == {MAP_UID}  # written by the non-root user

    t0 = time.perf_counter()
    direct_out = tmp_path / "direct"
    proc = subprocess.run([sys.executable, str(REPO / "app"), "-i", str(studies[name]), "-o", str(direct_out),
                           "-m", str(MODEL)], capture_output=True, text=True)
    direct_seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    direct = result_files(direct_out)
    print(f"\n[test_map_image] {name}: container run {seconds:.1f} s (podman run to exit), direct run "
          f"{direct_seconds:.1f} s (python app)")

    a, b = pydicom.dcmread(packaged["seg"]), pydicom.dcmread(direct["seg"])
    assert np.array_equal(a.pixel_array, b.pixel_array)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in a.SegmentSequence] == \
        [(s.SegmentNumber, s.SegmentLabel) for s in b.SegmentSequence]
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert sr_content(packaged["sr"]) == sr_content(direct["sr"])
    assert len(sr_content(direct["sr"])) > 0
    la, lb = (json.loads(f["lesions"].read_text()) for f in (packaged, direct))
    assert la["targets"] == lb["targets"]


def test_pacs_round_trip_runs_the_container(image, tmp_path_factory):
    """10 studies through Orthanc, the gateway running the MAP image per study; then the same
    studies with `python app` and the same model, for the time per study side by side."""
    studies = pacs_studies(tmp_path_factory.mktemp("pacs-studies"), n=10)
    reports = {}
    for runner, args in (("container", ["--image", image, "--engine", " ".join(ENGINE)]),
                         ("direct", ["--model", str(MODEL)])):
        work = tmp_path_factory.mktemp(f"pacs-{runner}")
        proc = subprocess.run(["unshare", "--net", "--", sys.executable, str(REPO / "tests" / "pacs_flow.py"),
                               "--studies", str(studies), "--work", str(work), *args],
                              capture_output=True, text=True, timeout=2400)
        assert proc.returncode == 0, f"PACS flow ({runner}) failed: {proc.stderr[-3000:]}"
        reports[runner] = json.loads(proc.stdout.strip().splitlines()[-1])
        check_round_trip(reports[runner], 10)
    times = {r: sorted(s["app_seconds"] for s in rep["per_study"].values()) for r, rep in reports.items()}
    summary = {r: {"median_s": float(np.median(t)), "min_s": t[0], "max_s": t[-1], "flow_s": reports[r]["seconds"]}
               for r, t in times.items()}
    print(f"\n[test_map_image] PACS round trip, 10 studies, 2 at a time, time per study: {json.dumps(summary)}")
