#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv from requirements.txt.
# Idempotent: reinstalls only when requirements*.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! command -v "$PY" >/dev/null; then
    echo "[setup] error: no python3 found; install Python 3.11 (Debian 12: apt-get install python3)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -c "import ensurepip, venv" 2>/dev/null; then
        # Debian's python3 has no venv/ensurepip without the python3-venv package.
        echo "[setup] installing python3-venv (apt)"
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -q >/dev/null || true
        $SUDO apt-get install -y -q python3-venv >/dev/null \
            || { echo "[setup] error: python3 has no venv module; install python3-venv" >&2; exit 1; }
    fi
    echo "[setup] creating .venv with $($PY -V)"
    "$PY" -m venv .venv
fi
stamp=.venv/.tags-installed
want=$(cat requirements.txt requirements-app.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing requirements (several GB on the first run, a few minutes)"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
fi
