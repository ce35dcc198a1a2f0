# Quickstart: `make run` (a meta-training run) and `make test` (the test suite); both set up .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0  # the CPU build; installed before the project so nothing pulls a CUDA build

.PHONY: run test setup
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: setup
	$(BIN)/metarun algo=maml task=fewshot_cls

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest -q -n 2  # two workers, one thread each (tests/conftest.py)
