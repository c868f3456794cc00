#!/usr/bin/env bash
# Download the wheels bench/gpu.sh installs on the lent GPU machine (no network there): the
# package's dependencies its image lacks (see /work/.library/device/KINDS.md's package list:
# torch, transformers, peft, accelerate, typer, lxml, httpx, pyarrow, pillow, tokenizers, ... are
# there; orjson and webdataset, with webdataset's braceexpand, are not), for CPython 3.12 x86-64.
# Versions pinned to what the development venv runs. gpu-wheels/ is git-ignored; carry it.
# Also the [clip] extra, so `-m gpu` runs the open_clip similarity test there (it cannot run on the
# CPU machines: PyPI has no CPU torchvision pairing with our CPU torch): open_clip_torch and ftfy
# (with wcwidth, pure-Python 0.2.13); torchvision 0.26 (torch 2.11's), regex, tqdm,
# huggingface-hub and safetensors are in the device image and must not be shadowed. timm too, but
# in a version nobody has read there, and open_clip_torch 3.3.0 requires timm>=1.0.17 (its
# METADATA's Requires-Dist; BiomedCLIP's image tower is a timm ViT): timm 1.0.31 is carried, a
# pure-Python wheel whose requirements (torch, torchvision, pyyaml, huggingface_hub, safetensors,
# none versioned) the image has, so --no-deps pulls neither torch nor torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEST="${1:-gpu-wheels}"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" orjson==3.13.0 webdataset==1.0.2 braceexpand==0.1.7 \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 timm==1.0.31
ls "$DEST"
