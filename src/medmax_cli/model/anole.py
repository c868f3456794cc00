"""A random model with Anole-7B's exact configuration and on-disk layout (any number of layers).

`build_anole_shape_model(out, layers=2)` writes what the Hugging Face conversion of Anole-7B
(`leloy/Anole-7b-v0.1-hf`, same config as `facebook/chameleon-7b`) looks like, so every loader
takes the path real weights take:

- config.json: `ChameleonConfig` with the 7B widths (hidden 4096, 32 heads, 32 KV heads,
  intermediate 11008, RMSNorm eps 1e-5, qk layer norm, no swin norm, rope theta 10000, 4,096
  positions, untied head, vocabulary 65,536 with its `vocabulary_map`) and the real VQ-GAN at 512 px
  (embed_dim 256, 8,192 codes, base 128, multipliers [1,1,2,2,4], 2 residual blocks => 32x32 = 1,024
  codes an image); only `num_hidden_layers` differs;
- sharded bf16 safetensors (`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`,
  never fewer than two shards) holding the language model, the VQ encoder and, as in the Anole
  conversion, the VQ decoder under `model.vqmodel.decoder.*`;
- tokenizer.json / tokenizer_config.json / special_tokens_map.json in the real id layout (the text
  BPE is trained on the bundled sample, as for the tiny model: Meta's BPE is not redistributable);
- preprocessor_config.json / processor_config.json (ChameleonProcessor, 512 px, 1,024 tokens) and
  generation_config.json;
- medmax_model.json saying the weights are random.

Weights are generated tensor by tensor straight into the shard files (normal(0, 0.02) for
matrices, 1 for norm weights, 0 for biases; each 4M-value chunk seeded from `seed`, the tensor
name and the chunk index, drawn on every core), so the peak memory is a few chunks, not the model:
a 32-layer build needs well under 1 GB of RAM.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medmax_cli.model.tiny import (
    _BUILTIN_CORPUS,
    FIRST_TEXT_ID,
    _write_tokenizer,
    chameleon_tokenizer_json,
    default_sample_dir,
    sample_corpus_text,
    train_text_tokenizer,
)
from medmax_cli.vision.spec import DEFAULTS as VQ_DEFAULTS

log = logging.getLogger(__name__)

SHAPES = ("anole-7b",)
FORMAT = "medmax-random-anole"
FORMAT_VERSION = 1
INDEX_FILE = "model.safetensors.index.json"
INIT_STD = 0.02
MAX_SHARD_BYTES = 5_000_000_000  # what the 7B conversions use ("5GB"): 3 shards at 32 layers
CHUNK_ELEMENTS = 1 << 22  # random values are generated 4M at a time (16 MB of fp32)

# transformers' ChameleonConfig for facebook/chameleon-7b and its Anole conversion, minus the
# vocabulary_map (built from the tokenizer) and num_hidden_layers (32 there).
ANOLE_7B_TEXT: dict[str, Any] = {
    "vocab_size": 65536,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-05,
    "use_cache": True,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "model_parallel_size": 1,
    "swin_norm": False,
    "mlp_bias": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}
ANOLE_7B_LAYERS = 32
# The real VQ-GAN is transformers' ChameleonVQVAEConfig default (the one table, in vision/spec.py).
ANOLE_7B_VQ: dict[str, Any] = copy.deepcopy(VQ_DEFAULTS)
IMAGE_SIZE = 512
TOKENS_PER_IMAGE = (IMAGE_SIZE // 2 ** (len(ANOLE_7B_VQ["channel_multiplier"]) - 1)) ** 2  # 1,024

# ChameleonProcessor / ChameleonImageProcessor files as the 7B conversion ships them.
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [1.0, 1.0, 1.0],
    "image_processor_type": "ChameleonImageProcessor",
    "image_std": [1.0, 1.0, 1.0],
    "processor_class": "ChameleonProcessor",
    "resample": 1,  # PIL LANCZOS
    "rescale_factor": 0.0078,
    "size": {"shortest_edge": IMAGE_SIZE},
}
PROCESSOR_CONFIG: dict[str, Any] = {
    "image_seq_length": TOKENS_PER_IMAGE,
    "image_token": "<image>",
    "processor_class": "ChameleonProcessor",
}


def anole_config(layers: int, vocabulary_map: dict[str, int], text_overrides: dict[str, Any] | None = None):
    """`ChameleonConfig` of Anole-7B with `layers` decoder layers, stored as bf16.

    `text_overrides` replaces language-model widths (tests build a narrow variant that keeps the
    real vocabulary, VQ-GAN and layout); the real shape has none."""
    from transformers import ChameleonConfig

    if layers < 1:
        raise ValueError(f"--layers must be at least 1, got {layers}")
    config = ChameleonConfig(
        num_hidden_layers=layers,
        vocabulary_map=dict(vocabulary_map),
        vq_config=dict(ANOLE_7B_VQ),
        **{**ANOLE_7B_TEXT, **(text_overrides or {})},
    )
    config.architectures = ["ChameleonForConditionalGeneration"]
    config.dtype = "bfloat16"
    return config


def weight_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor the checkpoint holds (name -> shape), without allocating any of them.

    The language model and VQ encoder come from transformers' own module on the meta device (so
    names follow the installed transformers); the decoder from ours under `model.vqmodel.`.
    """
    import torch
    from transformers import ChameleonForConditionalGeneration

    from medmax_cli.vision.decoder import VQDecoder
    from medmax_cli.vision.spec import VQSpec

    with torch.device("meta"):
        model = ChameleonForConditionalGeneration(config)
        decoder = VQDecoder(VQSpec.from_dict(config.vq_config.to_dict()))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, t in decoder.state_dict().items():
        if name.startswith("decoder."):
            shapes[f"model.vqmodel.{name}"] = tuple(t.shape)
    return shapes


