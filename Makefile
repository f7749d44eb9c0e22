# The two commands the README leads with: `make demo` and `make test`.
# Both build the same virtual environment first (torch from this machine's on-disk CPU wheel,
# installed before anything else so that nothing pulls a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: venv demo test lint bench clean tools

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bitspike demo

test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/pytest -W error::DeprecationWarning -W error::pytest.PytestUnraisableExceptionWarning -ra

# Debian packages the RTL tests need: Icarus Verilog (the second cocotb simulator) and the LZ4
# headers (Verilator's FST waveform writer compiles against lz4.h), and the USB libraries
# openFPGALoader needs to program a board (bitspike build --program). Installed here when missing
# (CI runs as root on a clean machine; elsewhere through sudo).
APT_NEEDS := iverilog:/usr/bin/iverilog liblz4-dev:/usr/include/lz4.h \
             libusb-1.0-0:/usr/lib/x86_64-linux-gnu/libusb-1.0.so.0 \
             libftdi1-2:/usr/lib/x86_64-linux-gnu/libftdi1.so.2

tools:
	@missing=; for need in $(APT_NEEDS); do \
	  [ -e "$${need#*:}" ] || missing="$$missing $${need%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt-get) ..."; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; } || { \
	    echo "error: could not install$$missing; install it with your package manager"; \
	    exit 1; }; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/bench_golden.py
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_sim.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis out
