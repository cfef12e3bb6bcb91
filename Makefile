# Entry points: make calibrate | run | submission | check-submission | test | bench-*
# The virtual environment is created on first use, so a fresh clone needs no manual step.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
# BACKEND=qnn-htp also installs the optional QNN extra (its own stamp: the default job never needs it).
QNN_STAMP := $(VENV)/.installed-qnn-$(shell sha256sum pyproject.toml | cut -c1-12)
SETUP := $(STAMP) $(if $(filter qnn-htp,$(BACKEND)),$(QNN_STAMP))

WORKLOAD ?= mobilenetv2
SCENARIO ?= Offline
MODE ?= both
PROFILE ?= smoke
# The shared sample images, when they sit beside the checkout (development and CI).
IMAGENET_SAMPLES_DIR ?= $(wildcard $(abspath ../shared/data/imagenet-samples))
export IMAGENET_SAMPLES_DIR
MLPERF_CALIBRATION_DIR ?= $(wildcard $(abspath ../shared/data/mlperf-calibration))
export MLPERF_CALIBRATION_DIR

OVERRIDES := $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(RANGE),--range $(RANGE)) \
             $(if $(TECHNIQUES),--techniques $(TECHNIQUES)) $(if $(BACKEND),--backend $(BACKEND)) \
             $(if $(EVAL_LIMIT),--eval-limit $(EVAL_LIMIT))

.PHONY: venv venv-qnn data calibrate run results submission check-submission test lint bench-calibration bench-calibration-pipelines bench-techniques bench-harness bench-noise-budget bench-htp-fidelity

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv-qnn: $(QNN_STAMP)
$(QNN_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,qnn]'
	touch $@

data: $(STAMP)
	$(PY) -m harness.cli data

calibrate: $(SETUP)
	$(PY) -m harness.cli calibrate --workload $(WORKLOAD) $(OVERRIDES)

run: $(SETUP)
	$(PY) -m harness.cli run --workload $(WORKLOAD) --scenario $(SCENARIO) --mode $(MODE) --profile $(PROFILE) $(OVERRIDES)

results: $(STAMP)
	$(PY) -m harness.cli results

submission: $(STAMP)
	$(PY) -m harness.cli submission --workload $(WORKLOAD) --profile $(PROFILE) $(if $(SCENARIOS),--scenarios $(SCENARIOS))

check-submission: $(STAMP)
	$(PY) -m harness.cli check-submission

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench-calibration: $(STAMP)
	$(PY) -m benchmarks.calibration_speed

bench-calibration-pipelines: $(STAMP)
	$(PY) -m benchmarks.calibration_pipelines --repeats 3

bench-techniques: $(STAMP)
	$(PY) -m benchmarks.techniques

bench-harness: $(STAMP)
	$(PY) -m benchmarks.harness_overhead

bench-htp-fidelity: $(QNN_STAMP)
	$(PY) -m benchmarks.htp_fidelity $(if $(EVAL_LIMIT),--images $(EVAL_LIMIT))

bench-noise-budget: $(STAMP)
	$(PY) -m benchmarks.noise_budget --workload $(WORKLOAD) --weights $(or $(WEIGHTS),per-channel)