def _kind(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return "zeros"
    if "norm" in name.rsplit(".", 2)[-2] and leaf == "weight":
        return "ones"
    return "normal"


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "little") >> 1


def _chunk_bytes(name: str, kind: str, seed: int, index: int, size: int) -> bytes:
    import torch

    if kind == "normal":
        gen = torch.Generator().manual_seed(_seed(seed, f"{name}\0{index}"))
        chunk = torch.randn(size, generator=gen, dtype=torch.float32).mul_(INIT_STD)
    else:
        chunk = torch.full((size,), 1.0 if kind == "ones" else 0.0)
    return chunk.to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def tensor_bytes(name: str, shape: tuple[int, ...], seed: int, pool: Any = None) -> Iterator[bytes]:
    """The bf16 little-endian bytes of one tensor, in chunks (normal / ones / zeros by its name).

    Each chunk has its own seed (seed, name, chunk index), so the bytes do not depend on how many
    threads of `pool` (a ThreadPoolExecutor; torch releases the GIL) made them: at 32 layers one
    core draws ~60M values/s, about two minutes for 7B, and a 16-core GPU host does it in seconds.
    """
    n = math.prod(shape)
    kind = _kind(name)
    jobs = [
        (start // CHUNK_ELEMENTS, min(CHUNK_ELEMENTS, n - start)) for start in range(0, n, CHUNK_ELEMENTS)
    ]
    if pool is None:
        for index, size in jobs:
            yield _chunk_bytes(name, kind, seed, index, size)
        return
    window = 2 * getattr(pool, "_max_workers", 4)  # chunks in flight: bounded memory
    pending: list[Any] = []
    for index, size in jobs:
        pending.append(pool.submit(_chunk_bytes, name, kind, seed, index, size))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


def plan_shards(shapes: dict[str, tuple[int, ...]], max_bytes: int = MAX_SHARD_BYTES) -> list[list[str]]:
    """Tensor names per shard in checkpoint order, each shard at most `max_bytes` (one tensor may
    exceed it alone); split in two at least, so the sharded path is always the one exercised."""
    sizes = {k: 2 * math.prod(s) for k, s in shapes.items()}
    limit = min(max_bytes, math.ceil(sum(sizes.values()) / 2))
    shards: list[list[str]] = [[]]
    used = 0
    for name in shapes:
        if shards[-1] and used + sizes[name] > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += sizes[name]
    return shards


def write_safetensors_stream(
    path: Path, names: list[str], shapes: dict[str, tuple[int, ...]], seed: int, pool: Any = None
) -> int:
    """Write one bf16 safetensors file, tensor by tensor; returns its data size in bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(names):
        size = 2 * math.prod(shapes[name])
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name in sorted(names):
            for chunk in tensor_bytes(name, shapes[name], seed, pool):
                fh.write(chunk)
    os.replace(tmp, path)
    return offset


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_anole_shape_model(
    out_dir: str | Path,
    *,
    layers: int = 2,
    seed: int = 0,
    sample_dir: str | Path | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    text_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write the random Anole-7B-shaped model with `layers` decoder layers to `out_dir`."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = Path(sample_dir) if sample_dir is not None else default_sample_dir()
    if sample is not None:
        texts, corpus_name = sample_corpus_text(sample), "examples/sample"
    else:
        texts, corpus_name = [_BUILTIN_CORPUS], "builtin"
    tokenizer_json, names = chameleon_tokenizer_json(train_text_tokenizer(texts))
    _write_tokenizer(out, tokenizer_json)

    config = anole_config(layers, {name: i for i, name in enumerate(names)}, text_overrides)
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    _write_json(out / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    _write_json(out / "processor_config.json", PROCESSOR_CONFIG)

    shapes = weight_shapes(config)
    shards = plan_shards(shapes, max_shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(os.sched_getaffinity(0))))) as pool:
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            total += write_safetensors_stream(out / fname, shard, shapes, seed, pool)
            weight_map.update({name: fname for name in shard})
            log.debug("wrote %s (%d tensors)", fname, len(shard))
    _write_json(
        out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    )

    n_text = sum(1 for n in names[FIRST_TEXT_ID:] if not n.startswith("<reserved"))
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shape": "anole-7b" if not text_overrides else "anole-7b (narrowed for tests)",
        "layers": layers,
        "random_weights": True,
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "tokens_per_image": TOKENS_PER_IMAGE,
        "n_text_tokens": n_text,
        "tokenizer_corpus": corpus_name,
        "tokenizer_corpus_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
    }
    _write_json(out / "medmax_model.json", info)  # written last: marks a finished build
    return out


def build_anole_shape_model_atomic(target: str | Path, **kwargs: Any) -> Path:
    """`build_anole_shape_model` into a temporary sibling, renamed into place when complete, so a
    reader (or an interrupted build) never leaves a half-written model directory behind."""
    import shutil
    import tempfile

    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build_anole_shape_model(tmp, **kwargs)
        mask = os.umask(0o022)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)
        for p in tmp.iterdir():
            p.chmod(0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
