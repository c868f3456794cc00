# medmax-cli: install, demo, test, lint, bench, eval.
# `make demo` and `make test` work on a fresh machine (they install first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo rehearsal test test-browser test-gpu lint format bench bench-quick bench-gpu gpu-wheels eval clean

install: $(STAMP)

# The CPU torch wheel goes in first where there is no GPU: a plain `torch` requirement
# would pull a multi-GB CUDA build. With a GPU, pip keeps whatever torch is installed.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install --quiet "torch>=2.4"; \
	else \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" || \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: install
	bash examples/demo/run.sh

# The demo chain at real size: a random model of Anole-7B's exact shape with 2 layers, 512 px images
# (1,024 codes), 4,096-token rows, CFG image generation; per-stage wall time and peak RSS are printed
# and written to rehearsal-out/stages.json (budget: 20 min and 16 GB on 2 cores).
rehearsal: install
	OMP_NUM_THREADS=2 $(BIN)/python examples/rehearsal/run.py --out rehearsal-out

test: install
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -x -rs --durations=15 tests

# The report in a real browser: headless Chromium (Debian package `chromium`), installed when missing.
# `make test` runs the same test but skips it, saying so, where no Chromium exists.
test-browser: install
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }
	MEDMAX_REQUIRE_BROWSER=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -x tests/test_report.py

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu tests

lint: install
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

format: install
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

# CPU benchmarks (each prints the naive baseline, ours and the ratio). train_gpu.py needs a GPU:
# it runs with --quick here; `make bench-gpu` runs the full GPU set (bench/gpu.sh).
CPU_BENCH := streams fetch synthesize vision pack loss generate score memory
bench: install
	@for b in $(CPU_BENCH); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done
	$(BIN)/python bench/train_gpu.py --quick
	$(BIN)/python bench/report.py --write

bench-quick: install
	@for b in $(CPU_BENCH) train_gpu; do echo "== bench/$$b.py --quick"; $(BIN)/python bench/$$b.py --quick || exit 1; done

bench-gpu: install
	PYTHON=$(BIN)/python bash bench/gpu.sh

# cp312 wheels bench/gpu.sh installs on the lent (offline) GPU machine; carry gpu-wheels/ there.
gpu-wheels: install
	PYTHON=$(BIN)/python bash bench/gpu-wheels.sh

MODEL ?=
ADAPTER ?=
EVAL ?=
eval: install
	MODEL="$(MODEL)" ADAPTER="$(ADAPTER)" EVAL="$(EVAL)" bash examples/eval.sh

clean:
	rm -rf demo-out eval-out rehearsal-out .pytest_cache
