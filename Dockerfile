# syntax=docker/dockerfile:1
#
# PF-ViT serving image. Two variants from one file, chosen with a build argument:
#   docker build -t pfvit-serving:gpu .                          # CUDA 12 + cuDNN 9, onnxruntime-gpu
#   docker build -t pfvit-serving:cpu --build-arg VARIANT=cpu .  # python:3.11-slim, onnxruntime
# Only the stage the chosen variant needs is built (BuildKit prunes the other).
#
# What goes in: the `service` package and its runtime dependencies, plus models/.
# What never goes in: torch, the `train` extra, the `training` package (see the builder stage).

ARG VARIANT=gpu
ARG PYTHON_IMAGE=python:3.11-slim
# onnxruntime-gpu on PyPI is built for CUDA 12 + cuDNN 9 up to 1.26.x; from 1.27.0 on the
# PyPI wheels target CUDA 13 (their `cuda` extra requires nvidia-cuda-runtime~=13.0).
# Keep these two in step: a CUDA 12 base image with a CUDA 13 wheel silently falls back to CPU.
# tests/test_deploy.py checks the pair.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.26.0
# Same ONNX Runtime release on CPU, so both images give the same numerics.
ARG ORT_CPU_VERSION=1.26.0

# ---------------------------------------------------------------------------------------------
# builder: a wheel holding `service` only. pyproject's package discovery includes `training*`;
# copying just `service/` into the build context makes that pattern match nothing, so the
# training code (and its torch imports) cannot end up in the image. The wheel still declares the
# `pfvit-train`-style console scripts; they are inert here because their package is absent.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml ./
COPY service/ ./service/
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -c "import glob, sys, zipfile; \
names = zipfile.ZipFile(glob.glob('/wheels/pfvit_serving-*.whl')[0]).namelist(); \
sys.exit('the training package leaked into the service wheel' if any(n.startswith('training/') for n in names) else 0)"

# ---------------------------------------------------------------------------------------------
# deps-gpu: Ubuntu's python3 in a venv on the CUDA runtime image. The cudnn-runtime image already
# ships cudart, cuBLAS, cuFFT, cuRAND and cuDNN 9, so onnxruntime-gpu's pip `cuda`/`cudnn`
# extras (another ~3 GB of nvidia-* wheels) are not installed.
FROM ${CUDA_IMAGE} AS deps-gpu
ARG ORT_GPU_VERSION
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
# Not pinning apt versions: Ubuntu replaces them on every security update, so a pin breaks the
# build instead of making it reproducible; the base image tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY --from=builder /wheels /wheels
# `set --` expands the wheel's glob once so the extra can be appended to the file name.
# DL3013 (pin pip versions): the wheel is our own file and onnxruntime is pinned; the service's
# other dependencies follow pyproject's ranges like every other install of the project.
# hadolint ignore=DL3013
RUN set -- /wheels/pfvit_serving-*.whl \
    && pip install "$1[gpu]" "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && rm -rf /wheels

# ---------------------------------------------------------------------------------------------
# deps-cpu: the small image for machines without a GPU.
FROM ${PYTHON_IMAGE} AS deps-cpu
ARG ORT_CPU_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY --from=builder /wheels /wheels
# hadolint ignore=DL3013
RUN set -- /wheels/pfvit_serving-*.whl \
    && pip install "$1[cpu]" "onnxruntime==${ORT_CPU_VERSION}" \
    && rm -rf /wheels

# ---------------------------------------------------------------------------------------------
# runtime: everything that is the same for both variants.
# DL3006 (tag the image) does not apply: deps-gpu / deps-cpu are stages of this file.
# hadolint ignore=DL3006
FROM deps-${VARIANT} AS runtime
# MALLOC_ARENA_MAX: glibc gives each worker thread its own malloc arena, which fragments and
# keeps growing under steady load; two arenas keep RSS flat (docs/deploy.md, "Memory").
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PFVIT_HOST=0.0.0.0 \
    PFVIT_PORT=8000 \
    PFVIT_MODELS_DIR=/app/models \
    PFVIT_PROVIDERS=auto
# A fixed uid above the distro ranges, so a host folder mounted at /app/models can be made
# readable to it (or the container run with --user) without guessing.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin pfvit
WORKDIR /app
# Models stay owned by root: the service only reads them.
COPY models/ /app/models/
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# /readyz turns 200 only after the models are loaded and warmed up, hence the start period.
# Python's urllib because neither base image ships curl; urlopen raises on non-2xx, so exit 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PFVIT_PORT'] + '/readyz', timeout=4)"]
CMD ["python", "-m", "service"]
