"""Images/s from JPEG files to VQ codes: the naive path vs `tokenize_images`, side by side.

naive: transformers' stock Chameleon image processor + one `ChameleonVQVAE.encode` call per image.
ours:  `medmax_cli.vision.tokenize.tokenize_images` (decoding threads overlapped with a batched
       encoder, uint8 transfer, fp32 code search), a fresh token cache per repeat (no cache hits).
Also the encoder alone on preprocessed batches, to show how close the pipeline gets to it.

    python bench/vision.py                 # CPU, the tiny VQ (32x32 -> 64 codes), random weights
    python bench/vision.py --quick         # a few images
    python bench/vision.py --full          # full-size Chameleon VQ-GAN (512x512 -> 1024 codes),
                                           # random weights; on a GPU: bf16 + channels_last
    python bench/vision.py --full --compile --batch-size 64   # + torch.compile (GPU)

Numbers are medians of --repeats runs after a warm-up; no thresholds. Quote ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _harness import Bench, Measured
from medmax_cli.media import MediaStore
from medmax_cli.streams import ErrorPolicy
from medmax_cli.vision.encoder import VQEncoder, build_vq_model, resolve_device
from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.tokenize import tokenize_images

TINY_VQ = {
    "embed_dim": 32,
    "num_embeddings": 8192,
    "latent_channels": 32,
    "resolution": 32,
    "base_channels": 32,
    "channel_multiplier": [1, 1, 2],
    "num_res_blocks": 1,
}
FULL_VQ: dict = {}  # transformers' defaults = Chameleon/Anole: 512, base 128, [1,1,2,2,4], 2 blocks, 256, 8192


def make_vq_dir(root: Path, vq_config: dict, seed: int = 0) -> tuple[Path, object]:
    """A minimal model directory (config.json + model.vqmodel.* safetensors) with random VQ weights."""
    from safetensors.torch import save_file

    spec = VQSpec.from_dict(vq_config)
    vq = build_vq_model(spec, random=True, seed=seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "chameleon", "vq_config": spec.as_dict()}))
    save_file(
        {f"model.vqmodel.{k}": v.contiguous() for k, v in vq.state_dict().items()},
        str(root / "model.safetensors"),
    )
    return root, vq


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Smooth, figure-like JPEGs of varied sizes (600-1200 px a side), quality 90."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = int(rng.integers(600, 1200)), int(rng.integers(600, 1200))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack(
            [
                np.sin(x / rng.uniform(20, 80)),
                np.cos(y / rng.uniform(20, 80)),
                np.sin((x + y) / rng.uniform(30, 90)),
            ],
            -1,
        )
        arr = ((base * 0.4 + 0.5) * 255 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_naive(paths: list[Path], vq, processor, device: torch.device, dtype: torch.dtype) -> Measured:
    codes = []
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            image = Image.open(path)
            pixels = processor(images=image, return_tensors="pt")["pixel_values"].to(device, dtype)
            codes.append(vq.encode(pixels).image_tokens.view(-1).cpu().tolist())
    sync(device)
    return Measured(time.perf_counter() - start, codes)


def run_ours(records: list[dict], model_dir: Path, media: MediaStore, encoder: VQEncoder, args) -> Measured:
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        policy = ErrorPolicy("fail", stage="bench")
        fresh = [{**r, "images": [dict(i) for i in r["images"]]} for r in records]
        sync(encoder.device)
        start = time.perf_counter()
        out = list(
            tokenize_images(
                fresh,
                model_dir=model_dir,
                media=media,
                policy=policy,
                batch_size=args.batch_size,
                workers=args.workers,
                cache_dir=cache,
                encoder=encoder,
                compile=args.compile,
            )
        )
        sync(encoder.device)
        seconds = time.perf_counter() - start
    return Measured(seconds, [r["images"][0]["tokens"] for r in out])


def batch_pixels(size: int, batch: int) -> torch.Tensor:
    """One uint8 [B, S, S, 3] batch of random pixels, the same for both encoders."""
    return torch.randint(
        0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def run_encoder_only(encoder: VQEncoder, pixels: torch.Tensor, steps: int) -> Measured:
    if encoder.device.type == "cuda":
        pixels = pixels.pin_memory()
    sync(encoder.device)
    start = time.perf_counter()
    for _ in range(steps):
        codes = encoder.encode_uint8(pixels)
    sync(encoder.device)
    return Measured(time.perf_counter() - start, codes.tolist())


def run_stock_encoder_only(
    vq, pixels: torch.Tensor, steps: int, device: torch.device, dtype: torch.dtype
) -> Measured:
    """transformers' `ChameleonVQVAE.encode` on ready float batches (REFERENCE.md 11's stock figure)."""
    floats = (pixels.permute(0, 3, 1, 2).float() / 127.5 - 1).to(device, dtype)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            codes = vq.encode(floats).image_tokens.view(floats.shape[0], -1).cpu()
    sync(device)
    return Measured(time.perf_counter() - start, codes.tolist())


def agreement(a: list, b: list) -> float:
    """Share of equal codes (the two paths round differently, so a few codes may differ)."""
    return float(np.mean([np.mean(np.array(x) == np.array(y)) for x, y in zip(a, b, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few images, one repeat after warm-up")
    parser.add_argument(
        "--full", action="store_true", help="full-size 512x512 Chameleon VQ-GAN (random weights)"
    )
    parser.add_argument("--images", type=int, default=None, help="number of JPEG files")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: CPUs, at most 8)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="fp32 or bf16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our encoder (GPU)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    device = resolve_device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.full:
        n = args.images or (2 if args.quick else (512 if device.type == "cuda" else 16))
        args.batch_size = args.batch_size or (2 if args.quick else (32 if device.type == "cuda" else 4))
    else:
        n = args.images or (12 if args.quick else 48)
        args.batch_size = args.batch_size or (4 if args.quick else 32)
    args.workers = min(8, os.cpu_count() or 1) if args.workers is None else args.workers
    repeats = args.repeats or (1 if args.quick else 3)

    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    with tempfile.TemporaryDirectory(prefix="bench-vision-") as tmp:
        root = Path(tmp)
        model_dir, vq = make_vq_dir(root / "model", FULL_VQ if args.full else TINY_VQ)
        spec = VQSpec.from_model_dir(model_dir)
        size = spec.resolution
        processor = ChameleonImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        naive_vq = vq.to(device, dtype).eval()
        encoder = VQEncoder.from_model_dir(
            model_dir, device=str(device), dtype=args.dtype, compile=args.compile
        )

        media = MediaStore(root / "media")
        jpeg_dir = root / "jpeg"
        jpeg_dir.mkdir()
        paths, records = [], []
        for i, data in enumerate(make_jpegs(n)):
            path = jpeg_dir / f"{i:05d}.jpg"
            path.write_bytes(data)
            paths.append(path)
            records.append({"id": f"b{i}", "kind": "figure", "caption": "", "images": [media.put(data)]})

        print(
            f"vision bench: {'full' if args.full else 'tiny'} VQ ({size}x{size} -> {spec.tokens_per_image} codes), "
            f"{device} {args.dtype}, {n} JPEG files, batch {args.batch_size}, {args.workers} workers, "
            f"compile {args.compile}, median of {repeats}",
            flush=True,
        )
        if device.type == "cuda":
            print(f"  GPU: {torch.cuda.get_device_name(device)}", flush=True)

        bench = Bench(
            f"vision{'-full' if args.full else ''}{'-' + device.type if device.type != 'cpu' else ''}",
            quick=args.quick,
            settings={
                "vq": "full" if args.full else "tiny",
                "images": n,
                "device": str(device),
                **vars(args),
            },
        )
        b = args.batch_size
        pixels = batch_pixels(size, b)
        steps = max(1, (n if args.quick else max(n, 4 * b)) // b)
        if device.type == "cuda" or args.compile:  # cuDNN autotuning, compilation, allocator warm-up
            warm = max(1, min(n, b))
            run_naive(paths[:warm], naive_vq, processor, device, dtype)
            run_ours(records[: min(n, 2 * b)], model_dir, media, encoder, args)
            run_encoder_only(encoder, pixels, 1)
            run_stock_encoder_only(naive_vq, pixels, 1, device, dtype)
        # Same output: the codes agree. Not every code: the stock processor scales by 0.0078, not
        # 1/127.5, its resize differs, bf16 rounds differently, and random VQ weights put many latents
        # near a tie; a broken path agrees on ~1/8192 of them.
        agreed: dict[str, float] = {}

        def same(key: str, floor: float):
            def check(a: list, b: list) -> bool:
                agreed[key] = agreement(a, b)
                print(f"  code agreement {key}: {agreed[key]:.3f}")
                return agreed[key] >= floor

            return check

        e2e = bench.compare(
            "JPEG -> codes (naive: stock processor + encode per image; ours: tokenize_images)",
            naive=lambda: run_naive(paths, naive_vq, processor, device, dtype),
            ours=lambda: run_ours(records, model_dir, media, encoder, args),
            repeats=repeats,
            work=n,
            unit="images",
            same=same("end_to_end", 0.5),
        )
        enc = bench.compare(
            f"encoder only, batch {b} (stock ChameleonVQVAE.encode vs ours)",
            naive=lambda: run_stock_encoder_only(naive_vq, pixels, steps, device, dtype),
            ours=lambda: run_encoder_only(encoder, pixels, steps),
            repeats=repeats,
            work=steps * b,
            unit="images",
            same=same("encoder_only", 0.9 if args.dtype == "fp32" else 0.5),
            names=("stock", "ours"),
        )
        share = e2e["sides"]["ours"]["rate_median"] / enc["sides"]["ours"]["rate_median"]
        bench.figure(
            "end_to_end_share_of_encoder", share, f"ours end-to-end / ours encoder-only: {100 * share:.0f}%"
        )
        bench.figure("code_agreement", agreed)
        bench.finish()


if __name__ == "__main__":
    main()
