"""Reading VQ-GAN tensors from a model directory without building the 7B language model.

A Hugging Face Chameleon/Anole directory keeps the VQ model under `model.vqmodel.` inside its
safetensors (one file or shards listed in `model.safetensors.index.json`). `safe_open` reads
only the tensors asked for, so loading the encoder costs megabytes, not the 14 GB checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Prefixes under which checkpoints keep the VQ model (HF conversions, older conversions).
VQ_PREFIXES = ("model.vqmodel.", "vqmodel.")


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The model's safetensors files (shards from the index when there is one), sorted."""
    root = Path(model_dir)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return sorted({root / name for name in weight_map.values()})
    return sorted(p for p in root.glob("*.safetensors") if p.name != "vq_decoder.safetensors")


def strip_vq_prefix(key: str) -> str | None:
    """'model.vqmodel.encoder.conv_in.weight' -> 'encoder.conv_in.weight'; None when not a VQ key."""
    for prefix in VQ_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return None


def read_vq_tensors(model_dir: str | Path, want: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """Tensors of the model's VQ part whose stripped key satisfies `want`, keyed without the prefix."""
    from safetensors import safe_open

    files = safetensors_files(model_dir)
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    out: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                short = strip_vq_prefix(key)
                if short is not None and want(short):
                    out[short] = handle.get_tensor(key)
    return out


def is_encoder_key(key: str) -> bool:
    """The tensors that decide which code an image gets: encoder, quant_conv and the codebook."""
    return key.startswith(("encoder.", "quant_conv.", "quantize."))
