set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# Fine-tune the tiny model on the packed demo shards: LoRA on the seven projections (MedMax's recipe)
# plus embed_tokens and lm_head trained in full inside the adapter, so that a random 64-wide model
# learns within seconds; a demo learning rate, 4 packed rows per step. Then check the loss halved.
medmax finetune "$DEMO/shards" -o "$DEMO/run" --lora-modules-to-save embed_tokens,lm_head \
  --lr 1e-2 --lr-schedule constant --warmup-ratio 0 --micro-batch 4 --max-steps "${DEMO_FINETUNE_STEPS:-20}" \
  --save-every 10
python - "$DEMO/run" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
print(f"finetune: training loss {first:.2f} -> {last:.2f} (mean of the last 3 steps) over {rows[-1]['step']} steps",
      file=sys.stderr)
if not last < first / 2:
    sys.exit(f"finetune: the loss did not fall below half its first value ({first:.2f} -> {last:.2f})")
PY
echo "finetune: loss curve in $DEMO/run/loss.png, adapter in $DEMO/run/adapter" >&2
