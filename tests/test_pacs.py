"""PACS round trip against a real Orthanc, inside a private network namespace (loopback only).

tests/pacs_flow.py does the work inside `unshare --net` (two application processes at a time,
one CPU thread each); this test prepares 10 studies from real CT pixels and a model folder,
runs it and checks its report. If the namespace or Orthanc cannot be started the test fails
with that message: it never skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tags.geometry import affine_from_spacing
from training.dicom_series import SeriesInfo, read_series, write_ct_series

from helpers import app_model_folder

N_STUDIES = 10
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    from training.sample_study import build_totalseg_study

    vol, _ = read_series(build_totalseg_study(tmp_path_factory.mktemp("ts") / "totalseg"))
    crop = vol[5:15, 150:310, 40:200]  # 10 real slices, 160 x 160, around the liver
    root = tmp_path_factory.mktemp("pacs-studies")
    for i in range(N_STUDIES):
        write_ct_series(crop, affine_from_spacing((2.0, 0.9765625, 0.9765625), (-80.0, -60.0, 100.0 + i)),
                        root / f"study{i:02d}",
                        SeriesInfo(uid_seed=f"pacs-{i}", patient_id=f"TAGS-PACS-{i:02d}", patient_name=f"Pacs^Test{i:02d}"))
    return root


def test_orthanc_round_trip(studies, tmp_path):
    for tool in ("unshare", "Orthanc", "storescu", "ip"):
        assert shutil.which(tool), f"{tool} not found: .ci/run installs orthanc, orthanc-dicomweb and dcmtk from apt"
    model = app_model_folder(tmp_path / "model")
    proc = subprocess.run(
        ["unshare", "--net", "--", sys.executable, str(REPO / "tests" / "pacs_flow.py"), "--studies", str(studies),
         "--model", str(model), "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, f"PACS flow failed (namespace or Orthanc?): {proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    assert report["errors"] == []
    assert report["studies_sent"] == N_STUDIES and report["results"] == N_STUDIES  # none lost
    # Every finished study was re-forwarded by Orthanc (its results made it stable again), and
    # the gateway skipped each re-forward: one application run, one SEG and one SR per study.
    assert report["duplicates_skipped"] >= N_STUDIES, report["duplicates_skipped"]
    for uid, s in report["per_study"].items():
        assert s["app_runs"] == 1, (uid, s)
        assert s["seg_instances"] == 1 and s["sr_instances"] == 1, (uid, s)  # none lost, none duplicated
        assert {"CT", "SEG", "SR"} <= set(s["modalities"]), s  # results in the CT's study
        assert s["dataset_identical"], s
        if s["returned_by"] == "STOW-RS":
            assert s["file_identical"], s  # STOW-RS stores the application's file as it is
    assert {s["returned_by"] for s in report["per_study"].values()} == {"C-STORE", "STOW-RS"}
