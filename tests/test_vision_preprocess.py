"""The Chameleon/Anole image transform: an independent restatement, known images, pinned statistics."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from medmax_cli.media import decode_image
from medmax_cli.vision.preprocess import preprocess, preprocess_uint8, to_unit_range
from medmax_cli.vision.spec import VQSpec

SIZE = 32


def reference_transform(image: Image.Image, size: int) -> torch.Tensor:
    """Chameleon's image_tokenizer path, restated (8-bit images): whiten, resize, crop, scale."""
    if image.mode != "RGB":
        rgba = np.array(image.convert("RGBA"))
        if (rgba[:, :, 3] < 255).any():
            a = rgba[:, :, 3] / 255.0
            rgb = (1 - a[:, :, None]) * 255 + a[:, :, None] * rgba[:, :, :3]
            image = Image.fromarray(rgb.astype("uint8"), "RGB")
        else:
            image = image.convert("RGB")
    s = min(image.size)
    scale = size / s
    image = image.resize((round(scale * image.size[0]), round(scale * image.size[1])), Image.LANCZOS)
    x0, y0 = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((x0, y0, x0 + size, y0 + size))
    arr = np.array(image) / 255.0 * 2 - 1
    return torch.from_numpy(arr).permute(2, 0, 1).float()


def _png_roundtrip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return decode_image(buffer.getvalue()).image


def portrait() -> Image.Image:  # 60 wide, 100 high: R follows x, G follows y
    y, x = np.mgrid[0:100, 0:60]
    return Image.fromarray(np.stack([x * 4, y * 2, np.full_like(x, 128)], -1).astype(np.uint8), "RGB")


def landscape() -> Image.Image:  # 150x50: red | green | blue bands; the centre crop keeps green
    arr = np.zeros((50, 150, 3), np.uint8)
    arr[:, :50, 0] = arr[:, 50:100, 1] = arr[:, 100:, 2] = 255
    return Image.fromarray(arr, "RGB")


def rgba() -> Image.Image:  # left half transparent black, right half opaque red, a half-alpha band
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[:, 20:, 0] = 255
    arr[:, 20:, 3] = 255
    arr[:4, :, 3] = 128
    return Image.fromarray(arr, "RGBA")


def grayscale() -> Image.Image:
    y, x = np.mgrid[0:48, 0:64]
    return Image.fromarray(((x * 3 + y * 2) % 256).astype(np.uint8), "L")


def png16() -> Image.Image:  # 16-bit grey PNG spanning most of the range
    y, x = np.mgrid[0:40, 0:40]
    return _png_roundtrip(Image.fromarray(((x + y) * 800).astype(np.uint16)))


# mean and std of each channel of preprocess(image, 32): pinned so a change to the transform shows.
PINNED = {
    "portrait": ([-0.0745, -0.2382, 0.0039], [0.5433, 0.2738, 0.0]),
    "landscape": ([-0.9971, 0.9941, -0.9971], [0.0150, 0.0209, 0.0150]),  # LANCZOS rings at band edges
    "rgba": ([0.9490, -0.0004, -0.0004], [0.2165, 0.9436, 0.9436]),
    "grayscale": ([0.0911, 0.0911, 0.0911], [0.3886, 0.3886, 0.3886]),
    "png16": ([-0.0478, -0.0478, -0.0478], [0.3992, 0.3992, 0.3992]),
}
IMAGES = {"portrait": portrait, "landscape": landscape, "rgba": rgba, "grayscale": grayscale, "png16": png16}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_pinned_statistics(name):
    x = preprocess(IMAGES[name](), SIZE)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    mean, std = PINNED[name]
    assert x.mean(dim=(1, 2)).tolist() == pytest.approx(mean, abs=1e-3)
    assert x.std(dim=(1, 2)).tolist() == pytest.approx(std, abs=1e-3)


@pytest.mark.parametrize("name", ["portrait", "landscape", "rgba", "grayscale"])
def test_matches_the_reference_transform_exactly(name):
    image = IMAGES[name]()
    assert torch.equal(preprocess(image, SIZE), reference_transform(image, SIZE))


def test_random_odd_sizes_match_the_reference_exactly():
    rng = np.random.default_rng(0)
    for w, h in [(33, 97), (512, 511), (7, 3), (200, 64)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for size in (32, 48):
            assert torch.equal(preprocess(image, size), reference_transform(image, size)), (w, h, size)


def test_known_pixels():
    # landscape: only the green band survives the centre crop
    x = preprocess(landscape(), SIZE)
    assert torch.equal(x[:, SIZE // 2, SIZE // 2], torch.tensor([-1.0, 1.0, -1.0]))
    # RGBA: transparent -> exactly white; half alpha over black -> 255 * (1 - 128/255) truncated = 127
    x = preprocess(rgba(), 40)  # already 40x40: no resampling
    assert torch.equal(x[:, 20, 0], torch.ones(3))
    assert x[:, 20, 30].tolist() == [1.0, -1.0, -1.0]
    assert x[0, 0, 0].item() == pytest.approx(127 / 255 * 2 - 1, abs=1e-7)
    # grayscale -> three equal channels
    x = preprocess(grayscale(), SIZE)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_16bit_png_is_scaled_not_clipped():
    image = png16()
    assert image.mode == "I;16"
    x = preprocess(image, 40)
    # (x + y) * 800 at pixel (0, 0) is 0 -> black; at (20, 20) 32000 -> round(32000 / 257) = 125
    assert x[0, 0, 0].item() == -1.0
    assert x[0, 20, 20].item() == pytest.approx(125 / 255 * 2 - 1, abs=1e-7)
    # Pillow's own RGB conversion would clip: nearly everything above 255 becomes white
    clipped = np.asarray(image.convert("RGB"))
    assert (clipped == 255).mean() > 0.9 and (x > 0.99).float().mean() < 0.1


def test_uint8_path_equals_float_path():
    image = portrait()
    pixels = torch.from_numpy(preprocess_uint8(image, SIZE))[None]  # [1, S, S, 3]
    assert torch.equal(to_unit_range(pixels)[0], preprocess(image, SIZE))


def test_sizes_come_from_the_vq_config():
    tiny = VQSpec.from_dict({"resolution": 32, "channel_multiplier": [1, 1, 2], "base_channels": 32})
    assert (tiny.grid, tiny.tokens_per_image) == (8, 64)
    full = VQSpec()
    assert (full.resolution, full.grid, full.tokens_per_image) == (512, 32, 1024)
    with pytest.raises(ValueError, match="multiple of 32"):
        VQSpec.from_dict({"base_channels": 48})
