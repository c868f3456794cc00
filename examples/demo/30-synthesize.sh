set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# Task instances were built in step 20 (fetch | synthesize). No LLM endpoint here, so visual_chat
# is skipped and counted (add --llm-url URL --llm-model NAME to make it); every other task is built,
# deduplicated and written with its drops counted by reason. Same input + seed = byte-identical
# output: rebuild from the saved sources and compare.
medmax synthesize "$DEMO/sources.jsonl" --seed 0 -q -o "$DEMO/instances.again.jsonl"
cmp "$DEMO/instances.jsonl" "$DEMO/instances.again.jsonl" && echo "synthesize: rerun is byte-identical" >&2
rm "$DEMO/instances.again.jsonl"
# Evaluation items: VQA only, canonical prompts, meta.eval_task kept; nothing is excluded by default.
medmax synthesize "$DEMO/eval-sources.jsonl" --tasks vqa -o "$DEMO/eval-instances.jsonl"
# Decontamination, on the side: the bundled eval items reuse the sample figures, so dropping every
# training instance that shares an image (exact or near) or a question with them (--exclude-by both;
# the default is image) leaves only a few; the contamination table goes to stderr.
medmax synthesize "$DEMO/sources.jsonl" --exclude "$DEMO/eval-sources.jsonl" --exclude-by both \
  --rejects "$DEMO/decontamination-rejects.jsonl" -o "$DEMO/instances.decontaminated.jsonl"
