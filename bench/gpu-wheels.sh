#!/usr/bin/env bash
# Download the wheels bench/gpu.sh installs on the lent GPU machine (no network there): the
# package's dependencies its image lacks (see /work/.library/device/KINDS.md's package list:
# torch, transformers, peft, accelerate, typer, lxml, httpx, pyarrow, pillow, tokenizers, ... are
# there; orjson and webdataset, with webdataset's braceexpand, are not), for CPython 3.12 x86-64.
# Versions pinned to what the development venv runs. gpu-wheels/ is git-ignored; carry it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEST="${1:-gpu-wheels}"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" orjson==3.13.0 webdataset==1.0.2 braceexpand==0.1.7
ls "$DEST"
