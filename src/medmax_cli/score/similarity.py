"""Image-text and image-image similarity with BiomedCLIP (REFERENCE.md 7), as MedMax computes it.

Scores are cosines between L2-normalised embeddings. The encoder is a small protocol so
that the math is tested with a tiny random encoder; the real one is BiomedCLIP through
open_clip (ViT-B/16 + PubMedBERT, text context 256), loaded from a local directory and
imported only when used (`pip install 'medmax-cli[clip]'`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image

CLIP_EXTRA_HINT = "pip install 'medmax-cli[clip]'  (installs open_clip_torch)"
BIOMEDCLIP_CONTEXT = 256


class Encoder(Protocol):
    """What similarity needs from a CLIP-style model."""

    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:  # [B, D]
        ...

    def encode_text(self, texts: list[str]) -> torch.Tensor:  # [B, D]
        ...


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two [B, D] embedding batches -> [B]."""
    import torch.nn.functional as F

    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    return (a * b).sum(dim=-1)


def image_text_scores(encoder: Encoder, images: list[Image.Image], texts: list[str]) -> list[float]:
    """cosine(image_i, text_i) for each pair (captioning, image generation)."""
    import torch

    if len(images) != len(texts):
        raise ValueError("need one text per image")
    if not images:
        return []
    with torch.inference_mode():
        return [float(x) for x in cosine(encoder.encode_image(images), encoder.encode_text(texts))]


def image_image_scores(
    encoder: Encoder, images_a: list[Image.Image], images_b: list[Image.Image]
) -> list[float]:
    """cosine(a_i, b_i) for each pair (generated vs reference image, interleaved outputs)."""
    import torch

    if len(images_a) != len(images_b):
        raise ValueError("need pairs of images")
    if not images_a:
        return []
    with torch.inference_mode():
        both = encoder.encode_image(list(images_a) + list(images_b))  # [2B, D]
        return [float(x) for x in cosine(both[: len(images_a)], both[len(images_a) :])]


class OpenClipEncoder:
    """BiomedCLIP (or any open_clip model) from a local directory holding
    `open_clip_config.json` and `open_clip_pytorch_model.bin` (or `.safetensors`)."""

    def __init__(self, model_dir: str | Path, *, device: str = "cpu"):
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError(f"CLIP similarity needs open_clip: {CLIP_EXTRA_HINT}") from exc
        import torch

        model_dir = Path(model_dir)
        config_path = model_dir / "open_clip_config.json"
        if not config_path.exists():
            raise FileNotFoundError(
                f"{config_path} not found: --clip-model must be a local open_clip directory"
            )
        weights = next(
            (
                p
                for p in (
                    model_dir / "open_clip_model.safetensors",
                    model_dir / "open_clip_pytorch_model.bin",
                )
                if p.exists()
            ),
            None,
        )
        if weights is None:
            raise FileNotFoundError(f"no open_clip weights in {model_dir}")
        config = json.loads(config_path.read_text())
        model_cfg = config["model_cfg"]
        text_cfg = model_cfg.setdefault("text_cfg", {})
        # BiomedCLIP's text tower is PubMedBERT through transformers: point its config and tokenizer
        # at this directory when they were saved here, so nothing is looked up on the Hub.
        if text_cfg.get("hf_model_name") and (model_dir / "config.json").exists():
            text_cfg["hf_model_name"] = str(model_dir)
        if text_cfg.get("hf_tokenizer_name") and any(
            (model_dir / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
        ):
            text_cfg["hf_tokenizer_name"] = str(model_dir)
        preprocess_cfg = config.get("preprocess_cfg", {})
        name = f"medmax-local-{model_dir.resolve().name}"
        open_clip.factory._MODEL_CONFIGS[name] = model_cfg  # register the local architecture
        extra = {
            k: preprocess_cfg[v]
            for k, v in (("image_mean", "mean"), ("image_std", "std"))
            if preprocess_cfg.get(v)
        }
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(weights), device=device, **extra
        )
        self.model = model.eval()
        self.preprocess = preprocess
        context = int(text_cfg.get("context_length", BIOMEDCLIP_CONTEXT))
        hf_name = text_cfg.get("hf_tokenizer_name")
        self.tokenizer = (
            open_clip.tokenizer.HFTokenizer(hf_name, context_length=context)
            if hf_name
            else open_clip.get_tokenizer(name, context_length=context)
        )
        self.device = device
        self._torch = torch

    def encode_image(self, images: list[Image.Image]) -> torch.Tensor:
        batch = self._torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        return self.model.encode_image(batch)  # [B, D]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))  # [B, D]


def load_encoder(model_dir: str | Path, *, device: str = "cpu") -> Encoder:
    return OpenClipEncoder(model_dir, device=device)
