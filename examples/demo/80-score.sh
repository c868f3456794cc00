set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# Score the demo predictions with MedMax's rules: one line per item, the summary JSON, the table on
# stderr. Open questions stay unscored here (no judge offline): see docs/score.md for --judge-url.
medmax score "$DEMO/predictions.jsonl" --summary "$DEMO/summary.json" -o "$DEMO/scores.jsonl"
