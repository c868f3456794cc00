set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# Source records: the figures of the bundled JATS articles (captions, in-text mentions, images into
# $MEDMAX_MEDIA) plus the bundled VQA items, fetched and piped straight into synthesize (the next
# step reads the copy that `tee` keeps). The evaluation items go to their own file.
{
  medmax fetch jats examples/sample/jats
  medmax fetch jsonl examples/sample/vqa.jsonl --root examples/sample
} | tee "$DEMO/sources.jsonl" \
  | medmax synthesize --seed 0 --rejects "$DEMO/synthesize-rejects.jsonl" -o "$DEMO/instances.jsonl"
medmax fetch jsonl examples/sample/eval.jsonl --root examples/sample -o "$DEMO/eval-sources.jsonl"
medmax validate "$DEMO/sources.jsonl"
