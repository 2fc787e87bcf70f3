# syntax=docker/dockerfile:1
# MAP (MONAI Application Package) image of the TAGS application.
#
# Build context: made offline by `scripts/map_context.py` (holoscan-cli 4.2.0's packager with
# its docker step removed): app/, models/, map/app.json, map/pkg.json, app.config, tools, and
# src/ with the project's packages (the packager copies only app/). `scripts/build_map.sh` makes
# the context and builds the image with podman or docker:
#   bash scripts/build_map.sh                    # FROM the CUDA runtime image (a site with a registry)
#   bash scripts/build_map.sh --local-base       # FROM Debian 12 made with debootstrap (no registry)
# Layout per the MAP specification: /opt/holoscan/{app,models}, /etc/holoscan/{app,pkg}.json,
# /var/holoscan/{input,output,app.yaml}, entry point /var/holoscan/tools.
#
# BASE_IMAGE: Ubuntu 22.04 or Debian 12 (both have Python 3.11). torch's CUDA wheels bring their
# own CUDA runtime, so the image runs on the CPU and, with the NVIDIA container toolkit, on a GPU
# from either base.

ARG BASE_IMAGE=nvcr.io/nvidia/cuda:13.0.1-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

ARG UNAME=holoscan
ARG UID=1000
ARG GID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 (the stack is pinned for it; Ubuntu 22.04 and Debian 12 ship it) and the tools
# script's needs. Their versions are those of the base image's release (the base image is the pin).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv jq ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd -g "${GID}" "${UNAME}" \
    && useradd -l -m -d "/home/${UNAME}" -s /bin/bash -g "${GID}" -u "${UID}" "${UNAME}" \
    && mkdir -p /etc/holoscan /opt/holoscan/app /opt/holoscan/models /opt/holoscan/docs \
                /var/holoscan/input /var/holoscan/output /var/holoscan/logs \
    && chown -R "${UNAME}:${UNAME}" /var/holoscan

ENV HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_WORKDIR=/var/holoscan \
    HOLOSCAN_APPLICATION=/opt/holoscan/app \
    HOLOSCAN_TIMEOUT=0 \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_DOCS_PATH=/opt/holoscan/docs \
    HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml \
    HOLOSCAN_APP_MANIFEST_PATH=/etc/holoscan/app.json \
    HOLOSCAN_PKG_MANIFEST_PATH=/etc/holoscan/pkg.json \
    HOLOSCAN_LOGS_PATH=/var/holoscan/logs \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TAGS_CACHE=/var/holoscan/cache

# The application's exact pins first (one layer that changes only with requirements-app.txt; the
# test tools of requirements.txt stay out), then the project's packages: tags/, operators/,
# training/ (and app/) from src/. The optional build secret pip_cert is a CA bundle for pip
# behind a TLS-intercepting proxy (build_map.sh passes the host's); it is not kept in the image.
COPY src/requirements-app.txt /tmp/requirements-app.txt
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3.11 -m venv /opt/venv \
    && pip install --upgrade pip==25.3 \
    && pip install -r /tmp/requirements-app.txt
COPY src /opt/tags-src
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-deps /opt/tags-src

# Libraries create their cache folders when imported (cupy through Holoscan: ~/.cupy/kernel_cache;
# torch's inductor config: a torchinductor folder). They exist in the image already, so a run
# writes nothing outside /var/holoscan/output (tests/test_map_image.py compares `diff`). TAGS'
# index of checkpoint hashes is off: each run starts from the image, so it would only be written
# into the container's layer and lost.
ENV CUPY_CACHE_DIR=/home/${UNAME}/.cupy/kernel_cache \
    TORCHINDUCTOR_CACHE_DIR=/home/${UNAME}/.cache/torchinductor \
    TAGS_HASH_INDEX=0
RUN mkdir -p "${CUPY_CACHE_DIR}" "${TORCHINDUCTOR_CACHE_DIR}" \
    && chown -R "${UNAME}:${UNAME}" "/home/${UNAME}"

COPY --chown=${UNAME}:${UNAME} tools /var/holoscan/tools
COPY map/app.json /etc/holoscan/app.json
COPY map/pkg.json /etc/holoscan/pkg.json
COPY app.config /var/holoscan/app.yaml
COPY models /opt/holoscan/models
COPY app /opt/holoscan/app
RUN chmod +x /var/holoscan/tools

USER ${UNAME}
WORKDIR /var/holoscan
# The tools script runs the app.json command (python3 /opt/holoscan/app) by default and also
# offers `show`, `extract` and the other MAP commands.
ENTRYPOINT ["/var/holoscan/tools"]
