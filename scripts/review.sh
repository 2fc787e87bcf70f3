#!/usr/bin/env bash
# Review a study and the application's results in the OHIF Viewer (scripts/review.py, docs/review.md).
#
#   bash scripts/review.sh DICOM_FOLDER RESULT_FOLDER [--port 8080]
#   bash scripts/review.sh build/studies/lits117 build/output/lits117     # after scripts/demo.sh
#
# Sets up .venv and the apt packages (Orthanc with DICOMweb, npm) if missing, then serves Orthanc
# and OHIF on http://127.0.0.1:PORT and prints the viewer address of the study.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
(cd "$ROOT" && bash scripts/setup_env.sh && bash scripts/apt_packages.sh)
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/review.py" "$@"
