#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite on this machine (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
ulimit -s 32768 2>/dev/null || true   # Holoscan wants a 32 MB stack
exec .venv/bin/python -m pytest tests "$@"
