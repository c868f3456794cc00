#!/usr/bin/env bash
# `make eval MODEL=... ADAPTER=... EVAL=...`: the MedMax evaluation, end to end.
#   fetch the eval set -> synthesize instances -> tokenize images -> generate -> score
# Every family of MedMax's eval parquet (docs/eval-families.md): VQA, image captioning, image
# generation, visual chat and mm_out, each generated with MedMax's budget and scored as MedMax does.
# Outputs in $OUT (default eval-out/): instances.jsonl, predictions.jsonl, scores.jsonl,
# summary.json and report/ (table.md, scores.png). With no arguments: the bundled sample
# eval sets (examples/sample/eval.jsonl, VQA; eval-families.jsonl, the other families) and the
# tiny random demo model.
#
# Environment: MODEL (model dir; default: a tiny demo model built in $OUT/model), ADAPTER (a
# finetune run or adapter dir), EVAL (MedMax eval parquet file/dir, or a JSONL of source records;
# default: the bundled sample; EVAL_IMAGES when its images are not beside it), OUT, RULES (medmax|robust), SEED, JUDGE_URL + JUDGE_MODEL (open
# questions), CLIP_MODEL, MEDMAX_MEDIA (default $OUT/media), LONG_TOKENS (the captioning / visual
# chat budget, default MedMax's 4096) and MM_OUT_TOKENS (mm_out's budget per text run, default
# MedMax's 1024; images never count against it).
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
  medmax fetch jsonl examples/sample/eval.jsonl --root examples/sample -o "$OUT/eval-sources.vqa.jsonl"
  medmax fetch jsonl examples/sample/eval-families.jsonl --root examples/sample -o "$OUT/eval-sources.families.jsonl"
  cat "$OUT/eval-sources.vqa.jsonl" "$OUT/eval-sources.families.jsonl" > "$OUT/eval-sources.jsonl"
elif [[ "$EVAL" == *.jsonl ]]; then
  medmax fetch jsonl "$EVAL" --root "$(dirname "$EVAL")" -o "$OUT/eval-sources.jsonl"
else
  medmax fetch medmax-eval "$EVAL" ${EVAL_IMAGES:+--images "$EVAL_IMAGES"} -o "$OUT/eval-sources.jsonl"
fi

# 3. instances exactly as MedMax asks them (template 0, nothing deduplicated away), image tokens;
#    the non-VQA families come from fetch as ready instances and pass through synthesize
medmax synthesize "$OUT/eval-sources.jsonl" --tasks vqa,captioning,image_generation,visual_chat,interleaved \
    --no-dedup --near-dup-bits -1 --seed "$SEED" \
  | medmax tokenize-images --model "$MODEL" -o "$OUT/instances.jsonl"

# 4. generate with MedMax's budgets (evaluation/*.py; docs/generate.md cites each line): closed and
#    multiple choice 1 token, open 60, captioning and visual chat 4096, image generation one image,
#    mm_out 1024 per text run (max_gen_len starts afresh after each image, and an image block
#    always has room: Anole's rule, so mm_out draws its images). Under --rules medmax
#    image generation is MedMax's first 100 prompts per source (meta.eval_index < 100); the items
#    left out are listed in $OUT/excluded.jsonl and are not expected by the scorer.
PARTS="$OUT/parts"
rm -rf "$PARTS" && mkdir -p "$PARTS"
python3 - "$OUT/instances.jsonl" "$PARTS" "$RULES" <<'PY'
import json, sys
from pathlib import Path

src, parts, rules = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
names = ("short", "open", "long", "image", "mm_out", "expected", "excluded")
out = {n: open(parts / f"{n}.jsonl", "w", encoding="utf-8") for n in names}
for line in src.read_text(encoding="utf-8").splitlines():
    if not line.strip():
        continue
    r = json.loads(line)
    task, meta = r.get("task"), r.get("meta") or {}
    if task == "image_generation" and rules == "medmax" and int(meta.get("eval_index", 0)) >= 100:
        out["excluded"].write(line + "\n")
        continue
    out["expected"].write(line + "\n")
    if task == "vqa":
        group = "open" if r.get("question_type") == "open" else "short"
    else:
        group = {"image_generation": "image", "interleaved": "mm_out"}.get(task, "long")
    out[group].write(line + "\n")
for f in out.values():
    f.close()
PY
gen() {  # gen PART [FLAGS...]: generate one part (an empty part gives an empty file)
  local part="$1"
  shift
  medmax generate "${gen_args[@]}" "$@" --seed "$SEED" \
    -o "$PARTS/pred.$part.jsonl" < "$PARTS/$part.jsonl"
}
gen short --max-new-tokens 1
gen open --max-new-tokens 60
gen long --max-new-tokens "${LONG_TOKENS:-4096}"
gen image
gen mm_out --text-run-tokens "${MM_OUT_TOKENS:-1024}"
cat "$PARTS"/pred.{short,open,long,image,mm_out}.jsonl > "$OUT/predictions.jsonl"
cp "$PARTS/expected.jsonl" "$OUT/expected.jsonl"
if [[ -s "$PARTS/excluded.jsonl" ]]; then
  cp "$PARTS/excluded.jsonl" "$OUT/excluded.jsonl"
  echo "eval: $(wc -l < "$OUT/excluded.jsonl") image-generation items past MedMax's first 100 per source left out" >&2
fi

# 5. score: every instance counts (a failed generation scores 0); the table goes to stderr
score_args=(--rules "$RULES" --seed "$SEED" --expect "$OUT/expected.jsonl"
            --summary "$OUT/summary.json" --report "$OUT/report")
[[ -n "${JUDGE_MODEL:-}" ]] && score_args+=(--judge-model "$JUDGE_MODEL" --judge-cache "${JUDGE_CACHE:-$OUT/judge-cache}")
[[ -n "${JUDGE_URL:-}" ]] && score_args+=(--judge-url "$JUDGE_URL")
[[ -n "${CLIP_MODEL:-}" ]] && score_args+=(--clip-model "$CLIP_MODEL")
medmax score "$OUT/predictions.jsonl" "${score_args[@]}" -o "$OUT/scores.jsonl"
echo "eval finished: $OUT/scores.jsonl, $OUT/summary.json, $OUT/report/" >&2
