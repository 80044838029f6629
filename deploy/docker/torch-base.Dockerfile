# syntax=docker/dockerfile:1
# The layer every torch image shares: Python 3.11, the runtime user, and a venv with torch, torchvision and what
# every model service needs, installed once from the hashed lock requirements/classifier.txt (the smallest model
# lock: explain.txt, detector.txt and trainer.txt each hold all of it at the same pins and hashes, which
# tests/test_deploy_images.py checks). The classifier, explain, detector and trainer images are FROM it
# (build arg BASE_IMAGE), so a registry and a node store these ~4 GB once, not four times.
# Build it first, from the repository root:
#   docker build -f deploy/docker/torch-base.Dockerfile -t vision-torch-base .
# torch is the lock's (pinned by requirements/torch.in): the CUDA 13.0 build of 2.14.1, PyPI's Linux x86_64 wheel,
# with its CUDA libraries (nvidia-*) pinned and hashed beside it. It needs NVIDIA driver >= 580 on the GPU nodes
# and a Turing (sm_75) or newer GPU; it runs on CPU as well. The CPU build (the -cpu images): a lock made from
# https://download.pytorch.org/whl/cpu and --build-arg TORCH_INDEX_URL=... TORCH_CUDA=cpu (README, Deploy: images).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION=2.14.1
ARG TORCH_CUDA=cu130
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN groupadd --gid 10001 vision \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/vision --shell /usr/sbin/nologin vision \
 && mkdir -p /models /data && chown 10001:10001 /models /data
# (/models and /data owned by the service user: a new Docker volume mounted there starts out as theirs.)
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/build
# From the hashed lock alone: every version and every file's sha256 fixed, and pip refuses anything else. Then: is
# torch the build this file says?
COPY requirements/classifier.txt ./requirements/
RUN pip install --require-hashes ${TORCH_INDEX_URL:+--extra-index-url=$TORCH_INDEX_URL} -r requirements/classifier.txt \
 && python -c "import sys, torch; want = sys.argv[1]; sys.exit(None if torch.__version__ == want else f'the lock has torch {torch.__version__}, not {want} (TORCH_VERSION, TORCH_CUDA)')" "${TORCH_VERSION}+${TORCH_CUDA}" \
 && rm -rf /opt/build
# glibc: give large freed blocks (decoded photos) back at once and keep 2 arenas, so memory returns
# after a burst of large images (the services set the same themselves when these are unset).
# The root filesystem is read-only in the cluster: every cache lives under HOME (an emptyDir there).
ENV PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=4194304 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/vision \
    XDG_CACHE_HOME=/home/vision/.cache \
    VISION_MODEL_DIR=/models
# The NVIDIA container runtime mounts only the driver libraries named here; unset it would be
# "utility" alone (nvidia-smi, no CUDA). nvidia/cuda images set the same.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/vision
