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
# GPU_PLAN=rehearsal [MODEL=DIR] runs the real-size chain instead (see below; a separate device
# command: both plans together would not fit one 600 s command).
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

PLAN="${GPU_PLAN:-bench}"
# GPU_PLAN=rehearsal: the whole chain (examples/rehearsal/run.py) on the GPU with Anole-7B's exact
# shape, all 32 layers: $MODEL when real weights are given, else a random model of that shape built
# here first (medmax init-model --shape anole-7b, 14 GB), so a first run needs nothing but the GPU
# machine. The dry run runs the same two steps for real on the CPU with the tiny model.
# Model and chain outputs stay out of $OUT (14 GB; the device returns only a few files from $OUT):
# the chain's stages.json is copied there at the end.
WORK="${GPU_WORK:-/tmp/medmax-gpu-work}"
REH_OUT="$WORK/rehearsal"
MODEL_DIR="${MODEL:-$WORK/anole-7b-random}"
if [ "$DRY" = 1 ]; then
  MODEL_DIR="${MODEL:-$WORK/tiny-model}"
  BUILD_MODEL="$PY -m medmax_cli init-model --tiny --force -o $MODEL_DIR"
  REHEARSE="$PY examples/rehearsal/run.py --layers tiny --model $MODEL_DIR --device cpu --finetune-steps 1 --out $REH_OUT"
else
  BUILD_MODEL="$PY -m medmax_cli init-model --shape anole-7b --layers 32 --force -o $MODEL_DIR"
  REHEARSE="$PY examples/rehearsal/run.py --model $MODEL_DIR --device cuda --budget-s 330 --out $REH_OUT"
fi
[ -n "${MODEL:-}" ] && BUILD_MODEL="test -f $MODEL_DIR/config.json"  # real weights: nothing to build

# step name, seconds, command (full run); in the bench plan the dry run swaps the command for a stub
if [ "$PLAN" = rehearsal ]; then
  STEPS=(
    "model 120 $BUILD_MODEL"
    "rehearsal 340 $REHEARSE"
  )
else
  STEPS=(
    "train 160 $PY bench/train_gpu.py"
    "gpu-tests 110 $PY -m pytest -q -m gpu tests -p no:cacheprovider"
    "vision 80 $PY bench/vision.py --full --compile --batch-size 64"
    "generate 100 $PY bench/generate.py --full --compile"
  )
fi
KILL_AFTER=2
ENV_LIMIT=70  # pip 30 + nvidia-smi 10 + import check 30
STEP_TOTAL=$ENV_LIMIT
for s in "${STEPS[@]}"; do set -- $s; STEP_TOTAL=$((STEP_TOTAL + $2 + KILL_AFTER)); done

{
  echo "== env $(date -u +%FT%TZ) plan=$PLAN dry_run=$DRY step limits total ${STEP_TOTAL}s"
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
  if [ "$DRY" = 1 ] && [ "$PLAN" != rehearsal ]; then
    set -- "$PY" bench/_harness.py --stub "$name" --fail "${GPU_DRY_FAIL:-}"
  fi
  echo "== $name (limit ${limit}s) $(date -u +%T): $*" | tee -a "$OUT/summary.txt"
  start=$SECONDS
  timeout --kill-after=$KILL_AFTER "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "rc=$rc ($name, $((SECONDS - start)) s)$([ $rc = 124 ] && echo ' TIMED OUT')" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log" >> "$OUT/summary.txt"
done
if [ "$PLAN" = rehearsal ] && [ -f "$REH_OUT/stages.json" ]; then
  cp "$REH_OUT/stages.json" "$OUT/rehearsal-stages.json"
fi
echo "done $(date -u +%T); results in $OUT" | tee -a "$OUT/summary.txt"
