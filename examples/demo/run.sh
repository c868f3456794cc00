#!/usr/bin/env bash
# The offline demo: the whole chain on the bundled sample with a tiny random model.
# Each step is one file in this folder (NN-name.sh), run in order in this shell.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/.venv/bin:$PATH"
export DEMO="${DEMO:-demo-out}"
export MEDMAX_MEDIA="$DEMO/media"
export MEDMAX_MODEL="$DEMO/model"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export MEDMAX_STATS_DIR="$DEMO/stats"  # every stage leaves a --stats file there (read by 90-report.sh)
rm -rf "$DEMO"
mkdir -p "$DEMO"
for step in examples/demo/[0-9][0-9]-*.sh; do
  echo "==> ${step##*/}" >&2
  source "$step"
done
echo "demo finished: outputs in $DEMO/" >&2
