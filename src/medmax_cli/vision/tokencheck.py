"""Can an image's `tokens` be used with this model: its codebook tag, its grid length, its codes?

The `vq` tag says which codebook made the tokens, but a list with the right tag can still be wrong:
cut short, padded, edited by hand or by a buggy tool. Such a list would train (or prompt) the model
on an image block of the wrong length, which no decoder can turn back into an image. One check,
used by tokenize-images (re-encode from the image, or reject), pack (reject) and
`generate --no-encode-images` (reject). numpy only, no torch: cheap to import from any stage.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmax_cli.records import RecordError


def checked_codes(
    image: Mapping[str, Any],
    *,
    vq: str | None,
    tokens_per_image: int | None,
    n_codes: int | None,
) -> tuple[np.ndarray | None, str | None]:
    """(codes as int64, None) when `image["tokens"]` can be used with this model, else (None, why).

    One conversion per image (a C-level `array` pass that refuses floats and strings) serves both the
    check and the caller, who needs the codes as an array anyway (pack's image blocks). A list or a
    1-D integer array is accepted (None limits: unchecked)."""
    tokens = image.get("tokens")
    if tokens is None:
        return None, "has no VQ tokens"
    if vq is not None and image.get("vq") != vq:
        return None, f"tokens come from VQ {image.get('vq')!r}, but the model's VQ is {vq!r}"
    if isinstance(tokens, np.ndarray) and tokens.ndim == 1 and tokens.dtype.kind in "iu":
        codes = tokens.astype(np.int64, copy=False)
    elif isinstance(tokens, list):
        try:
            codes = np.frombuffer(array("q", tokens), dtype=np.int64)  # ints only
        except (TypeError, OverflowError):
            return None, "tokens must be a list of integers"
    else:
        return None, f"tokens must be a list of integers, got {type(tokens).__name__}"
    if tokens_per_image is not None and len(codes) != tokens_per_image:
        return None, (
            f"has {len(codes)} tokens, but the model's VQ makes {tokens_per_image} per image "
            "(truncated or edited tokens)"
        )
    if len(codes):
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or (n_codes is not None and high >= n_codes):
            limit = f"[0, {n_codes})" if n_codes is not None else "[0, ...)"
            return None, f"tokens must be codes in {limit}, found {low}..{high}"
    return codes, None


def token_problem(
    image: Mapping[str, Any],
    *,
    vq: str | None,
    tokens_per_image: int | None,
    n_codes: int | None,
) -> str | None:
    """Why `image["tokens"]` cannot be used with this model (None: they can; None limits: unchecked)."""
    return checked_codes(image, vq=vq, tokens_per_image=tokens_per_image, n_codes=n_codes)[1]


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


def image_block_problem(ids: np.ndarray, vocab: Any, tokens_per_image: int | None) -> str | None:
    """Why the image blocks of a pre-tokenised sequence (token ids, already in the vocabulary's range)
    cannot be trained on, else None: the same rules as `images[].tokens` (a block's length is the VQ
    grid, nothing but image codes inside BOI ... EOI, every block closed), plus no image code outside
    a block (it would be read as an image nobody can decode)."""
    is_boi, is_eoi = ids == vocab.boi, ids == vocab.eoi
    starts, ends = np.flatnonzero(is_boi), np.flatnonzero(is_eoi)
    if len(starts) != len(ends) or np.any(ends < starts) or np.any(starts[1:] < ends[:-1]):
        return f"unbalanced image blocks ({len(starts)} BOI, {len(ends)} EOI): every block must be closed"
    inside = ((np.cumsum(is_boi) - np.cumsum(is_eoi)) == 1) & ~is_boi
    is_code = np.asarray(vocab.id_to_image_code)[ids] >= 0
    stray = np.flatnonzero(inside & ~is_code)
    if stray.size:
        block = int(np.searchsorted(starts, stray[0]) - 1)
        return f"image block {block} holds a non-image token {int(ids[stray[0]])} at position {int(stray[0])}"
    loose = np.flatnonzero(~inside & is_code)
    if loose.size:
        return f"an image code token ({int(ids[loose[0]])}) at position {int(loose[0])} is outside any BOI/EOI block"
    lengths = ends - starts - 1
    for block, length in enumerate(lengths.tolist()):
        if length == 0 or (tokens_per_image is not None and length != tokens_per_image):
            want = f"the model's VQ makes {tokens_per_image} per image" if tokens_per_image else "it is empty"
            return f"image block {block} holds {length} codes, but {want} (truncated or edited tokens)"
    return None


def model_tokens_per_image(model_dir: str | Path) -> int | None:
    """Codes per image of the model's VQ (from config.json), or None without a VQ config."""
    from medmax_cli.vision.spec import VQSpec

    try:
        return VQSpec.from_model_dir(model_dir).tokens_per_image
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
