"""The project's own LM head and loss: hidden states -> lm_head -> chunked cross-entropy.

Why not the stock `ChameleonForConditionalGeneration.forward`: it sets every image-token logit to
the dtype minimum, so an image-token label gets an infinite loss (REFERENCE.md 4). Here image
tokens are ordinary targets. And a [T x 65,536] fp32 logit matrix is 1 GiB at T = 4096, so the
head runs over chunks of supervised positions only; each chunk's logits are recomputed in the
backward pass (activation checkpointing) instead of being kept, so at most one chunk of logits
exists at any time.

Convention: `labels` are aligned with `input_ids` (labels[t] = input_ids[t] where supervised,
-100 elsewhere); position t predicts labels[t + 1]. With `document_ids`, a position never
predicts the first token of the next packed sample. The loss is returned as a SUM with the number
of supervised tokens, so callers normalise over whatever batch they mean (global batch in training).

Per-sample weighting (MedMax's objective, `per_sample=True`): each supervised token is weighted by
1 / (supervised tokens of its sample), so the weighted sum over a packed row is the sum of its
samples' MEAN losses; divided by the number of samples of the optimizer step, every sample weighs
the same whatever its length, as when MedMax trains one sample per GPU (REFERENCE.md 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
DEFAULT_CHUNK = 1024


def shift_targets(labels: torch.Tensor, document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] targets for each position (labels shifted left by one; -100 at the end and at sample seams)."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if document_ids is not None:
        seam = document_ids[:, 1:] != document_ids[:, :-1]  # [B, T-1]: next token starts another sample
        targets[:, :-1] = targets[:, :-1].masked_fill(seam, IGNORE_INDEX)
    return targets


Head = torch.Tensor | torch.nn.Module


def sample_weights(targets: torch.Tensor, document_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-position weights 1 / (supervised targets of that position's sample), 0 where unsupervised.

    targets [B, T] (from `shift_targets`), document_ids [B, T] (-1 = padding). Returns (weights fp32
    [B, T], number of samples with at least one supervised target): a row's weighted loss sum is then
    the sum of its samples' mean losses. A sample that lost every label (truncation) counts as none.
    """
    supervised = targets != IGNORE_INDEX  # [B, T]
    width = int(document_ids.max().item()) + 1 if document_ids.numel() else 1
    width = max(width, 1)
    row = torch.arange(targets.shape[0], device=targets.device)[:, None]  # [B, 1]
    key = (row * width + document_ids.clamp(min=0)).masked_fill(~supervised, 0)  # [B, T] sample slot
    counts = torch.bincount(key[supervised], minlength=targets.shape[0] * width)  # [B * width]
    weights = torch.where(supervised, 1.0 / counts[key].clamp(min=1).float(), 0.0)  # [B, T]
    return weights, int((counts > 0).sum().item())


def _chunk_loss_sum(
    hidden: torch.Tensor, head: Head, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    # a module head (lm_head, possibly with a LoRA adapter or FSDP hooks) or a bare [V, H] weight
    logits = head(hidden) if isinstance(head, torch.nn.Module) else hidden @ head.t()
    if weights is None:
        return F.cross_entropy(logits.float(), targets, reduction="sum")  # [n, V] fp32, this chunk only
    return (F.cross_entropy(logits.float(), targets, reduction="none") * weights).sum()  # [n] weighted


def chunked_cross_entropy(
    hidden: torch.Tensor,
    head: Head,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token cross-entropies of `head(hidden)` against `targets`, chunk by chunk.

    hidden [..., H], targets [...] (-100 = ignored), head: the lm_head module or its [V, H] weight,
    weights [...] (optional per-position factors, e.g. from `sample_weights`). Returns (loss_sum fp32
    scalar, weighted when `weights` is given; number of supervised tokens). chunk_size <= 0: all at once.
    """
    h = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    t = targets.reshape(-1)  # [N]
    keep = (t != IGNORE_INDEX).nonzero().squeeze(1)  # [S]
    h, t = h.index_select(0, keep), t.index_select(0, keep)  # [S, H], [S]: no logits for unsupervised rows
    w = None if weights is None else weights.reshape(-1).index_select(0, keep).float()  # [S]
    n = torch.tensor(t.numel(), device=hidden.device)
    if t.numel() == 0:
        return hidden.sum() * 0.0, n  # keeps the graph connected (DDP needs every parameter used)
    if chunk_size <= 0 or t.numel() <= chunk_size:
        return _chunk_loss_sum(h, head, t, w), n
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, t.numel(), chunk_size):
        sl = slice(start, start + chunk_size)
        # recomputed in backward: the chunk's [chunk, V] logits are freed right after its loss
        total = total + checkpoint(
            _chunk_loss_sum, h[sl], head, t[sl], None if w is None else w[sl], use_reentrant=False
        )
    return total, n


def lm_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
    attention_mask: object | None = None,
    document_ids: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    per_sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_sum, n_supervised) of a `ChameleonForConditionalGeneration` (or a peft wrapper of one).

    Runs the body (`model.model`), then the head in chunks; image-token labels are ordinary targets.
    `per_sample`: loss_sum is the sum of each sample's MEAN token loss instead (see `sample_weights`;
    samples are told apart by `document_ids`, one sample per row without them).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = base.model(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
    )
    hidden = out.last_hidden_state  # [B, T, H]
    targets = shift_targets(labels, document_ids)
    weights = None
    if per_sample:
        docs = document_ids if document_ids is not None else torch.zeros_like(labels)
        weights, _ = sample_weights(targets, docs)
    return chunked_cross_entropy(hidden, base.lm_head, targets, chunk_size, weights)


def stock_loss_sum(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The stock path for comparison: transformers' forward (image logits masked), summed loss."""
    logits = model(input_ids=input_ids, use_cache=False).logits.float()  # [B, T, V]
    targets = shift_targets(labels)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
