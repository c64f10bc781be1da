# syntax=docker/dockerfile:1
#
# Glia image, in two variants that share every step after the base:
#
#   docker build -t glia:cpu .                            # default
#   docker build -t glia:cuda --build-arg VARIANT=cuda .  # NVIDIA GPUs
#
# The final stage is chosen by VARIANT (FROM base-${VARIANT}). BuildKit, the default
# builder of `docker build` and of docker-compose >= 1.28, builds only the stages that
# the chosen variant needs, so a CPU build never pulls the CUDA image.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim
# The CUDA libraries themselves come with the torch and faiss-gpu wheels (nvidia-*-cu12);
# the image supplies the NVIDIA container-toolkit setup and the driver compatibility libs.
# The lighter "-base-" flavour of the same tag is enough if image size matters.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------
# cpu: torch from the PyTorch CPU index. The same version on PyPI is the CUDA
# build and drags in ~3 GB of nvidia-* wheels that a CPU host never uses.
FROM ${PYTHON_IMAGE} AS base-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV VIRTUAL_ENV=/opt/glia \
    PATH=/opt/glia/bin:$PATH
COPY constraints.txt /tmp/constraints.txt
# pip first: older pips mishandle some extras in the dependency tree (lxml[html_clean]).
# The torch pin comes from constraints.txt, so the image and the dev setup cannot drift.
# hadolint ignore=DL3013
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" -c /tmp/constraints.txt torch \
 && pip install --no-cache-dir "faiss-cpu==1.15.1"

# ---------------------------------------------------------------------------
# cuda: not buildable on the project's own machines (no Docker engine, no PyTorch
# index); it is kept in step with the cpu stage by hand. Run it with
# `docker run --gpus all ...` (or `gpus: all` under deploy.resources in Compose).
FROM ${CUDA_IMAGE} AS base-cuda
# Must be a CUDA 12 build: faiss-gpu's wheels are built against CUDA 12, and both
# should load the same nvidia-*-cu12 runtime libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG FAISS_GPU_VERSION=1.15.1
ENV VIRTUAL_ENV=/opt/glia \
    PATH=/opt/glia/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Ubuntu 24.04's Python is 3.12 (22.04's 3.10 is too old for Glia). A venv, as in the
# cpu stage, keeps pip away from the externally-managed system Python (PEP 668).
# The Python packages follow the pinned base image tag.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY constraints.txt /tmp/constraints.txt
# faiss-gpu and faiss-cpu install the same `faiss` module and overwrite each other:
# this variant must never install faiss-cpu (nor an extra that pulls it in).
# `torch==2.13.0` in constraints.txt also matches the CUDA build's "2.13.0+cu128".
# hadolint ignore=DL3013
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" -c /tmp/constraints.txt torch \
 && pip install --no-cache-dir "faiss-gpu==${FAISS_GPU_VERSION}"

# ---------------------------------------------------------------------------
# Everything below is common to both variants.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime

# A fixed UID/GID so that bind-mounted shard folders and databases can be given
# matching ownership on the host.
ARG GLIA_UID=10001
ARG GLIA_GID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GLIA_HOME=/var/lib/glia

WORKDIR /app

# Dependencies before the source, so that a code change reuses this (multi-GB) layer.
# The list is read from pyproject.toml so that it is never written down twice.
COPY pyproject.toml constraints.txt ./
# The core dependencies plus the extras a production image runs: the model taggers, the quality
# filters, the dashboard and Dask (faiss-cpu or faiss-gpu comes with torch in the base stage above), and `s3`:
# production corpora usually live in an object store.
ARG GLIA_EXTRAS="models quality lang dashboard dask s3"
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; print('\n'.join(p['dependencies'] + [d for e in os.environ['GLIA_EXTRAS'].split() for d in x[e]]))" \
        > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The source stays in /app (owned by root, read-only to the runtime user) because a
# Prefect deployment served by the process worker names its flow by path, e.g.
# flows/nightly.py:nightly_hygiene, relative to this directory.
COPY . .
# The risk tagger's default LSTM ships in tox-block, whose declared TensorFlow is never imported
# (h5py reads the weights): installed --no-deps after pip check, which would report that.
RUN pip install --no-cache-dir -c constraints.txt ".[$(echo $GLIA_EXTRAS | tr ' ' ',')]" \
 && pip check \
 && pip install --no-cache-dir --no-deps tox-block==0.1.2 \
 && rm -rf build ./*.egg-info

# Writable places, created in the image so that named volumes mounted over them start
# out owned by the runtime user (Docker copies the ownership of an image directory
# into an empty named volume). GLIA_HOME also holds Prefect's home (flows/env.py).
# --no-log-init: with a high UID, useradd would otherwise write a large sparse lastlog.
RUN groupadd --system --gid "$GLIA_GID" glia \
 && useradd --system --no-log-init --uid "$GLIA_UID" --gid glia --home-dir "$GLIA_HOME" \
        --shell /usr/sbin/nologin glia \
 && mkdir -p "$GLIA_HOME" /data/glia /data/shards \
 && chown -R glia:glia "$GLIA_HOME" /data/glia

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER ${GLIA_UID}:${GLIA_GID}

ENTRYPOINT ["glia"]
CMD ["--help"]
