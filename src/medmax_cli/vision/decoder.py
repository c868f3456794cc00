"""The VQ-GAN decoder: codes -> pixels. transformers has none, so this is the project's own.

Architecture: the taming-transformers VQGAN decoder that Chameleon ships (REFERENCE.md 4), with the
same module names so that checkpoints load as they are:

    quantize.embedding   codebook [K, D]
    post_quant_conv      1x1 conv D -> latent_channels
    decoder.conv_in, decoder.mid.{block_1, attn_1, block_2},
    decoder.up.{level}.block.{j} (num_res_blocks + 1 per level), decoder.up.{level}.attn.{j},
    decoder.up.{level}.upsample.conv (nearest x2, then 3x3), decoder.norm_out, decoder.conv_out

Weights come from, in order: `vq_decoder.safetensors` in the model directory (what `init-model
--tiny` writes), the Anole HF layout inside the model's safetensors (`model.vqmodel.decoder.*`),
or the original `vqgan.ckpt` / `tokenizer/vqgan.ckpt` (`decoder.*`, loaded with
`torch.load(weights_only=True)`). A source may omit the codebook and post_quant_conv: those are
then taken from the model's VQ weights, which hold them. Missing, unexpected or mis-shaped keys are
an error that names them. A decoder source whose OWN codebook differs from the encoder's is refused
with both sources named (codes would decode through another embedding than they were quantised
to), unless the caller names the decoder file explicitly (`decoder_file`, `--vq-decoder`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from medmax_cli.atomic import atomic_write_bytes
from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.weights import (
    CODEBOOK_KEY,
    checkpoint_tensors,
    encoder_source,
    read_vq_tensors,
    safetensors_files,
    same_codebook,
    strip_vq_prefix,
    vq_checkpoint,
)

log = logging.getLogger(__name__)

DECODER_FILE = "vq_decoder.safetensors"
ORIGINAL_CKPT = "vqgan.ckpt"
# Parts of a VQ checkpoint that are not the decoder (skipped, never "unexpected").
_OTHER_PARTS = ("encoder.", "quant_conv.", "loss.", "discriminator.")
_DECODER_PARTS = ("decoder.", "post_quant_conv.", "quantize.")


class DecoderWeightsError(ValueError):
    """Decoder weights that do not fit the model's VQ config (the message names the keys)."""


# --------------------------------------------------------------------------- the network


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> 3x3 conv, twice, plus a (1x1 when the width changes) shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (1x1 conv projections)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # [B, C, H, W] -> [B, 1, H*W, C]: one head of width C; SDPA scales by C^-0.5 as the original.
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, H*W, C]
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """latents [B, latent_channels, g, g] -> image [B, 3, g*2^(L-1), ...] (unclamped)."""

    def __init__(self, spec: VQSpec, out_channels: int = 3):
        super().__init__()
        mults = spec.channel_multiplier
        self.num_levels = len(mults)
        self.num_res_blocks = spec.num_res_blocks
        block_in = spec.base_channels * mults[-1]
        res = spec.grid
        self.conv_in = nn.Conv2d(spec.latent_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in) if spec.attn_type == "vanilla" else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        levels: list[nn.Module] = []
        for level in reversed(range(self.num_levels)):  # lowest resolution first
            block_out = spec.base_channels * mults[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(spec.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in spec.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, stage)  # index = level, as in the checkpoints
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_levels)):
            stage = self.up[level]
            for j, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[j](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Quantize(nn.Module):
    """Holds the codebook under the checkpoint name `quantize.embedding`."""

    def __init__(self, num_embeddings: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embed_dim)


class VQDecoder(nn.Module):
    """codes [B, N] -> image [B, 3, S, S] in [-1, 1]. State dict keys = the original vqgan.ckpt layout."""

    def __init__(self, spec: VQSpec):
        super().__init__()
        self.spec = spec
        self.quantize = _Quantize(spec.num_embeddings, spec.embed_dim)
        self.post_quant_conv = nn.Conv2d(spec.embed_dim, spec.latent_channels, 1)
        self.decoder = Decoder(spec)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """LongTensor [B, N] (N = grid^2, raster order) -> float [B, 3, S, S] clamped to [-1, 1]."""
        grid = self.spec.grid
        if codes.ndim != 2 or codes.shape[1] != grid * grid:
            raise ValueError(
                f"expected codes [B, {grid * grid}] for a {grid}x{grid} grid, got {tuple(codes.shape)}"
            )
        codes = codes.to(self.quantize.embedding.weight.device, torch.long)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.spec.num_embeddings):
            raise ValueError(
                f"codes must lie in [0, {self.spec.num_embeddings}), got {codes.min()}..{codes.max()}"
            )
        z = self.quantize.embedding(codes)  # [B, N, D]
        z = z.view(codes.shape[0], grid, grid, -1).permute(0, 3, 1, 2).contiguous()  # [B, D, g, g]
        return self.decoder(self.post_quant_conv(z)).clamp(-1.0, 1.0)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(codes)


