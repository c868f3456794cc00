"""Can an image's `tokens` be used with this model: its codebook tag, its grid length, its codes?

The `vq` tag says which codebook made the tokens, but a list with the right tag can still be wrong:
cut short, padded, edited by hand or by a buggy tool. Such a list would train (or prompt) the model
on an image block of the wrong length, which no decoder can turn back into an image. One check,
used by tokenize-images (re-encode from the image, or reject), pack (reject) and
`generate --no-encode-images` (reject). No torch here: cheap to import from any stage.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medmax_cli.records import RecordError


def token_problem(
    image: Mapping[str, Any],
    *,
    vq: str | None,
    tokens_per_image: int | None,
    n_codes: int | None,
) -> str | None:
    """Why `image["tokens"]` cannot be used with this model (None: they can; None limits: unchecked)."""
    tokens = image.get("tokens")
    if tokens is None:
        return "has no VQ tokens"
    if vq is not None and image.get("vq") != vq:
        return f"tokens come from VQ {image.get('vq')!r}, but the model's VQ is {vq!r}"
    if not isinstance(tokens, list):
        return f"tokens must be a list of integers, got {type(tokens).__name__}"
    if tokens_per_image is not None and len(tokens) != tokens_per_image:
        return (
            f"has {len(tokens)} tokens, but the model's VQ makes {tokens_per_image} per image "
            "(truncated or edited tokens)"
        )
    if tokens:
        try:
            codes = array("q", tokens)  # ints only: floats and strings raise TypeError
        except (TypeError, OverflowError):
            return "tokens must be a list of integers"
        low, high = min(codes), max(codes)
        if low < 0 or (n_codes is not None and high >= n_codes):
            limit = f"[0, {n_codes})" if n_codes is not None else "[0, ...)"
            return f"tokens must be codes in {limit}, found {low}..{high}"
    return None


def check_image_tokens(
    record: Mapping[str, Any],
    *,
    vq: str | None,
    tokens_per_image: int | None,
    n_codes: int | None,
    which: Callable[[int], bool] | None = None,
) -> None:
    """Raise RecordError naming the first image (of those `which` selects) whose tokens do not fit;
    images without tokens are left to the caller."""
    for index, image in enumerate(record.get("images") or []):
        if not isinstance(image, Mapping) or image.get("tokens") is None:
            continue
        if which is not None and not which(index):
            continue
        problem = token_problem(image, vq=vq, tokens_per_image=tokens_per_image, n_codes=n_codes)
        if problem:
            raise RecordError(f"images[{index}] {problem}", record_id=record.get("id"))


def model_tokens_per_image(model_dir: str | Path) -> int | None:
    """Codes per image of the model's VQ (from config.json), or None without a VQ config."""
    from medmax_cli.vision.spec import VQSpec

    try:
        return VQSpec.from_model_dir(model_dir).tokens_per_image
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
