# syntax=docker/dockerfile:1
# gateway: the HTTP gateway (FastAPI + uvicorn), no torch. `python -m gateway` on port 8000.
# Build from the repository root (the README's deploy section has the push commands):
#   docker build -f deploy/docker/gateway.Dockerfile -t vision-gateway .
# No torch in this image: the gateway only speaks HTTP and gRPC.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the hashed lock alone (`make lock`): every version and every file's sha256 fixed, and
# pip refuses anything else. Code changes reuse this layer.
COPY requirements/gateway.txt requirements/build.txt ./requirements/
RUN pip install --require-hashes -r requirements/gateway.txt
# Then the code: the shared package and this service only, as a wheel built by the locked build backend.
COPY pyproject.toml README.md ./
COPY vision ./vision
COPY gateway ./gateway
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
# The root filesystem is read-only in the cluster: every cache lives under HOME (an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/vision \
    XDG_CACHE_HOME=/home/vision/.cache \
    VISION_GATEWAY_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/vision
EXPOSE 8000 9100
ENTRYPOINT ["python", "-m", "gateway"]
