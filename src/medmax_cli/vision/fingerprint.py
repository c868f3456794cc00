"""`vq_fingerprint`: which codebook made a list of image tokens (the `images[i].vq` field).

Two models share a fingerprint exactly when they turn the same pixels into the same codes: the
hash covers the preprocessing version, the VQ config and every encoder-side tensor (encoder,
quant_conv, codebook) with its name, dtype and shape. The decoder does not enter: a different
decoder reads the same codes.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.weights import is_encoder_key, read_vq_tensors, safetensors_files, vq_checkpoint

# Bump when preprocessing changes what codes an image gets.
PREPROCESS_VERSION = "chameleon-v1"
FINGERPRINT_CHARS = 16


def vq_fingerprint(model_dir: str | Path) -> str:
    """Short sha256 hex (16 chars) over the VQ config and encoder weights of `model_dir`."""
    root = Path(model_dir).resolve()
    files = [*safetensors_files(root), *([vq_checkpoint(root)] if vq_checkpoint(root) else [])]
    stamp = tuple((str(p), os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in files)
    config = root / "config.json"
    stamp += ((str(config), os.stat(config).st_mtime_ns, os.stat(config).st_size),)
    return _fingerprint(str(root), stamp)


@lru_cache(maxsize=8)
def _fingerprint(root: str, _stamp: tuple) -> str:
    import torch

    digest = hashlib.sha256()
    header = {"preprocess": PREPROCESS_VERSION, "vq": VQSpec.from_model_dir(root).as_dict()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    tensors = read_vq_tensors(root, is_encoder_key)
    if not tensors:
        raise ValueError(
            f"{root}: no VQ encoder weights (model.vqmodel.encoder.* in the safetensors, or vqgan.ckpt)"
        )
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:FINGERPRINT_CHARS]
