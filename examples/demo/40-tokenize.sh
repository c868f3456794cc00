set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# Every image of the task instances -> VQ codes (images[i].tokens, images[i].vq), batched, with a token
# cache under $MEDMAX_MEDIA/.cache: the second command finds every image there and encodes nothing.
medmax tokenize-images "$DEMO/instances.jsonl" --device cpu -o "$DEMO/instances.tok.jsonl"
# (MEDMAX_STREAM_MARKERS=0: plain JSONL on the pipe, as in the file; docs/records.md "End of stream")
MEDMAX_STREAM_MARKERS=0 medmax tokenize-images "$DEMO/instances.tok.jsonl" --device cpu -q \
  | cmp -s - "$DEMO/instances.tok.jsonl" \
  && echo "tokenize-images: a second run reproduces the output byte for byte (all from the cache)" >&2
# Codes -> pixels with the model's VQ-GAN decoder: the first instance with an image, decoded into the
# media store (the tiny model's decoder is random, so expect coloured noise, 32x32).
grep -m1 '"tokens"' "$DEMO/instances.tok.jsonl" | MEDMAX_STREAM_MARKERS=0 medmax detokenize --device cpu -q | python -c '
import json, os, sys
record = json.load(sys.stdin)
image = record["images"][0]["decoded"]
where = os.path.join(os.environ["MEDMAX_MEDIA"], image["path"])
print("decoded image of", record["id"] + ":", where, "(%dx%d)" % (image["width"], image["height"]), file=sys.stderr)'
