# syntax=docker/dockerfile:1
# detector_svc: Ultralytics YOLO object detection. `python -m detector_svc` on port 50053.
# Build from the repository root, after the shared torch layer (torch-base.Dockerfile; the README's deploy
# section has the push commands):
#   docker build -f deploy/docker/torch-base.Dockerfile -t vision-torch-base .
#   docker build -f deploy/docker/detector.Dockerfile -t vision-detector .
# torch, torchvision and what every model service needs come with the base (requirements/classifier.txt);
# this image adds what requirements/detector.txt holds beyond it, and the project's wheel. TORCH_* name the torch
# build the base must hold (the lock's: the CUDA 13.0 build of 2.14.1, NVIDIA driver >= 580; README, Deploy:
# images for the CPU build).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The shared torch layer, by its name in your registry (`make images`: $(REGISTRY)/vision-torch-base:$(TAG)).
ARG BASE_IMAGE=vision-torch-base

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The code: the shared package and this service only, as a wheel built by the locked build backend. The
# service's lock rides along to the runtime stage.
COPY requirements/detector.txt requirements/opencv_headless.txt requirements/build.txt ./requirements/
COPY pyproject.toml README.md ./
COPY vision ./vision
COPY detector_svc ./detector_svc
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes -r requirements/build.txt \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${BASE_IMAGE} AS runtime
ARG TORCH_VERSION=2.14.1
ARG TORCH_CUDA=cu130
ARG TORCH_INDEX_URL=""
WORKDIR /opt/build
COPY --from=builder /src/requirements/detector.txt ./requirements/
COPY --from=builder /src/requirements/opencv_headless.txt ./requirements/
COPY --from=builder /wheels /tmp/wheels
# What this service needs beyond the base, from its hashed lock (every version and every file's sha256 fixed;
# pip refuses anything else). Then: is torch still the build named above? Then OpenCV: Ultralytics asks for
# opencv-python, the GUI build (Qt, X11 and libGL at import time); the headless build of the same release, from
# its own hashed lock (requirements/opencv_headless.txt), replaces it. That one needs nothing of the system but
# glibc and zlib, so the image installs no libGL. Then the project's wheel.
RUN pip install --require-hashes ${TORCH_INDEX_URL:+--extra-index-url=$TORCH_INDEX_URL} -r requirements/detector.txt \
 && python -c "import sys, torch; want = sys.argv[1]; sys.exit(None if torch.__version__ == want else f'the lock has torch {torch.__version__}, not {want} (TORCH_VERSION, TORCH_CUDA)')" "${TORCH_VERSION}+${TORCH_CUDA}" \
 && pip uninstall --yes opencv-python \
 && pip install --require-hashes --no-deps -r requirements/opencv_headless.txt \
 && python -c "import cv2" \
 && pip install --no-deps --no-cache-dir --disable-pip-version-check /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels /opt/build
ENV VISION_DETECTOR_HOST=0.0.0.0 \
    YOLO_OFFLINE=1
USER 10001:10001
WORKDIR /home/vision
EXPOSE 50053 9103
ENTRYPOINT ["python", "-m", "detector_svc"]
