#!/usr/bin/env bash
# The GPU checks in one prepared script, for a lent H100/H200 whose one command may run 600 s:
# the training bench first (the one with a target), then the GPU tests, the vision and generate
# benches at full size. Every step is bounded by `timeout`; the limits add up to STEP_TOTAL (< 540 s,
# leaving room for the start and the transfers), and a step that fails or times out is recorded and
# the next one still runs. Output is unbuffered and goes to $OUT as it is made (default bench-out/):
#   env.log      python, torch, CUDA, nvidia-smi, the wheel install, an import check
#   summary.txt  one line a step with its exit status (124: timed out), then its last lines
#   <step>.log   each step's whole output
#   *.json       the benches' results files (bench/_harness.py; $BENCH_RESULTS points here)
# Few files on purpose: the device tool returns at most 8 files from $OUT.
#
# The device has no network and its own torch/transformers/peft/accelerate (Python 3.12). Before
# the run, download the wheels it lacks here (`make gpu-wheels`, bench/gpu-wheels.sh) and carry
# gpu-wheels/; they are installed into a private folder (--target), never over the device's packages.
#
# GPU_DRY_RUN=1 runs the same plumbing on a CPU with a stub per step (make test runs it:
# tests/test_gpu_script.py); GPU_DRY_FAIL=<step> makes that step's stub fail.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT="${OUT:-bench-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export BENCH_RESULTS="$OUT"
PY="${PYTHON:-python3}"
DRY="${GPU_DRY_RUN:-0}"
SITE="${GPU_SITE:-/tmp/medmax-gpu-site}"

# step name, seconds, command (full run); the dry run swaps the command for a stub
STEPS=(
  "train 160 $PY bench/train_gpu.py"
  "gpu-tests 110 $PY -m pytest -q -m gpu tests -p no:cacheprovider"
  "vision 80 $PY bench/vision.py --full --compile --batch-size 64"
  "generate 100 $PY bench/generate.py --full --compile"
)
KILL_AFTER=2
ENV_LIMIT=70  # pip 30 + nvidia-smi 10 + import check 30
STEP_TOTAL=$ENV_LIMIT
for s in "${STEPS[@]}"; do set -- $s; STEP_TOTAL=$((STEP_TOTAL + $2 + KILL_AFTER)); done

{
  echo "== env $(date -u +%FT%TZ) dry_run=$DRY step limits total ${STEP_TOTAL}s"
  if [ "$DRY" != 1 ] && [ -d gpu-wheels ] && compgen -G "gpu-wheels/*.whl" > /dev/null; then
    timeout 30 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" gpu-wheels/*.whl 2>&1 && echo "wheels installed in $SITE: $(ls gpu-wheels | tr '\n' ' ')"
    export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
  echo "PYTHONPATH=$PYTHONPATH"
  timeout 10 nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  GPU_DRY_RUN="$DRY" timeout 30 "$PY" - <<'EOF' 2>&1
import os, platform, sys
print("python", platform.python_version(), sys.executable)
import orjson, medmax_cli
if os.environ.get("GPU_DRY_RUN") != "1":  # the heavy imports (~30 s on a busy CPU) only for real
    import torch, webdataset, transformers, peft, accelerate
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
    print("transformers", transformers.__version__, "peft", peft.__version__, "webdataset", webdataset.__version__)
    try:  # the carried [clip] wheels: the gpu-tests step runs the open_clip test with them
        import open_clip; print("open_clip", open_clip.__version__)
    except Exception as exc: print("open_clip unavailable (its gpu test will skip):", exc)
print("imports ok: orjson", orjson.__version__, "medmax_cli", medmax_cli.__file__)
EOF
  echo "env check rc=$?"
} > "$OUT/env.log" 2>&1

: > "$OUT/summary.txt"
for s in "${STEPS[@]}"; do
  set -- $s
  name=$1 limit=$2
  shift 2
  if [ "$DRY" = 1 ]; then
    set -- "$PY" bench/_harness.py --stub "$name" --fail "${GPU_DRY_FAIL:-}"
  fi
  echo "== $name (limit ${limit}s) $(date -u +%T): $*" | tee -a "$OUT/summary.txt"
  start=$SECONDS
  timeout --kill-after=$KILL_AFTER "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "rc=$rc ($name, $((SECONDS - start)) s)$([ $rc = 124 ] && echo ' TIMED OUT')" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log" >> "$OUT/summary.txt"
done
echo "done $(date -u +%T); results in $OUT" | tee -a "$OUT/summary.txt"
