# Source records: the figures of the bundled JATS articles (captions, in-text mentions, images into
# $MEDMAX_MEDIA) plus the bundled VQA items; the evaluation items go to their own file.
{
  medmax fetch jats examples/sample/jats
  medmax fetch jsonl examples/sample/vqa.jsonl --root examples/sample
} > "$DEMO/sources.jsonl"
medmax fetch jsonl examples/sample/eval.jsonl --root examples/sample -o "$DEMO/eval-sources.jsonl"
medmax validate "$DEMO/sources.jsonl"
