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

from helpers import app_model_folder, check_round_trip, pacs_studies

N_STUDIES = 10
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    return pacs_studies(tmp_path_factory.mktemp("pacs-studies"), N_STUDIES)


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
    check_round_trip(report, N_STUDIES)
