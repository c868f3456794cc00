"""Attention masks and position ids for packed rows (several samples in one sequence).

A packed row holds samples back to back; each sample must see only itself (block-diagonal causal
attention) and its positions must restart at 0, otherwise the loss differs from training the
samples alone (REFERENCE.md 10). We describe a row by `document_ids` [B, T] (sample index within
the row, -1 for padding) and build the mask the chosen attention implementation wants:

- "flex_attention" (CUDA): a FlexAttention `BlockMask` with a document mask: sparse, only the
  diagonal blocks are computed, so packing costs nothing extra;
- "sdpa" (CPU, or CUDA without flex): an explicit [B, 1, T, T] boolean mask (True = attend);
- "eager": the same as an additive float mask (0 / dtype min), which eager attention adds.

transformers' Chameleon passes any 4D mask (tensor or BlockMask) through `create_causal_mask`
unchanged (masking_utils `_preprocess_mask_arguments`), so the model body sees exactly this mask.
Padding positions attend to themselves only, so no softmax row is empty (SDPA would give NaN).
"""

from __future__ import annotations

from typing import Any

import torch

IMPLEMENTATIONS = ("flex_attention", "sdpa", "eager")


def default_attn_implementation(device: torch.device | str) -> str:
    """FlexAttention on CUDA (sparse document mask); SDPA with an explicit mask elsewhere."""
    return "flex_attention" if torch.device(device).type == "cuda" else "sdpa"


def document_ids_from_boundaries(boundaries: list[int] | torch.Tensor, seq_len: int) -> torch.Tensor:
    """[T] sample index of each position from cumulative lengths [0, l1, l1+l2, ..., L]; -1 after L."""
    bounds = torch.as_tensor(boundaries, dtype=torch.long)
    doc = torch.full((seq_len,), -1, dtype=torch.long)
    for i in range(len(bounds) - 1):
        doc[bounds[i] : bounds[i + 1]] = i
    return doc


def position_ids_from_document_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] positions restarting at 0 at every new sample (padding continues counting)."""
    B, T = document_ids.shape
    idx = torch.arange(T, device=document_ids.device).expand(B, T)
    # start of the current run of equal document ids, carried forward with cummax
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    run_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - run_start


def dense_document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool: query q sees key k iff same sample and k <= q; padding sees itself."""
    T = document_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()  # [T, T]
    same = document_ids[:, :, None] == document_ids[:, None, :]  # [B, T, T]
    real = (document_ids >= 0)[:, :, None]  # [B, T, 1]
    diag = torch.eye(T, dtype=torch.bool, device=document_ids.device)
    mask = (same & causal & real) | diag  # [B, T, T]
    return mask[:, None]  # [B, 1, T, T]


def flex_document_mask(document_ids: torch.Tensor) -> Any:
    """A FlexAttention BlockMask with the same pattern as `dense_document_mask`."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = document_ids.shape
    docs = document_ids

    def mask_mod(b, h, q_idx, kv_idx):
        same = docs[b, q_idx] == docs[b, kv_idx]
        real = docs[b, q_idx] >= 0
        return (same & real & (kv_idx <= q_idx)) | (q_idx == kv_idx)

    return create_block_mask(mask_mod, B=B, H=None, Q_LEN=T, KV_LEN=T, device=document_ids.device)


def packed_attention_mask(document_ids: torch.Tensor, implementation: str, dtype: torch.dtype) -> Any:
    """The 4D mask (or BlockMask) `implementation` expects for rows described by `document_ids`."""
    if implementation == "flex_attention":
        return flex_document_mask(document_ids)
    mask = dense_document_mask(document_ids)
    if implementation == "sdpa":
        return mask
    if implementation == "eager":
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    raise ValueError(
        f"unknown attention implementation {implementation!r}; use one of {', '.join(IMPLEMENTATIONS)}"
    )
