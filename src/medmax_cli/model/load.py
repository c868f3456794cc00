"""Load a model directory (local Hugging Face format only) and fingerprint it.

A model directory holds config.json (with `vocabulary_map`), the weights (*.safetensors), the
tokenizer files and, for the tiny model, medmax_model.json. Nothing here reaches a hub:
`local_files_only=True` everywhere, and a path that is not a model directory is a clear error.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
MODEL_INFO_FILE = "medmax_model.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
)
FINGERPRINT_LENGTH = 16
ANOLE_DECODER_KEYS = r"^model\.vqmodel\.decoder\."


class ModelDirError(FileNotFoundError):
    """A path that does not hold a usable model directory."""


def check_model_dir(model_dir: str | Path, *, source: str | None = None) -> Path:
    """Return `model_dir` as a Path if it looks like a model directory, else raise ModelDirError.

    `source` says where the path came from (e.g. "--model", "$MEDMAX_MODEL") for the message.
    """
    path = Path(model_dir).expanduser()
    origin = f" (from {source})" if source else ""
    if not path.is_dir():
        raise ModelDirError(f"model directory {path}{origin} does not exist or is not a directory")
    if not (path / CONFIG_FILE).is_file():
        raise ModelDirError(
            f"{path}{origin} is not a model directory: it has no {CONFIG_FILE} "
            "(expected a Hugging Face Chameleon/Anole directory, or run `medmax init-model --tiny -o DIR`)"
        )
    return path


def _torch_dtype(dtype: Any):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    names |= {"float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def load_model(model_dir: str | Path, dtype: Any = "float32", device: Any = "cpu", **kwargs: Any):
    """`ChameleonForConditionalGeneration` from a local directory, in eval mode on `device`.

    `dtype` is a torch dtype or a name ("float32", "bfloat16", "float16"); extra keyword
    arguments (e.g. `attn_implementation="sdpa"`) go to `from_pretrained`.
    """
    from transformers import ChameleonForConditionalGeneration

    path = check_model_dir(model_dir)
    # Anole's HF conversion keeps the VQ decoder (`model.vqmodel.decoder.*`, read by
    # vision/decoder.py) beside the model: transformers would list each of its ~150 tensors as
    # UNEXPECTED in a load report on stderr at every load. Those keys, and only those, are expected.
    cls = ChameleonForConditionalGeneration
    before = cls._keys_to_ignore_on_load_unexpected
    cls._keys_to_ignore_on_load_unexpected = [*(before or []), ANOLE_DECODER_KEYS]
    try:
        model = cls.from_pretrained(path, dtype=_torch_dtype(dtype), local_files_only=True, **kwargs)
    finally:
        cls._keys_to_ignore_on_load_unexpected = before
    return model.to(device).eval()


def load_tokenizer(model_dir: str | Path):
    """The text tokenizer of a local model directory (`AutoTokenizer`, fast)."""
    from transformers import AutoTokenizer

    path = check_model_dir(model_dir)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelDirError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _hash_files(h: Any, path: Path, names: tuple[str, ...] | list[str]) -> None:
    for name in names:
        f = path / name
        if f.is_file():
            data = f.read_bytes()
            h.update(f"{name}\0{len(data)}\0".encode())
            h.update(data)


def _safetensors_header(f: Path) -> bytes:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets), not the values."""
    with f.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return fh.read(n)


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """Short sha256 over the tokenizer files: equal fingerprints tokenize text identically."""
    path = check_model_dir(model_dir)
    h = hashlib.sha256(b"medmax-tokenizer-v1\0")
    _hash_files(h, path, TOKENIZER_FILES)
    return h.hexdigest()[:FINGERPRINT_LENGTH]


def model_fingerprint(model_dir: str | Path, *, weights: bool = False) -> str:
    """Short sha256 over config.json, the tokenizer files and medmax_model.json (which holds the
    tiny model's seed), plus the safetensors headers (names, shapes, dtypes).

    Weight values are hashed only with `weights=True` (reads every byte: slow for 7B weights);
    without it two directories with the same files except the weight values share a fingerprint.
    """
    path = check_model_dir(model_dir)
    h = hashlib.sha256(b"medmax-model-v1\0")
    _hash_files(h, path, [CONFIG_FILE, MODEL_INFO_FILE, *TOKENIZER_FILES])
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}\0".encode())
        if weights:
            with f.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 24), b""):
                    h.update(block)
        else:
            h.update(_safetensors_header(f))
    return h.hexdigest()[:FINGERPRINT_LENGTH]


def model_is_random(model_dir: str | Path) -> bool:
    """True for a model medmax built with random weights (the tiny demo model, `init-model`).

    Such a directory carries medmax_model.json (written by the builder, last); a builder that
    ever writes trained weights says so with `"random_weights": false` in it. Hugging Face
    conversions of real checkpoints (Anole-7b) have no such file. A model merged from an adapter
    over a random base keeps the file (copy_model_extras), and is still random at heart.
    """
    f = Path(model_dir).expanduser() / MODEL_INFO_FILE
    if not f.is_file():
        return False
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # a medmax-built directory whose marker is unreadable: assume the worst
    return not (isinstance(info, dict) and info.get("random_weights") is False)


def model_info(model_dir: str | Path) -> dict[str, Any]:
    """medmax_model.json of a directory (tiny models), or {} for other models."""
    f = check_model_dir(model_dir) / MODEL_INFO_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
