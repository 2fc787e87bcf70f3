#!/usr/bin/env bash
# System packages the tests need (Orthanc with its DICOMweb plugin, dcmtk and iproute2 for the
# PACS test; npm, chromium and chromium-driver for the OHIF review and its browser test; g++
# and the Python headers for torch.compile's CPU code generation), installed from apt when
# missing. Needs root or sudo; without them the PACS test fails and says so.
set -euo pipefail
need=()
command -v Orthanc >/dev/null || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v storescu >/dev/null || need+=(dcmtk)
command -v g++ >/dev/null || need+=(g++)
command -v ip >/dev/null || need+=(iproute2)
command -v npm >/dev/null || need+=(npm)                  # fetches the OHIF Viewer (scripts/review.py)
command -v chromium >/dev/null || need+=(chromium)        # the OHIF browser test
command -v chromedriver >/dev/null || need+=(chromium-driver)
PYINC=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || echo /nonexistent)
[ -f "$PYINC/Python.h" ] || need+=(python3-dev)
[ ${#need[@]} -eq 0 ] && exit 0
echo "[setup] apt-get install ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null || true
$SUDO apt-get install -y -q "${need[@]}" >/dev/null
# The Debian package starts a system Orthanc on 0.0.0.0; the tests run their own in a private
# network namespace and do not need it.
if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
    $SUDO systemctl stop orthanc || true
fi
