set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# The bundled VQA items are source records: check them against the schema.
medmax validate examples/sample/vqa.jsonl
