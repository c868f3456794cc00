"""Greedy / temperature + top-p sampling with counter-based noise.

The random numbers are a hash of (row seed, step, token index) computed with integer ops on the
device, not draws from a stateful generator. So a row's sample does not depend on which other
rows share its batch (batched output equals one-by-one output), the same seed gives the same
output on every run, and sampling needs no host synchronisation. A categorical draw is then
`argmax(p / E)` with E ~ Exp(1) (the exponential race, as in gpt-fast).
"""

from __future__ import annotations

import hashlib

import torch

_M32 = 0xFFFFFFFF


def row_seed(seed: int, key: str) -> int:
    """A 31-bit seed for one record, from the run seed and the record's id."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2^32 for h < 2^32 without int64 overflow (split c into 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (h * lo + (((h * hi) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser (a bijection on 32-bit values) on int64 tensors."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, n: int) -> torch.Tensor:
    """Uniform (0, 1) floats [B, n], a pure function of (seeds[b], steps[b], index)."""
    key = _fmix32((seeds.long() & _M32) ^ _fmix32((steps.long() * 0x9E3779B1 + 0x7F4A7C15) & _M32))  # [B]
    idx = torch.arange(n, device=seeds.device, dtype=torch.long)
    h = _fmix32(_fmix32(key[:, None] ^ idx[None, :]) ^ (key[:, None] >> 7))  # [B, n]
    return unit_interval(h)


def unit_interval(h: torch.Tensor) -> torch.Tensor:
    """32-bit hashes -> float32 strictly inside (0, 1).

    23 bits + 0.5 over 2^23 is exact in float32 and at most 1 - 2^-24 (24 bits + 0.5 would round
    up to exactly 1.0 for the top hashes, giving an Exp(1) draw of 0, hence inf or NaN in the race
    and a token drawn whatever its probability, even a masked one).
    """
    return ((h >> 9).float() + 0.5) / float(1 << 23)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row as Hugging Face's `TopPLogitsWarper` (which Anole uses) does: sort
    ascending, drop every token whose cumulative mass from the bottom is <= 1 - top_p, always keep
    the most likely token. Equal to "keep a token while the mass above it is < top_p"."""
    sorted_p, order = probs.sort(dim=-1, descending=False)
    drop = sorted_p.cumsum(dim=-1) <= (1 - top_p)
    drop[..., -1:] = False
    return probs.masked_fill(drop.scatter(-1, order, drop), 0.0)


def distribution(logits: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """The probabilities [B, V] a sampled step draws from: softmax(logits / T), top-p filtered
    (not renormalised: the draw does not need it). Temperature <= 0 (greedy) is not a distribution."""
    probs = torch.softmax(logits / temperature, dim=-1)
    return top_p_filter(probs, top_p)  # also at top_p 1: drops only zero-mass tokens, as HF does


def sample(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    seeds: torch.Tensor,
    steps: torch.Tensor,
) -> torch.Tensor:
    """Next index per row [B] from float logits [B, V]; temperature <= 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = distribution(logits, temperature=temperature, top_p=top_p)
    race = -torch.log(uniform_noise(seeds, steps, logits.shape[-1]))  # Exp(1) [B, V]
    return (probs / race).argmax(dim=-1)
