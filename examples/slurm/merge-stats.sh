#!/usr/bin/env bash
# The merge step after a SLURM array: add up the pieces' --stats files (counts, reject reasons,
# worker seconds) and check that every shard i/n is there exactly once.
#
#   bash examples/slurm/merge-stats.sh STATS_DIR NAME      # reads STATS_DIR/NAME-*.json
#   sbatch --dependency=afterok:$ARRAY_JOB --wrap 'bash examples/slurm/merge-stats.sh tok/stats tokenize-images'
set -euo pipefail
DIR=${1:?usage: merge-stats.sh STATS_DIR NAME}
NAME=${2:?usage: merge-stats.sh STATS_DIR NAME}
medmax stats merge "$DIR/$NAME"-[0-9]*.json -o "$DIR/$NAME.json"
