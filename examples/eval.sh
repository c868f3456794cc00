#!/usr/bin/env bash
# `make eval MODEL=... ADAPTER=... EVAL=...`: the MedMax VQA evaluation, end to end.
#   fetch the eval set -> synthesize vqa instances -> tokenize images -> generate -> score
# Outputs in $OUT (default eval-out/): instances.jsonl, predictions.jsonl, scores.jsonl,
# summary.json and report/ (table.md, scores.png). With no arguments: the bundled sample
# eval set (examples/sample/eval.jsonl) and the tiny random demo model.
#
# Environment: MODEL (model dir; default: a tiny demo model built in $OUT/model), ADAPTER (a
# finetune run or adapter dir), EVAL (MedMax eval parquet file/dir, or a JSONL of qa records;
# default: the bundled sample; EVAL_IMAGES when its images are not beside it), OUT, RULES (medmax|robust), SEED, JUDGE_URL + JUDGE_MODEL (open
# questions), CLIP_MODEL, MEDMAX_MEDIA (default $OUT/media).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT="${OUT:-eval-out}"
RULES="${RULES:-medmax}"
SEED="${SEED:-0}"
export MEDMAX_MEDIA="${MEDMAX_MEDIA:-$OUT/media}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$OUT"

# 1. the model: the one given, else the tiny random demo model (built once)
if [[ -z "${MODEL:-}" ]]; then
  MODEL="$OUT/model"
  [[ -f "$MODEL/config.json" ]] || medmax init-model --tiny -o "$MODEL" --seed 0
fi
gen_args=(--model "$MODEL")
[[ -n "${ADAPTER:-}" ]] && gen_args+=(--adapter "$ADAPTER")

# 2. the eval set as source records (qa, with meta.eval_task)
if [[ -z "${EVAL:-}" ]]; then
  medmax fetch jsonl examples/sample/eval.jsonl --root examples/sample -o "$OUT/eval-sources.jsonl"
elif [[ "$EVAL" == *.jsonl ]]; then
  medmax fetch jsonl "$EVAL" --root "$(dirname "$EVAL")" -o "$OUT/eval-sources.jsonl"
else
  medmax fetch medmax-eval "$EVAL" ${EVAL_IMAGES:+--images "$EVAL_IMAGES"} -o "$OUT/eval-sources.jsonl"
fi

# 3. instances exactly as MedMax asks them (template 0, nothing deduplicated away), image tokens
medmax synthesize "$OUT/eval-sources.jsonl" --tasks vqa --no-dedup --near-dup-bits -1 --seed "$SEED" \
  | medmax tokenize-images --model "$MODEL" -o "$OUT/instances.jsonl"

# 4. generate with MedMax's budgets: 1 token for closed and multiple choice, 60 for open
#    (records are compact JSON written by medmax, so a fixed-string grep splits them)
{ grep -v -F '"question_type":"open"' "$OUT/instances.jsonl" || true; } \
  | medmax generate "${gen_args[@]}" --max-new-tokens 1 --seed "$SEED" -o "$OUT/predictions.short.jsonl"
{ grep -F '"question_type":"open"' "$OUT/instances.jsonl" || true; } \
  | medmax generate "${gen_args[@]}" --max-new-tokens 60 --seed "$SEED" -o "$OUT/predictions.open.jsonl"
cat "$OUT/predictions.short.jsonl" "$OUT/predictions.open.jsonl" > "$OUT/predictions.jsonl"

# 5. score: every instance counts (a failed generation scores 0); the table goes to stderr
score_args=(--rules "$RULES" --seed "$SEED" --expect "$OUT/instances.jsonl"
            --summary "$OUT/summary.json" --report "$OUT/report")
[[ -n "${JUDGE_MODEL:-}" ]] && score_args+=(--judge-model "$JUDGE_MODEL" --judge-cache "${JUDGE_CACHE:-$OUT/judge-cache}")
[[ -n "${JUDGE_URL:-}" ]] && score_args+=(--judge-url "$JUDGE_URL")
[[ -n "${CLIP_MODEL:-}" ]] && score_args+=(--clip-model "$CLIP_MODEL")
medmax score "$OUT/predictions.jsonl" "${score_args[@]}" -o "$OUT/scores.jsonl"
echo "eval finished: $OUT/scores.jsonl, $OUT/summary.json, $OUT/report/" >&2
