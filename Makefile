# One command to run, one to test. Both set up .venv on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export VISION_MODEL_DIR ?= $(CURDIR)/var/models
export VISION_DATA_DIR ?= $(CURDIR)/var/data

.PHONY: run test install proto lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The registry has no CPU build of torchvision: the regular torch + torchvision wheels (CUDA builds) also run on CPU.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet "torch>=2.8" "torchvision>=0.23"
	$(PIP) install --quiet -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

## Regenerate vision/v1 from protos/ (the only way the generated code is made).
proto: $(STAMP)
	$(PY) -m vision.protogen

## Start every service and the gateway on 127.0.0.1:8000; Ctrl-C stops them all.
run: install
	$(VENV)/bin/vision run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy vision classifier_svc explain_svc detector_svc trainer_svc gateway benchmarks

## The whole suite: lint, types, tests.
test: install lint typecheck
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/classifier_bench.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