# --------------------------------------------------------------------------- weights


def normalize_decoder_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map either layout to ours: ({decoder-side key: tensor}, [keys that belong to no known part])."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        short = strip_vq_prefix(key) or key
        if short.startswith(_DECODER_PARTS):
            out[short] = value
        elif not short.startswith(_OTHER_PARTS):
            unknown.append(key)
    return out, unknown


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """(decoder-side tensors, unknown keys, source name) of one weights file (.safetensors or .ckpt)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such decoder weights file")
    raw = load_file(str(path)) if path.suffix == ".safetensors" else checkpoint_tensors(path)
    state, unknown = normalize_decoder_keys(raw)
    return state, unknown, str(path)


def _read_source(model_dir: Path) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """(decoder-side tensors, unknown keys, source name) from the first source the directory has."""
    own = model_dir / DECODER_FILE
    if own.is_file():
        return _read_file(own)
    anole = (
        read_vq_tensors(model_dir, lambda k: k.startswith("decoder."), checkpoint=False)
        if safetensors_files(model_dir)
        else {}
    )
    if anole:
        return anole, [], f"{model_dir} (model.vqmodel.decoder.*)"
    ckpt = vq_checkpoint(model_dir)
    if ckpt is not None:
        return _read_file(ckpt)
    raise FileNotFoundError(
        f"{model_dir}: no VQ decoder weights: expected {DECODER_FILE}, model.vqmodel.decoder.* in the "
        f"safetensors (Anole), or {ORIGINAL_CKPT} / tokenizer/{ORIGINAL_CKPT} (Chameleon's original VQ-GAN)"
    )


def _short_list(keys: Sequence[str], n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def check_and_load(
    module: VQDecoder, state: Mapping[str, torch.Tensor], *, source: str, unknown: Sequence[str] = ()
) -> None:
    """Strict load: any missing, unexpected or mis-shaped key raises DecoderWeightsError naming it."""
    expected = module.state_dict()
    problems = []
    if not any(k.startswith("decoder.") for k in state):
        sample = list(unknown) or list(state)
        raise DecoderWeightsError(
            f"{source}: no decoder weights in a known layout (want decoder.* or model.vqmodel.decoder.*); "
            f"keys look like: {_short_list(sample)}"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected] + list(unknown)
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing:
        problems.append(f"missing {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {_short_list(unexpected)}")
    if shapes:
        problems.append(f"wrong shape {_short_list(shapes, 3)}")
    if problems:
        raise DecoderWeightsError(
            f"{source}: decoder weights do not fit the model's vq_config: " + "; ".join(problems)
        )
    module.load_state_dict({k: state[k].to(torch.float32) for k in expected}, strict=True)


def load_vq_decoder(
    model_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    decoder_file: str | Path | None = None,
) -> VQDecoder:
    """The model's VQ decoder, weights loaded strictly, in eval mode on `device`/`dtype`.

    `device` may be "auto" (cuda when available); `dtype` a torch dtype or "fp32"/"bf16"/"auto".
    `decoder_file` (a .safetensors or .ckpt) replaces the directory's own decoder sources; it may
    carry its own codebook (a fine-tuned VQ-GAN): naming it explicitly is what allows that.
    """
    root = Path(model_dir)
    spec = VQSpec.from_model_dir(root)
    state, unknown, source = _read_file(Path(decoder_file)) if decoder_file else _read_source(root)
    own_codebook = CODEBOOK_KEY in state
    lacking = [k for k in (CODEBOOK_KEY, "post_quant_conv.weight", "post_quant_conv.bias") if k not in state]
    if lacking:  # the HF conversion keeps the codebook and post_quant_conv beside the encoder
        state.update(read_vq_tensors(root, lambda k: k in lacking))
    module = VQDecoder(spec)
    check_and_load(module, state, source=source, unknown=unknown)
    if own_codebook and not decoder_file:
        encoder_codebook = read_vq_tensors(root, lambda k: k == CODEBOOK_KEY).get(CODEBOOK_KEY)
        if encoder_codebook is not None and not same_codebook(encoder_codebook, state[CODEBOOK_KEY]):
            raise DecoderWeightsError(
                f"{root}: the decoder's codebook ({source}) differs from the encoder's "
                f"({encoder_source(root)}): tokens would decode through another embedding than they "
                "were made with; keep one VQ source in the directory, or name the decoder explicitly "
                "(--vq-decoder FILE) if that is what you mean"
            )
    from medmax_cli.vision.encoder import resolve_device, resolve_dtype

    dev = resolve_device(device) if isinstance(device, str) or device is None else device
    return module.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval()


def write_random_decoder(model_dir: str | Path, seed: int = 0) -> Path:
    """Write `vq_decoder.safetensors` with random decoder weights for the model's vq_config.

    The codebook and post_quant_conv are copied from the model's VQ weights when it has them, so
    codes decode through the same embedding the encoder quantised to. Same seed, same bytes.
    """
    from safetensors.torch import save

    root = Path(model_dir)
    spec = VQSpec.from_model_dir(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = VQDecoder(spec)
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    if safetensors_files(root):
        shared = read_vq_tensors(root, lambda k: k.startswith(("quantize.", "post_quant_conv.")))
        state.update({k: v.to(torch.float32).contiguous() for k, v in shared.items() if k in state})
    # One metadata key: safetensors writes a metadata map in random order, which would make the
    # file differ from build to build.
    data = save(state, metadata={"medmax": f"vq-decoder; layout vqgan.ckpt; seed {seed}"})
    atomic_write_bytes(root / DECODER_FILE, data)
    return root / DECODER_FILE


def write_tiny_vq_decoder(model_dir: Path, seed: int) -> None:
    """Hook for `medmax_cli.model.tiny.TINY_MODEL_WRITERS`: the tiny model ships a decoder too."""
    write_random_decoder(model_dir, seed)


# --------------------------------------------------------------------------- images


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """float [3, H, W] in [-1, 1] -> RGB PIL image (Chameleon's conversion: scale, truncate to uint8)."""
    hwc = ((image.detach().float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((hwc * 255).astype("uint8"), "RGB")


_DECODERS: dict[tuple[str, str], VQDecoder] = {}


def _decoder_for(model_dir: str | Path, device: str | torch.device) -> VQDecoder:
    key = (str(Path(model_dir).resolve()), str(device))
    if key not in _DECODERS:
        _DECODERS.clear()  # keep at most one loaded (a full decoder is ~150 MB)
        _DECODERS[key] = load_vq_decoder(model_dir, device=device)
    return _DECODERS[key]


def codes_to_pil(
    model_dir_or_decoder: str | Path | VQDecoder,
    codes: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> list[Image.Image]:
    """Decode lists of codes (one list per image) into PIL images, in batches."""
    if isinstance(model_dir_or_decoder, VQDecoder):
        decoder = model_dir_or_decoder
    else:
        decoder = _decoder_for(model_dir_or_decoder, device)
    images: list[Image.Image] = []
    for start in range(0, len(codes), batch_size):
        batch = torch.tensor([list(c) for c in codes[start : start + batch_size]], dtype=torch.long)
        pixels = decoder.decode(batch)  # [b, 3, S, S]
        images.extend(tensor_to_pil(p) for p in pixels)
    return images


def decoder_info(decoder: VQDecoder) -> dict[str, Any]:
    """Parameter count and output size, for logs and the bench."""
    return {"parameters": sum(p.numel() for p in decoder.parameters()), "size": decoder.spec.resolution}
