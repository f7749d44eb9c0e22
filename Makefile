# The two commands the README leads with: `make demo` and `make test`.
# Both build the same virtual environment first (torch from this machine's on-disk CPU wheel,
# installed before anything else so that nothing pulls a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bitspike demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -W error::DeprecationWarning -W error::pytest.PytestUnraisableExceptionWarning -ra

bench: $(STAMP)
	$(BIN)/python bench/bench_golden.py
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_sim.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis out
