# wakefield: set-up, the main job, tests and benchmarks.
#
#   make demo    set up this machine and run the main job, embedded
#   make test    set up and run every test (starts a local Kafka broker)
#   make bench   set up and print the benchmark figures
#   make lint    ruff and mypy
#
# Downloads are cached under $(WAKEFIELD_CACHE) (pip wheels, Kafka's jars,
# helm and the Kubernetes schemas), so a second set-up is quick.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
WAKEFIELD_CACHE ?= $(HOME)/.cache/wakefield
export WAKEFIELD_CACHE
export PIP_CACHE_DIR ?= $(WAKEFIELD_CACHE)/pip
export PIP_DISABLE_PIP_VERSION_CHECK = 1

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KAFKA_PORT ?= 9092
export WAKEFIELD_TEST_KAFKA ?= 127.0.0.1:$(KAFKA_PORT)
DEMO ?= workflows/linac-tuning.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench lint format schemas kafka-start kafka-stop clean

setup: $(STAMP)

# The venv is rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[linac,lume,kafka,test,dev]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/wakefield run $(DEMO)

test: setup
	@set -euo pipefail; \
	scripts/kafka-broker start --port $(KAFKA_PORT); \
	trap 'scripts/kafka-broker stop --port $(KAFKA_PORT)' EXIT; \
	WAKEFIELD_REQUIRE_KAFKA=1 $(PY) -m pytest -q -ra $(PYTEST_ARGS)

# The tests that need no broker and no cluster tools, for a quick loop.
test-fast: setup
	$(PY) -m pytest -q -m "not kafka and not slow" $(PYTEST_ARGS)

bench: setup
	@set -euo pipefail; \
	scripts/kafka-broker start --port $(KAFKA_PORT); \
	trap 'scripts/kafka-broker stop --port $(KAFKA_PORT)' EXIT; \
	$(PY) -m bench

lint: setup
	$(VENV)/bin/ruff check platform services tests bench
	$(VENV)/bin/ruff format --check platform services tests bench
	$(VENV)/bin/mypy platform/wakefield

format: setup
	$(VENV)/bin/ruff format platform services tests bench
	$(VENV)/bin/ruff check --fix platform services tests bench

schemas: setup
	$(VENV)/bin/wakefield schemas --out schemas

kafka-start:
	scripts/kafka-broker start --port $(KAFKA_PORT)

kafka-stop:
	scripts/kafka-broker stop --port $(KAFKA_PORT)

clean:
	rm -rf .wakefield .pytest_cache .mypy_cache .ruff_cache
