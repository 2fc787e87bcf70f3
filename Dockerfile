# syntax=docker/dockerfile:1
# MAP (MONAI Application Package) image of the TAGS application.
#
# Build context: made offline by `scripts/map_context.py` (holoscan-cli 4.2.0's packager with
# its docker step removed): app/, models/, map/app.json, map/pkg.json, app.config, tools, and
# src/ with the project's packages (the packager copies only app/). Then, where Docker exists:
#   docker build -t tags-seg-map:0.1.0 build/map-context
#   monai-deploy run tags-seg-map:0.1.0 -i DICOM_FOLDER -o OUTPUT_FOLDER      (or docker run, see README)
# Layout per the MAP specification: /opt/holoscan/{app,models}, /etc/holoscan/{app,pkg}.json,
# /var/holoscan/{input,output,app.yaml}, entry point /var/holoscan/tools.

ARG CUDA_IMAGE=nvcr.io/nvidia/cuda:13.0.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG UNAME=holoscan
ARG UID=1000
ARG GID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 (the stack is pinned for it; Ubuntu 22.04 ships it) and the tools script's needs.
# Their versions are those of the base image's Ubuntu release (the base image is the pin).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv jq \
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

# The exact pins first (one layer that changes only with requirements.txt), then the project's
# packages: tags/, operators/, training/ (and app/) from src/.
COPY src/requirements.txt /tmp/requirements.txt
RUN python3.11 -m venv /opt/venv \
    && pip install --upgrade pip==25.3 \
    && pip install -r /tmp/requirements.txt
COPY src /opt/tags-src
RUN pip install --no-deps /opt/tags-src

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
