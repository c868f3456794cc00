set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# A tiny random Chameleon with the real 65,536-token layout (seconds on a laptop).
medmax init-model --tiny -o "$MEDMAX_MODEL" --seed 0
