#!/usr/bin/env bash
# The GPU checks in one prepared script (for a lent H100/H200): GPU tests, then the three GPU
# benchmarks at full size. Results go to $OUT (default bench-out/). Each step is bounded so the
# whole script fits in ~10 minutes; a failing step is recorded and the next one still runs.
#
# On a lent device with no network and its own torch/transformers/peft/accelerate, prepare the
# other wheels here first and carry the folder with the working tree:
#   pip download -d gpu-wheels --only-binary=:all: --python-version 3.11 orjson typer webdataset
#   (plus any other dependency the device image lacks)
# and this script installs them and the package without touching the device's torch.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
if [ -d gpu-wheels ]; then
  "$PY" -m pip install --quiet --no-index --no-deps gpu-wheels/*.whl > "$OUT/install.log" 2>&1
  "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
run() {  # run NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? ($name)" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log" >> "$OUT/summary.txt"
}
run gpu-tests 120 "$PY" -m pytest -q -m gpu tests
run vision 150 "$PY" bench/vision.py --full --compile --batch-size 64
run generate 200 "$PY" bench/generate.py --full --compile
run train 200 "$PY" bench/train_gpu.py
