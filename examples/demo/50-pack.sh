set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# Token sequences + loss masks, packed best-fit into 512-token rows (the tiny model's images are 66-token
# blocks), written as WebDataset shards with manifest.json (docs/pack.md). Same input + seed = same bytes.
medmax pack "$DEMO/instances.tok.jsonl" --seq-len 512 --max-count 64 --seed 0 -o "$DEMO/shards"
# The same chain as one pipe (tokenize-images finds every image in its cache; without that step,
# pack would encode the images itself).
medmax synthesize "$DEMO/sources.jsonl" --seed 0 -q | medmax tokenize-images --device cpu -q \
  | medmax pack --seq-len 512 --max-count 64 --seed 0 -q -o "$DEMO/shards-pipe"
if cmp -s "$DEMO/shards/shard-000000.tar" "$DEMO/shards-pipe/shard-000000.tar"; then
  echo "pack: the piped chain wrote byte-identical shards" >&2
else
  echo "pack: the piped chain wrote different shards (compare the two manifest.json)" >&2
fi
python - "$DEMO/shards" <<'PY'
import sys
from medmax_cli.pack.reader import PackedShards
shards = PackedShards(sys.argv[1], verify=True)
m = shards.manifest
row = next(shards.iter_rows(rank=0, world_size=2, seed=0))
print(f"shards: {m['samples']} samples in {m['rows']} rows ({100 * m['efficiency']:.1f}% full); on 2 GPUs "
      f"{shards.rows_per_rank(2)} rows per rank; a row holds {len(row.meta['ids'])} samples, boundaries "
      f"{row.boundaries.tolist()}", file=sys.stderr)
PY
