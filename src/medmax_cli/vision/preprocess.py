"""The Chameleon / Anole / MedMax image transform, reproduced exactly (REFERENCE.md 3).

1. alpha-composite onto white and convert to RGB (the reference blends in float64 and truncates
   to uint8, so do we);
2. resize so the shortest side is `size` with LANCZOS, new sides `round(side * size / shortest)`;
3. centre-crop `size` x `size` (offsets floor((side - size) / 2));
4. scale to [-1, 1] as `x / 255 * 2 - 1` in float64, then float32, channels first.

The work is split in two so the batched tokenizer can ship uint8 pixels (4x less memory traffic)
and scale them on the device with a lookup table that holds exactly the reference float32 values:
`preprocess_uint8` (PIL -> HWC uint8, steps 1-3) and `to_unit_range` (step 4).

Alpha (`alpha=`): "white" blends transparency onto white, as Anole's tokenizer and MedMax's
evaluation do. "drop" is a plain `convert("RGB")`, which is what MedMax's released TRAINING tokens
were made from (its src/image_tokenization.py opens every image with `.convert("RGB")` before the
whitening step, which then has nothing to do): RGBA, LA, transparent-palette and WebP images get
other codes.

One deliberate difference: a high-bit-depth grey image (PNG `I;16`, `I`) is first scaled to 8 bits
by its own bit depth: b = max(8, bit length of its largest value), value * 255 / (2^b - 1), rounded.
A 12-bit radiograph stored as 16-bit (max <= 4095) is thus read as 12-bit and keeps its contrast; a
full-range 16-bit image is divided by 257; values <= 255 are kept as they are; negative values (mode
`I`) become 0. (PNG has no reliable field for the real bit depth: `sBIT` is optional and Pillow
does not expose it.) The reference path hands such images to Pillow's RGB conversion, which clips
every value above 255 to white and so erases most 16-bit medical images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("white", "drop")

# float32 value of each uint8 level after x/255*2-1 computed in float64 (as the reference does).
UNIT_RANGE_LUT = ((np.arange(256, dtype=np.float64) / 255.0) * 2 - 1).astype(np.float32)


def bit_depth(values: np.ndarray) -> int:
    """The bit depth an integer grey image uses: max(8, bit length of its largest value)."""
    top = int(values.max()) if values.size else 0
    return max(8, top.bit_length())


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float grey images -> 8-bit 'L' (integers scaled by their own bit depth)."""
    if image.mode in _WIDE_MODES:
        values = np.clip(np.asarray(image, dtype=np.float64), 0, None)  # [H, W]
        full = float(2 ** bit_depth(values) - 1)  # 4095 for a 12-bit scan, 65535 for 16-bit
        return Image.fromarray(np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image


def whiten_transparency(image: Image.Image) -> Image.Image:
    """RGB image with any transparency blended onto white (the reference's `_whiten_transparency`)."""
    image = _to_8bit(image)
    if image.mode == "RGB":
        return image
    rgba = np.asarray(image.convert("RGBA"))
    alpha_channel = rgba[:, :, 3]
    if not (alpha_channel < 255).any():
        return image.convert("RGB")
    alpha = alpha_channel[:, :, None] / 255.0  # float64 [H,W,1]
    blended = (1 - alpha) * 255 + alpha * rgba[:, :, :3]
    return Image.fromarray(blended.astype(np.uint8), "RGB")  # truncation, as in the reference


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """Shortest side to `size` (LANCZOS, aspect kept), then the centred `size` x `size` square."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(scale * width)), max(size, round(scale * height)))
    image = image.resize(new_size, Image.Resampling.LANCZOS)
    x0 = (image.width - size) // 2
    y0 = (image.height - size) // 2
    return image.crop((x0, y0, x0 + size, y0 + size))


def to_rgb(image: Image.Image, alpha: str = "white") -> Image.Image:
    """Step 1: "white" blends transparency onto white; "drop" discards it (`convert("RGB")`, as
    MedMax's training tokens). High-bit-depth grey images are scaled to 8 bits first either way."""
    if alpha == "white":
        return whiten_transparency(image)
    if alpha == "drop":
        image = _to_8bit(image)
        return image if image.mode == "RGB" else image.convert("RGB")
    raise ValueError(f"alpha must be one of {', '.join(ALPHA_MODES)}, got {alpha!r}")


def preprocess_uint8(image: Image.Image, size: int, alpha: str = "white") -> np.ndarray:
    """Steps 1-3: uint8 pixels [size, size, 3] (HWC), ready for `to_unit_range`."""
    pixels = np.array(resize_and_crop(to_rgb(image, alpha), size), dtype=np.uint8)  # writable
    assert pixels.shape == (size, size, 3), pixels.shape
    return pixels


_LUTS: dict = {}


def _lut_on(device: torch.device) -> torch.Tensor:
    """The table, copied to each device once (a per-batch host->device copy would stall the pipeline)."""
    import torch

    key = str(device)
    if key not in _LUTS:
        _LUTS[key] = torch.from_numpy(UNIT_RANGE_LUT).to(device)
    return _LUTS[key]


def to_unit_range(pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 [B, H, W, 3] (any device) -> float [B, 3, H, W] in [-1, 1], exactly the reference values.

    A gather through the 256-entry table, so the result is bit-identical to `preprocess`.
    """
    lut = _lut_on(pixels.device)
    out = lut[pixels.long()].permute(0, 3, 1, 2)  # [B, 3, H, W] float32
    return out if dtype is None else out.to(dtype)


def preprocess(image: Image.Image, size: int, alpha: str = "white") -> torch.FloatTensor:
    """The full transform: a PIL image -> float32 tensor [3, size, size] in [-1, 1]."""
    import torch

    pixels = preprocess_uint8(image, size, alpha)
    return torch.from_numpy(UNIT_RANGE_LUT[pixels]).permute(2, 0, 1).contiguous()
