"""Reading VQ-GAN tensors from a model directory without building the 7B language model.

A Hugging Face Chameleon/Anole directory keeps the VQ model under `model.vqmodel.` inside its
safetensors (one file or shards listed in `model.safetensors.index.json`). `safe_open` reads
only the tensors asked for, so loading the encoder costs megabytes, not the 14 GB checkpoint.

When the safetensors hold no VQ tensors, the original VQ-GAN checkpoint is read instead:
`vqgan.ckpt`, else `tokenizer/vqgan.ckpt` (where the Chameleon and Anole releases keep it; its
`state_dict` uses the same names without the prefix, as transformers' conversion shows). Encoder
and decoder must then agree on ONE codebook: `check_one_codebook` refuses a directory whose VQ
sources disagree, naming both (a fine-tuned VQ-GAN beside HF weights would otherwise encode with
one codebook and decode with another, silently).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Prefixes under which checkpoints keep the VQ model (HF conversions, older conversions).
VQ_PREFIXES = ("model.vqmodel.", "vqmodel.")
# The original VQ-GAN checkpoint and its config, in the order they are looked for.
CHECKPOINT_NAMES = ("vqgan.ckpt", "tokenizer/vqgan.ckpt")
CODEBOOK_KEY = "quantize.embedding.weight"


class VQSourceError(ValueError):
    """A model directory with two VQ sources that disagree (the message names both)."""


def vq_checkpoint(model_dir: str | Path) -> Path | None:
    """The directory's original VQ-GAN checkpoint (`vqgan.ckpt`, `tokenizer/vqgan.ckpt`), if any."""
    for name in CHECKPOINT_NAMES:
        path = Path(model_dir) / name
        if path.is_file():
            return path
    return None


def checkpoint_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of a VQ-GAN `.ckpt` (torch.load with weights_only: no code runs), cached."""
    stat = os.stat(path)
    return _checkpoint_tensors(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _checkpoint_tensors(path: str, _mtime: int, _size: int) -> dict[str, torch.Tensor]:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a VQ-GAN checkpoint (no state_dict of tensors)")
    return state


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


def read_vq_tensors(
    model_dir: str | Path, want: Callable[[str], bool], *, checkpoint: bool = True
) -> dict[str, torch.Tensor]:
    """Tensors of the model's VQ part whose stripped key satisfies `want`, keyed without the prefix.

    From the safetensors; when they hold none of those (and `checkpoint`), from `vq_checkpoint`."""
    from safetensors import safe_open

    files = safetensors_files(model_dir)
    ckpt = vq_checkpoint(model_dir) if checkpoint else None
    if not files and ckpt is None:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights (and no vqgan.ckpt)")
    out: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                short = strip_vq_prefix(key)
                if short is not None and want(short):
                    out[short] = handle.get_tensor(key)
    if not out and ckpt is not None:
        for key, value in checkpoint_tensors(ckpt).items():
            short = strip_vq_prefix(key) or key
            if want(short):
                out[short] = value
    return out


def encoder_source(model_dir: str | Path) -> str:
    """Where the encoder-side tensors (encoder, quant_conv, codebook) of `model_dir` come from."""
    if read_vq_tensors(model_dir, lambda k: k == "encoder.conv_in.bias", checkpoint=False):
        return f"{model_dir} (model.vqmodel.* in the safetensors)"
    ckpt = vq_checkpoint(model_dir)
    return str(ckpt) if ckpt is not None else f"{model_dir} (no VQ encoder weights)"


def check_one_codebook(model_dir: str | Path) -> None:
    """Refuse a directory whose safetensors VQ and `vqgan.ckpt` carry different codebooks.

    Which one the encoder should read is then ambiguous; the error names both (remove one)."""
    ckpt = vq_checkpoint(model_dir)
    if ckpt is None:
        return
    ours = read_vq_tensors(model_dir, lambda k: k == CODEBOOK_KEY, checkpoint=False).get(CODEBOOK_KEY)
    theirs = checkpoint_tensors(ckpt)
    theirs = next((v for k, v in theirs.items() if (strip_vq_prefix(k) or k) == CODEBOOK_KEY), None)
    if ours is not None and theirs is not None and not same_codebook(ours, theirs):
        raise VQSourceError(
            f"{model_dir}: two VQ sources with different codebooks: the safetensors "
            f"(model.vqmodel.quantize.embedding.weight) and {ckpt}; keep one of them in the directory"
        )


def same_codebook(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape and values (compared as fp32, whatever dtype each source stores)."""
    import torch

    return tuple(a.shape) == tuple(b.shape) and torch.equal(a.float(), b.to(a.device).float())


def is_encoder_key(key: str) -> bool:
    """The tensors that decide which code an image gets: encoder, quant_conv and the codebook."""
    return key.startswith(("encoder.", "quant_conv.", "quantize."))
