# image-embedder: everything a fresh machine needs is installed from here (pinned, cached).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# An interpreter >= 3.11 built with a shared libpython (Triton's Python backend links it).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv
VENV := .venv
SERVING_VENV := .venv-serving
KAFKA_VERSION := 4.1.1
KAFKA_STAMP := .cache/kafka/$(KAFKA_VERSION)/libs/.complete
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

include mk/helm.mk
include mk/images.mk

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.complete: requirements.lock pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@touch $@

$(SERVING_VENV)/.complete: serving/requirements.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(SERVING_VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(SERVING_VENV)/bin/python serving/requirements.lock
	@touch $@

# The Quix Streams peer of the benchmark (bench/quix_peer.py) in its own environment: quixstreams
# pins its own confluent-kafka and pydantic, never installed into the service's.
QUIX_VENV := .venv-quix
$(QUIX_VENV)/.complete: bench/quix-requirements.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(QUIX_VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(QUIX_VENV)/bin/python bench/quix-requirements.lock
	@touch $@

.PHONY: quix-venv
quix-venv: $(QUIX_VENV)/.complete ## The Quix Streams peer's environment (bench only)

$(KAFKA_STAMP): devstack/kafka/pom.xml | $(VENV)/.complete
	$(PY) -m devstack fetch-kafka

.PHONY: setup
setup: $(VENV)/.complete $(SERVING_VENV)/.complete $(KAFKA_STAMP) ## Install the environments and Kafka

# MinIO (the S3 test server, AGPL: tests and demo only) built with Go once per version into the
# user's cache folder, outside the clone; a no-op once built.
.PHONY: minio
minio: $(VENV)/.complete ## Build the S3 test server (MinIO) into the user's cache, once
	$(PY) -m devstack fetch-minio

.PHONY: up
up: setup minio ## Start Kafka, Milvus, Triton and MinIO on their default ports (reuses running ones); SECURE=1: also a secured Kafka on 9094
	$(PY) -m devstack up
	@if [ "$(SECURE)" = 1 ]; then $(PY) -m devstack secure-kafka; fi

.PHONY: down
down: ## Stop the servers `make up` started
	@if [ -x $(PY) ]; then $(PY) -m devstack down; $(PY) -m devstack secure-kafka --stop >/dev/null; fi

.PHONY: status
status: ## Show which servers are running
	$(PY) -m devstack status

.PHONY: demo
demo: setup ## Publish photos, ingest them, search with a crop (DEMO_SOURCE=s3: from a MinIO bucket)
	$(if $(filter s3,$(DEMO_SOURCE)),$(MAKE) --no-print-directory minio)
	$(PY) -m devstack.demo --source $(or $(DEMO_SOURCE),files)

.PHONY: test
test: setup minio $(HELM_BIN) ## Run every test against real servers the tests start themselves
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: unit
unit: setup ## Run the fast tests alone (no servers: neither integration nor slow)
	$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

SEEDS ?= 1000
.PHONY: simulate
simulate: setup ## Run SEEDS seeds of the engine's deterministic simulation (parallel; no servers)
	$(PY) -m tests.simulation --seeds $(SEEDS)

.PHONY: typecheck
typecheck: setup ## mypy --strict on consumer/ and schemas/ alone (part of `make lint`)
	$(VENV)/bin/mypy

.PHONY: lint
lint: setup $(HELM_BIN) ## ruff, mypy --strict, hadolint and helm lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint docker/consumer.Dockerfile docker/serving.Dockerfile
	$(MAKE) --no-print-directory helm-lint

.PHONY: bench
bench: setup $(QUIX_VENV)/.complete ## Benchmarks: per-stage ceilings, naive baseline, end to end (writes bench/results/)
	$(PY) -m bench

# The peers of the s3:// comparison are installed beside the environment, never into it: they are
# not dependencies of the service (pinned here, the versions the figures in docs were taken with).
S3_PEERS := .cache/s3-peers/obstore-0.12.1-s3fs-2026.9.0
$(S3_PEERS)/.complete: | $(UV)
	$(UV) pip install --quiet --python $(PY) --target $(S3_PEERS) obstore==0.12.1 s3fs==2026.9.0
	@touch $@

.PHONY: bench-s3-libraries
bench-s3-libraries: setup minio $(S3_PEERS)/.complete ## Compare s3:// libraries (botocore, obstore, s3fs) on MinIO
	$(PY) -m bench.s3_libraries --peers $(S3_PEERS) --json bench/results/s3-libraries.json

.PHONY: clean
clean: down ## Remove environments, caches and server data
	rm -rf $(VENV) $(SERVING_VENV) $(QUIX_VENV) .tools .cache .stack
