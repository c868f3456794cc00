"""The VQ-GAN encoder: pixels -> codes 0..K-1, batched, with the model's own weights.

The network is transformers' `ChameleonVQVAE` (encoder + quant_conv + codebook), built from the
model directory's `vq_config` and loaded with only the `model.vqmodel.*` tensors (never the
language model). The nearest-code search is ours: it runs in float32 even when the convolutions
run in bf16, in row chunks so a batch of 32 full-size images never needs a 1 GB distance matrix
at once, and it returns int64 codes (the stock path returns int32 on CPU via the BPE mapping).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medmax_cli.vision.preprocess import to_unit_range
from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.weights import check_one_codebook, encoder_source, is_encoder_key, read_vq_tensors

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_ROWS_PER_CHUNK = 16384  # latent cells per distance chunk: 16384 x 8192 fp32 = 512 MiB at most


def resolve_device(device: str | None) -> torch.device:
    """'auto' (or None) -> cuda when available, else cpu; anything else as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """'fp32' | 'bf16' | 'auto' (bf16 on CUDA, fp32 elsewhere) -> a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def build_vq_model(spec: VQSpec, *, random: bool = False, seed: int = 0) -> Any:
    """An (untrained) transformers ChameleonVQVAE for `spec`; weights are random only if `random`."""
    from transformers import ChameleonVQVAEConfig
    from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

    config = ChameleonVQVAEConfig(**spec.as_dict())
    if random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ChameleonVQVAE(config).eval()
    # Storage without random init: the weights are loaded next. (A meta-device build would pull in
    # torch._refs, which costs seconds on first use.)
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return ChameleonVQVAE(config).eval()


def load_vq_model(model_dir: str | Path) -> Any:
    """The encoder side of the model's ChameleonVQVAE with its real weights (strict: names what is missing)."""
    spec = VQSpec.from_model_dir(model_dir)
    check_one_codebook(model_dir)  # safetensors VQ and a vqgan.ckpt beside them must agree
    tensors = read_vq_tensors(model_dir, is_encoder_key)  # the safetensors, else (tokenizer/)vqgan.ckpt
    vq = build_vq_model(spec)
    expected = {k for k in vq.state_dict() if is_encoder_key(k)}
    missing = sorted(expected - tensors.keys())
    unexpected = sorted(tensors.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{encoder_source(model_dir)}: VQ encoder weights do not match vq_config: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    # post_quant_conv belongs to the decoder side and keeps its (unused) uninitialised storage.
    vq.load_state_dict(tensors, strict=False)
    return vq.eval()


# From this input side up, channels_last is the faster CPU layout: at Chameleon's 512 px, one image
# took 26 s in fp32 and 11 s in bf16 with it, against 36 s and 23 s without (2 shared cores, oneDNN).
# Below it (the tiny model's 32 px) the layout conversions cost more than they save.
CPU_CHANNELS_LAST_MIN_SIDE = 128


def default_channels_last(device: torch.device, spec: VQSpec) -> bool:
    """channels_last on CUDA (cuDNN), and on the CPU for real-size inputs (oneDNN convolutions)."""
    return device.type == "cuda" or spec.resolution >= CPU_CHANNELS_LAST_MIN_SIDE


class VQEncoder:
    """Batched image -> code encoder around a ChameleonVQVAE.

    `encode(pixels)` takes float [B, 3, S, S] in [-1, 1]; `encode_uint8(pixels)` takes the uint8
    [B, S, S, 3] arrays of `preprocess_uint8` and scales them on the device. Both return int64
    codes [B, grid*grid] on the CPU, raster order.
    """

    def __init__(
        self,
        vq: Any,
        spec: VQSpec,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "fp32",
        channels_last: bool | None = None,
        compile: bool = False,
    ):
        self.spec = spec
        self.device = resolve_device(str(device) if isinstance(device, torch.device) else device)
        self.dtype = resolve_dtype(dtype, self.device)
        if channels_last is None:
            channels_last = default_channels_last(self.device, spec)
        self.channels_last = channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # The codebook is copied in fp32 before the network is cast: the code search stays exact.
        self.codebook = vq.quantize.embedding.weight.detach().to(self.device, torch.float32)  # [K, D]
        self.vq = vq.to(device=self.device, dtype=self.dtype, memory_format=memory_format).eval()
        self.codebook_sq = (self.codebook**2).sum(dim=1)  # [K]
        if self.device.type == "cuda":
            # Fixed input shapes: let cuDNN pick the fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True
        self._trunk = self._encode_latents
        if compile:
            self._trunk = torch.compile(self._encode_latents, dynamic=False)
        self.calls = 0  # number of batches encoded (tests check that a cache hit encodes nothing)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **kwargs: Any) -> VQEncoder:
        return cls(load_vq_model(model_dir), VQSpec.from_model_dir(model_dir), **kwargs)

    def _encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels [B, 3, S, S] -> latents [B, D, g, g] (model dtype)
        return self.vq.quant_conv(self.vq.encoder(pixels))

    def nearest_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, D, g, g] -> codes [B, g*g] (int64), squared-L2 nearest codebook entry in fp32."""
        batch, dim = latents.shape[:2]
        flat = latents.float().permute(0, 2, 3, 1).reshape(-1, dim)  # [B*g*g, D]
        codes = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
        for start in range(0, flat.shape[0], _ROWS_PER_CHUNK):
            rows = flat[start : start + _ROWS_PER_CHUNK]
            # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e  (same terms as the stock quantizer)
            dist = (rows**2).sum(dim=1, keepdim=True) + self.codebook_sq - 2 * rows @ self.codebook.T
            codes[start : start + rows.shape[0]] = dist.argmin(dim=1)
        return codes.view(batch, -1)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """float [B, 3, S, S] in [-1, 1] -> int64 codes [B, N] on the CPU."""
        size = self.spec.resolution
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"expected pixels [B, 3, {size}, {size}], got {tuple(pixels.shape)}")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = pixels.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=memory_format)
        self.calls += 1
        return self.nearest_codes(self._trunk(x)).cpu()

    @torch.inference_mode()
    def encode_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, S, S, 3] (from `preprocess_uint8`) -> int64 codes [B, N] on the CPU."""
        return self.submit_uint8(pixels).result()

    @torch.inference_mode()
    def submit_uint8(self, pixels: torch.Tensor) -> EncodeHandle:
        """Queue a uint8 batch on the device and return at once; `.result()` waits for its codes.

        On CUDA the kernels and the copy of the codes into pinned memory are only enqueued, so the
        caller can stack the next batch while this one runs. On the CPU the work is done here.
        """
        size = self.spec.resolution
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (size, size, 3) or pixels.dtype != torch.uint8:
            raise ValueError(
                f"expected uint8 pixels [B, {size}, {size}, 3], got {tuple(pixels.shape)} {pixels.dtype}"
            )
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = to_unit_range(pixels.to(self.device, non_blocking=True), self.dtype)  # [B, 3, S, S]
        self.calls += 1
        codes = self.nearest_codes(self._trunk(x.contiguous(memory_format=memory_format)))  # [B, N] on device
        if self.device.type != "cuda":
            return EncodeHandle(codes.cpu(), None)
        host = torch.empty(codes.shape, dtype=codes.dtype, pin_memory=True)
        host.copy_(codes, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return EncodeHandle(host, event)


class EncodeHandle:
    """Codes of a submitted batch: `.result()` waits for the device (CUDA) and returns [B, N] int64."""

    def __init__(self, codes: torch.Tensor, event: Any):
        self._codes = codes
        self._event = event

    def result(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._codes
