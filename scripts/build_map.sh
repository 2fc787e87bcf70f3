#!/usr/bin/env bash
# Build the MAP (MONAI Application Package) container image of the application.
#
#   bash scripts/build_map.sh [--local-base] [--model DIR] [--tag NAME:VERSION]
#   bash scripts/build_map.sh --inputs-hash      # print the hash of the packaging inputs
#   bash scripts/build_map.sh --engine           # print the engine command line (exit 1: none)
#
# 1. makes the build context offline (scripts/map_context.py: holoscan-cli's packager writes
#    app.json, pkg.json and the MAP layout; the project's packages and the Dockerfile are added);
# 2. builds it with docker (BuildKit) or, where docker is missing, podman (installed from apt
#    when run as root, set up by scripts/podman_env.sh: runc, cgroupfs, no default ulimits);
# 3. tags the image tags-seg-map:<application version of app.yaml> and labels it with the
#    packaging inputs' hash; prints the build time and the image size and writes them to
#    build/map-image/build.json.
#
# --local-base builds FROM a Debian 12 image made on the build host from Debian's packages (debootstrap
# --variant=minbase bookworm, imported as tags-debian12-minbase and cached in
# build/container-base) instead of the CUDA runtime image, for sites whose registry mirror has
# no nvcr.io. The host's CA bundle goes into the build as the secret pip_cert (pip behind
# TLS-intercepting proxies); it does not stay in the image.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
source scripts/podman_env.sh

# Files whose change calls for a new image build (the application's code and model are only
# copied into the last layers; a rebuild after changing them reuses the installed stack).
PACKAGING_INPUTS=(Dockerfile requirements-app.txt app.yaml scripts/map_context.py scripts/build_map.sh
                  scripts/podman_env.sh scripts/map/package-source.json)
inputs_hash() { cat "${PACKAGING_INPUTS[@]}" | sha256sum | cut -c1-16; }

# docker only when its engine answers (a docker CLI without a daemon is common on CI machines),
# else podman with the settings of podman_env.sh; sets ENGINE, returns 1 when neither is there.
choose_engine() {
    if command -v docker >/dev/null && ! docker --version 2>/dev/null | grep -qi podman \
            && timeout 20 docker info >/dev/null 2>&1; then
        ENGINE=(docker)
    elif command -v podman >/dev/null; then
        ENGINE=("${PODMAN[@]}")
    else
        return 1
    fi
}

LOCAL_BASE=0
MODEL=models/liver-demo
VERSION=$(sed -n 's/^ *version: *\([^ ]*\) *$/\1/p' app.yaml | head -n 1)
TAG=tags-seg-map:$VERSION
while [ $# -gt 0 ]; do
    case $1 in
        --local-base) LOCAL_BASE=1 ;;
        --model) MODEL=$2; shift ;;
        --tag) TAG=$2; shift ;;
        --inputs-hash) inputs_hash; exit 0 ;;
        --engine) choose_engine && echo "${ENGINE[*]}"; exit $? ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ -f "$MODEL/metadata.json" ] || { echo "error: no model folder at $MODEL (metadata.json missing)" >&2; exit 2; }

if ! choose_engine; then
    podman_install
    ENGINE=("${PODMAN[@]}")
fi
[ "${ENGINE[0]}" = docker ] && export DOCKER_BUILDKIT=1
echo "[map] container engine: ${ENGINE[*]}"

t_start=$(date +%s)
BASE_ARGS=()
if [ "$LOCAL_BASE" = 1 ]; then
    [ "${ENGINE[0]}" = podman ] || { echo "error: --local-base needs podman (debootstrap + podman import)" >&2; exit 2; }
    podman_base_image tags-debian12-minbase
    BASE_ARGS=(--build-arg BASE_IMAGE=localhost/tags-debian12-minbase)
fi
t_base=$(( $(date +%s) - t_start ))

bash scripts/setup_env.sh   # holoscan-cli's packager runs from the project's environment
CONTEXT=build/map-context
.venv/bin/python scripts/map_context.py --model "$MODEL" --out "$CONTEXT"

SECRET_ARGS=()
if CA=$(host_ca_bundle); then
    SECRET_ARGS=(--secret "id=pip_cert,src=$CA")
fi
HASH=$(inputs_hash)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
t0=$(date +%s)
"${ENGINE[@]}" build --network host "${BASE_ARGS[@]}" "${SECRET_ARGS[@]}" \
    --label "org.tags.packaging-inputs=$HASH" --label "org.tags.commit=$COMMIT" \
    -t "$TAG" -f "$CONTEXT/Dockerfile" "$CONTEXT"
t_build=$(( $(date +%s) - t0 ))
SIZE=$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$TAG")

mkdir -p build/map-image
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
cat > build/map-image/build.json <<JSON
{"date": "$(date +%F)", "commit": "$COMMIT", "cpu": "$cpu", "nproc": $(nproc), "engine": "${ENGINE[0]}",
 "image": "$TAG", "base": "$([ "$LOCAL_BASE" = 1 ] && echo tags-debian12-minbase || echo cuda-runtime)",
 "packaging_inputs": "$HASH", "base_image_s": $t_base, "build_s": $t_build, "size_bytes": $SIZE}
JSON
echo "[map] built $TAG in ${t_build} s (base image ${t_base} s), image size $(( SIZE / 1000000 )) MB"
echo "[map] run it: see docs/deployment.md (podman/docker run with /var/holoscan/input and /var/holoscan/output)"
