"""The VQ-GAN configuration of a model directory, read from config.json without transformers.

The input size and the token grid follow from the config (`resolution`, number of levels), so
nothing downstream hard-codes 512 or 1,024 tokens.

A directory whose config.json has no `vq_config` may carry the original taming-style
`vqgan.yaml` / `tokenizer/vqgan.yaml` beside its `vqgan.ckpt` (model.params: embed_dim, n_embed,
ddconfig {z_channels, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, double_z}); it is
read instead. Its `ddconfig.resolution` is not the input size (taming uses it only to place
attention blocks; Chameleon's tokenizer feeds 512 px), so the input size stays 512. When both exist,
the fields that shape the weights must agree, or the directory is refused with both named.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

YAML_NAMES = ("vqgan.yaml", "tokenizer/vqgan.yaml")
# taming ddconfig / params key -> ChameleonVQVAEConfig key
_YAML_KEYS = {
    "z_channels": "latent_channels",
    "ch": "base_channels",
    "ch_mult": "channel_multiplier",
    "num_res_blocks": "num_res_blocks",
    "attn_resolutions": "attn_resolutions",
    "in_channels": "in_channels",
    "double_z": "double_latent",
}

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
        yaml_path = next((Path(model_dir) / n for n in YAML_NAMES if (Path(model_dir) / n).is_file()), None)
        from_yaml = vq_config_from_yaml(yaml_path) if yaml_path is not None else None
        if not isinstance(vq, dict):
            if from_yaml is None:
                raise ValueError(f"{path}: no 'vq_config' (not a Chameleon/Anole model?) and no vqgan.yaml")
            return cls.from_dict(from_yaml)
        spec = cls.from_dict(vq)
        if from_yaml is not None:
            other = cls.from_dict({**from_yaml, "resolution": spec.resolution})
            if other != spec:
                raise ValueError(
                    f"{path} vq_config and {yaml_path} describe different VQ-GANs ({spec} vs {other}); "
                    "keep the one that matches the weights"
                )
        return spec

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


def vq_config_from_yaml(path: str | Path) -> dict[str, Any]:
    """A taming-style vqgan.yaml as ChameleonVQVAEConfig keys (input size: the 512 default)."""
    import yaml

    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["model"]["params"]
        dd = params["ddconfig"]
        out = {new: dd[old] for old, new in _YAML_KEYS.items() if old in dd}
        out["embed_dim"] = params["embed_dim"]
        out["num_embeddings"] = params["n_embed"]
    except (KeyError, TypeError, yaml.YAMLError) as exc:
        raise ValueError(
            f"{path}: not a VQ-GAN config (model.params.ddconfig, embed_dim, n_embed): {exc}"
        ) from None
    return out
