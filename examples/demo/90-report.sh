set -euo pipefail  # a failed stage anywhere in a pipe fails the step (sourced by run.sh, which sets it too)
# The whole run on one page: stage stats, curation charts, a gallery of instances with each image
# beside its VQ reconstruction, the training curves and the evaluation (docs/observe.md).
medmax report "$DEMO" -o "$DEMO/report" --device cpu
# A real browser loads it: no console errors, every image loaded, a screenshot (skipped without Chromium).
python -m medmax_cli.report.browser "$DEMO/report/index.html" --screenshot "$DEMO/report.png" --if-available
