# syntax=docker/dockerfile:1
# explain_svc: CAM / Grad-CAM / Grad-CAM++ explanations. `python -m explain_svc` on port 50052.
# Build from the repository root (the README's deploy section has the push commands):
#   docker build -f deploy/docker/explain.Dockerfile -t vision-explain .
# torch comes from PyPI: on Linux x86_64 that is the CUDA build (it runs on CPU as well). CPU-only
# clusters can build smaller images with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Optional: torch + torchvision from another index (e.g. the CPU wheels) before everything else.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" "torch>=2.8" "torchvision>=0.23"; \
    fi
# Dependencies first, from pyproject.toml alone, so code changes reuse this (large) layer.
COPY pyproject.toml README.md ./
RUN pip install ".[explain]" && pip uninstall --yes vision-mesh
# Then the code: the shared package and this service only, as a wheel installed in the runtime stage.
COPY vision ./vision
COPY explain_svc ./explain_svc
RUN pip wheel --no-deps --wheel-dir /wheels .

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
    VISION_EXPLAIN_HOST=0.0.0.0 \
    VISION_MODEL_DIR=/models
# The NVIDIA container runtime mounts only the driver libraries named here; unset it would be
# "utility" alone (nvidia-smi, no CUDA). nvidia/cuda images set the same.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/vision
EXPOSE 50052
ENTRYPOINT ["python", "-m", "explain_svc"]
