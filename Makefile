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

# The CPU torch wheel goes in first where there is no GPU, pinned to the `+cpu` local version:
# PyPI's torch (the CUDA build, several GB with CUDA, cuDNN, NCCL, Triton) cannot satisfy
# `torch==X+cpu`, so pip takes it from pip's configured sources (find-links, a local wheel folder)
# or else from the PyTorch CPU index. With a GPU, pip keeps or installs the CUDA build. The
# `-e .` below keeps whichever torch is there (it needs torch>=2.4).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install --quiet "torch>=2.4"; \
	else \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)+cpu" || \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)+cpu" --extra-index-url $(TORCH_CPU_INDEX); \
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

# The whole suite in TEST_JOBS pytest-xdist workers (default: the cores, at most 4; each worker holds
# torch and the tiny model), one torch thread each. --dist loadgroup with the scheduler of
# tests/conftest.py: the tests of a file that use a module-scoped fixture stay on one worker (built
# once), the rest spread one by one. --maxfail=1 is -x: the first failure stops the run (tests
# already started finish). `make test TEST_JOBS=1` runs them all in one worker.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --maxfail=1 -rs --durations=15 \
	  -n $(TEST_JOBS) --dist loadgroup tests

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
# it runs with --quick here; `make bench-gpu` runs the full GPU set (bench/gpu.sh). The last step
# rewrites docs/performance.md's generated sections and fails where a figure the docs quoted did not
# reproduce within the spread they state (bench/report.py --check).
CPU_BENCH := streams fetch synthesize vision pack loss generate score memory
bench: install
	@for b in $(CPU_BENCH); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done
	$(BIN)/python bench/train_gpu.py --quick
	$(BIN)/python bench/report.py --check --write

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
