# The two commands the README leads with: `make demo` and `make test`.
# Both build the same virtual environment first (torch from this machine's on-disk CPU wheel,
# installed before anything else so that nothing pulls a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: venv demo test lint bench clean iverilog

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bitspike demo

test: $(STAMP) iverilog
	$(BIN)/ruff check .
	$(BIN)/pytest -W error::DeprecationWarning -W error::pytest.PytestUnraisableExceptionWarning -ra

# Icarus Verilog, the second RTL simulator of the cocotb tests, is a Debian package: installed
# here when missing (CI runs as root on a clean machine; elsewhere through sudo).
iverilog:
	@command -v iverilog >/dev/null 2>&1 || { \
	  echo "installing Icarus Verilog (apt-get install iverilog) ..."; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq iverilog >/dev/null; } || { \
	  echo "error: could not install iverilog; install it with your package manager"; exit 1; }

bench: $(STAMP)
	$(BIN)/python bench/bench_golden.py
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_sim.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis out
