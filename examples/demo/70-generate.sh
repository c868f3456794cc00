set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# Generation with the fine-tuned tiny model (the base model when finetune left no adapter):
# answers for the VQA eval instances (MedMax's evaluation decoding: greedy, repetition penalty 1.2,
# a few tokens), then one caption and one image (three-row CFG, stored as PNG) from the training set.
# A 30-step tiny model likes to answer with EOS at once: --min-new-tokens keeps the demo's answers
# non-empty (the MedMax evaluation setting is --min-new-tokens 0).
GEN_ADAPTER=()
if [ -f "$DEMO/run/adapter/adapter_config.json" ]; then
  GEN_ADAPTER=(--adapter "$DEMO/run")
else
  echo "70-generate: no adapter in $DEMO/run/adapter: generating with the base model" >&2
fi
# Prompt images without VQ tokens are encoded on the way in (tokenize-images is chained inside).
medmax generate "$DEMO/eval-instances.jsonl" "${GEN_ADAPTER[@]}" --mode text --max-new-tokens 8 --min-new-tokens 1 \
  -o "$DEMO/predictions.jsonl"
GEN_SOURCE="$DEMO/instances.tok.jsonl"
[ -f "$GEN_SOURCE" ] || GEN_SOURCE="$DEMO/instances.jsonl"
medmax generate "$GEN_SOURCE" "${GEN_ADAPTER[@]}" --task captioning --task image_generation --limit 1 \
  --max-new-tokens 24 --min-new-tokens 8 --seed 0 -o "$DEMO/generated.jsonl"
python - "$DEMO/generated.jsonl" "$MEDMAX_MEDIA" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    rec = json.loads(line)
    for part in rec["prediction"]:
        if "text" in part:
            print(f"{rec['task']} {rec['id']}: text {part['text']!r}")
        else:
            print(f"{rec['task']} {rec['id']}: image {sys.argv[2]}/{rec['images'][part['image']]['path']}")
PY
