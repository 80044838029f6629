# syntax=docker/dockerfile:1
# classifier_svc: top-k image classification. `python -m classifier_svc` on port 50051.
# Build from the repository root (the README's deploy section has the push commands):
#   docker build -f deploy/docker/classifier.Dockerfile -t vision-classifier .
# torch is the lock's (requirements/<extra>.txt, pinned by requirements/torch.in): the CUDA 13.0 build of 2.14.1,
# PyPI's Linux x86_64 wheel, with its CUDA libraries (nvidia-*) pinned and hashed beside it. It needs NVIDIA driver
# >= 580 on the GPU nodes and a Turing (sm_75) or newer GPU (CUDA 13 dropped Maxwell, Pascal and Volta); it runs on
# CPU as well. Another build (an older CUDA for older drivers, or the small CPU wheels) means a lock made for it:
# README, Deploy: the torch build (TORCH_INDEX_URL, TORCH_CUDA and `make lock TORCH_INDEX_URL=...`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.14.1
ARG TORCH_CUDA=cu130
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the hashed lock alone (`make lock`): every version and every file's sha256 fixed, and
# pip refuses anything else. Code changes reuse this (large) layer. Then: is torch the build this file says?
COPY requirements/classifier.txt requirements/build.txt ./requirements/
RUN pip install --require-hashes ${TORCH_INDEX_URL:+--extra-index-url=$TORCH_INDEX_URL} -r requirements/classifier.txt \
 && python -c "import sys, torch; want = sys.argv[1]; sys.exit(None if torch.__version__ == want else f'the lock has torch {torch.__version__}, not {want} (TORCH_VERSION, TORCH_CUDA)')" "${TORCH_VERSION}+${TORCH_CUDA}"
# Then the code: the shared package and this service only, as a wheel built by the locked build backend.
COPY pyproject.toml README.md ./
COPY vision ./vision
COPY classifier_svc ./classifier_svc
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes -r requirements/build.txt \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 10001 vision \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/vision --shell /usr/sbin/nologin vision
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels
# glibc: give large freed blocks (decoded photos) back at once and keep 2 arenas, so memory returns
# after a burst of large images (the service sets the same itself when these are unset).
# The root filesystem is read-only in the cluster: every cache lives under HOME (an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=4194304 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/vision \
    XDG_CACHE_HOME=/home/vision/.cache \
    VISION_CLASSIFIER_HOST=0.0.0.0 \
    VISION_MODEL_DIR=/models
# The NVIDIA container runtime mounts only the driver libraries named here; unset it would be
# "utility" alone (nvidia-smi, no CUDA). nvidia/cuda images set the same.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/vision
EXPOSE 50051 9101
ENTRYPOINT ["python", "-m", "classifier_svc"]
