"""The VQ-GAN configuration of a model directory, read from config.json without transformers.

The input size and the token grid follow from the config (`resolution`, number of levels), so
nothing downstream hard-codes 512 or 1,024 tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# transformers' ChameleonVQVAEConfig defaults (Chameleon / Anole 7B), for keys a config omits.
DEFAULTS: dict[str, Any] = {
    "embed_dim": 256,
    "num_embeddings": 8192,
    "double_latent": False,
    "latent_channels": 256,
    "resolution": 512,
    "in_channels": 3,
    "base_channels": 128,
    "channel_multiplier": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "attn_resolutions": None,
    "dropout": 0.0,
    "attn_type": "vanilla",
}


@dataclass(frozen=True)
class VQSpec:
    """The shape-defining fields of a Chameleon VQ-GAN (see transformers' ChameleonVQVAEConfig)."""

    embed_dim: int = 256
    num_embeddings: int = 8192
    double_latent: bool = False
    latent_channels: int = 256
    resolution: int = 512
    in_channels: int = 3
    base_channels: int = 128
    channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = field(default_factory=tuple)
    attn_type: str = "vanilla"

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> VQSpec:
        merged = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
        merged.pop("dropout")
        merged["channel_multiplier"] = tuple(int(m) for m in merged["channel_multiplier"])
        merged["attn_resolutions"] = tuple(int(r) for r in (merged["attn_resolutions"] or ()))
        spec = cls(**merged)
        if spec.base_channels % 32:
            raise ValueError(f"VQ base_channels {spec.base_channels} is not a multiple of 32 (GroupNorm(32))")
        if spec.resolution % spec.downsample:
            raise ValueError(f"VQ resolution {spec.resolution} is not a multiple of {spec.downsample}")
        return spec

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> VQSpec:
        path = Path(model_dir) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{model_dir}: no config.json (is this a model directory?)") from None
        vq = config.get("vq_config")
        if not isinstance(vq, dict):
            raise ValueError(f"{path}: no 'vq_config' (not a Chameleon/Anole model?)")
        return cls.from_dict(vq)

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along one side (16 for Chameleon: 5 levels, 4 halvings)."""
        return 2 ** (len(self.channel_multiplier) - 1)

    @property
    def grid(self) -> int:
        """Latent grid side (32 for a 512x512 input)."""
        return self.resolution // self.downsample

    @property
    def tokens_per_image(self) -> int:
        return self.grid * self.grid

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channel_multiplier"] = list(self.channel_multiplier)
        out["attn_resolutions"] = list(self.attn_resolutions)
        return out
