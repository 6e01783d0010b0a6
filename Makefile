# Two commands for a new user:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-deep clean

setup: $(STAMP)

# constraints.txt pins every package to what was tested (torch 2.13.0 CPU comes from the local wheel
# directory that pip is configured with; uv/poetry don't see it, so this uses pip).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/kairos demo

test: setup
	$(BIN)/python -m pytest -q

# ruff (lint + format check) and import-linter (the dependency rules of docs/architecture.md).
# All three run even when one fails, so one pass shows every problem; the target fails if any did.
lint: setup
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/lint-imports || status=1; \
	exit $$status

bench: setup
	$(BIN)/python benchmarks/run_all.py

# The deep models (issue 17), about 75 minutes on 2 quiet cores: training throughput vs a plain PyTorch
# loop, 30-day walk-forward per default and previous preset, inference per bundle variant, one table.
bench-deep: setup
	$(BIN)/python benchmarks/bench_train_throughput.py
	$(BIN)/python benchmarks/report_deep_presets.py --runs $(DEEP_RUNS)
	$(BIN)/python benchmarks/bench_deep_inference.py
	$(BIN)/python benchmarks/report_deep_models.py

DEEP_RUNS := lstm_attention:small,lstm_attention:small_prev,transformer:small,transformer:small_prev,mamba:small,mamba:small_prev,tft:small,tft:small_prev

clean:
	rm -rf $(VENV) .kairos .pytest_cache
