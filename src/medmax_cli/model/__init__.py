"""Model directories: loading, fingerprints, resolution of `--model`, the tiny random model.

Submodules import torch/transformers lazily where they can; import what you need from
`medmax_cli.model.load`, `.resolve` and `.tiny`.
"""
