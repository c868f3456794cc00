# Fine-tune the tiny model on the packed demo shards: LoRA (the MedMax projections plus lm_head, so a
# random 64-wide model learns within seconds) at a demo learning rate, then check the loss halved.
medmax finetune "$DEMO/shards" -o "$DEMO/run" --lr 1e-2 --warmup-ratio 0.05 --max-steps "${DEMO_FINETUNE_STEPS:-30}" \
  --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head --save-every 10 --merge
python - "$DEMO/run" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
print(f"finetune: loss {first:.2f} -> {last:.2f} over {rows[-1]['step']} steps", file=sys.stderr)
if not last < first / 2:
    sys.exit(f"finetune: the loss did not fall below half its first value ({first:.2f} -> {last:.2f})")
PY
echo "finetune: loss curve in $DEMO/run/loss.png, adapter in $DEMO/run/adapter" >&2
