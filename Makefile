# `make demo` and `make test` each set up .venv on first use (torch pinned to the build on this
# machine's disk: a plain `pip install torch` would download several GB).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip repeats a warning for every package when its configured local indexes lack one: noise.
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }

.PHONY: setup demo test test-fast benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(QUIET)
	$(PY) -m pip install -q $(TORCH_PINS) $(QUIET)
	$(PY) -m pip install -q -e ".[dev]" $(TORCH_PINS) $(QUIET)
	$(PY) -c "import hftool, torch, transformers, datasets, accelerate, evaluate, timm"
	touch $@

setup: $(VENV)/.installed

demo: setup  ## fine-tune the embedded default (tiny BERT, sentiment sample), offline, ~1 min
	HF_HUB_OFFLINE=1 $(VENV)/bin/hftool finetune bert-cls

test: setup  ## the whole suite, learnability runs included (what CI runs)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-fast: setup  ## skip the slow learnability runs
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
