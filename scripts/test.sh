#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite on this machine (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/apt_packages.sh || echo "[setup] could not install orthanc/dcmtk from apt; the PACS test will fail"
ulimit -s 32768 2>/dev/null || true   # Holoscan wants a 32 MB stack
exec .venv/bin/python -m pytest tests "$@"
