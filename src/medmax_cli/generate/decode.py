"""The decode engine: a Chameleon forward over a preallocated KV cache, and the text loop.

Why not `model.generate`: the stock forward sets every image-token logit to the dtype minimum
(REFERENCE.md 4), so images cannot be sampled through it, and its per-step Python (mask building,
cache bookkeeping, logits processors over the vocabulary) dominates decode time at batch 1.

`Runner` re-uses the model's own submodules (embeddings, projections, norms, rotary embedding,
MLPs), so the numbers are the model's and an unmerged PEFT adapter still applies (its LoRA layers
replace the projections in place). What it owns is the cache and the attention call:

- the cache is one `[B, H_kv, L, D]` key and value tensor per layer, allocated once for the
  longest prompt plus the token budget; slot `j` of a row holds the `j`-th column of the
  left-padded batch, and `valid[B, L]` says which slots hold a real (non-pad) token;
- prompts are left-padded; position ids count real tokens only, so a padded row computes exactly
  what it would alone;
- a decode step writes slot `s` with `index_copy_` and attends to the slots marked valid; in the
  static form (`--compile`) it attends over all `L` slots so that every step has the same shapes
  and can be captured once as a CUDA graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medmax_cli.generate.processors import TextMasks, text_logits
from medmax_cli.generate.sampling import sample

log = logging.getLogger(__name__)

GRAPH_LENGTH_STEP = 256  # captured steps attend over the whole cache: keep it near the real length
GRAPH_POOL = 2  # caches (with their captured step) kept for reuse by later batches of the same shape


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass
class KVCache:
    """Preallocated keys/values per layer and the slot-validity mask."""

    keys: list[torch.Tensor]  # per layer [B, H_kv, L, D]
    values: list[torch.Tensor]  # per layer [B, H_kv, L, D]
    valid: torch.Tensor  # bool [B, L]: slot holds a real token (pad slots stay False)
    graph: Any = None  # (CUDAGraph, static buffers) of the captured step, with --compile

    @property
    def length(self) -> int:
        return self.valid.shape[1]


def unwrap_model(model: Any) -> Any:
    """The `ChameleonForConditionalGeneration` inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class Runner:
    """Forward passes of one Chameleon model over a `KVCache` (no grad, eval mode)."""

    def __init__(self, model: Any, *, compile: bool = False, fuse: bool = False):
        base = unwrap_model(model)
        self.model = base
        self.core = base.model  # ChameleonModel
        self.config = base.config
        self.swin = bool(getattr(self.config, "swin_norm", False))
        attn = self.core.layers[0].self_attn
        self.n_heads, self.n_kv, self.head_dim = attn.num_heads, attn.num_key_value_heads, attn.head_dim
        self.scaling = attn.scaling
        self.head_weight = base.lm_head.weight  # [V, H] (the base weight under an unmerged LoRA)
        self.plain_head = type(base.lm_head) is torch.nn.Linear
        self.device = self.head_weight.device
        self.dtype = self.head_weight.dtype
        self._code_weight: torch.Tensor | None = None
        self._code_ids: torch.Tensor | None = None
        # --compile: the shape-static one-token step is captured as one CUDA graph per cache (replayed
        # every step: no per-kernel launch or Python cost); `fuse` also runs it through torch.compile
        # (inductor kernels, captured the same way).
        self.graphs = bool(compile) and self.device.type == "cuda"
        if compile and not self.graphs:
            log.warning("--compile needs CUDA; using the eager decode step on %s", self.device)
        self._static_fn = self._step_static
        # (batch, length) -> (cache, weakref to the last KVCache handed out over its buffers): a later
        # batch of the same shape reuses the buffers and so the captured graph (no re-capture, no
        # re-compile); most recently used last, at most GRAPH_POOL of them.
        self._pool: dict[tuple[int, int], tuple[KVCache, Any]] = {}
        self.captures = 0
        if self.graphs and fuse:
            self._static_fn = torch.compile(self._step_static, dynamic=False, fullgraph=False)

    # ------------------------------------------------------------------ cache

    def new_cache(self, batch: int, length: int) -> KVCache:
        if self.graphs:  # a few distinct lengths, so inductor (--compile) specialises a few times only
            length = -(-length // GRAPH_LENGTH_STEP) * GRAPH_LENGTH_STEP
            return self._pooled_cache(batch, length)
        return self._alloc_cache(batch, length)

    def _pooled_cache(self, batch: int, length: int) -> KVCache:
        """A cache of this shape whose earlier user is gone, cleared, with its captured step; else a
        new one (kept for later batches, the least recently used one dropped beyond GRAPH_POOL)."""
        import weakref

        key = (batch, length)
        entry = self._pool.pop(key, None)
        if entry is not None and entry[1]() is None:  # nobody holds the last cache over these buffers
            held = entry[0]
            for tensor in (*held.keys, *held.values, held.valid):
                tensor.zero_()  # as new: the same results as a fresh cache, bit for bit
            cache = KVCache(held.keys, held.values, held.valid, graph=held.graph)
        else:  # none, or still in use (its holder keeps it): a new one takes its place in the pool
            while len(self._pool) >= GRAPH_POOL:
                self._pool.pop(next(iter(self._pool)))
            cache = self._alloc_cache(batch, length)
            held = KVCache(cache.keys, cache.values, cache.valid)
        self._pool[key] = (held, weakref.ref(cache))
        cache.pool_entry = held  # type: ignore[attr-defined]  # _graph_step records the capture here
        return cache

    def _alloc_cache(self, batch: int, length: int) -> KVCache:
        shape = (batch, self.n_kv, length, self.head_dim)
        n = len(self.core.layers)
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        valid = torch.zeros(batch, length, dtype=torch.bool, device=self.device)
        return KVCache(keys, values, valid)

    # ------------------------------------------------------------------ heads

    def logits(self, hidden: torch.Tensor, code_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, H] hidden -> [B, V] float32 logits WITHOUT the stock image-token mask; with `code_ids`
        [K] only the image-code columns [B, K] (an image step multiplies by 8,192 head rows, not 65,536).

        An unmerged adapter on lm_head (finetune can target it) is honoured by calling the module.
        """
        if not self.plain_head:
            out = self.model.lm_head(hidden)
            return (out if code_ids is None else out.index_select(-1, code_ids)).float()
        if code_ids is None:
            return F.linear(hidden, self.head_weight).float()
        if self._code_weight is None or self._code_ids is None or not torch.equal(self._code_ids, code_ids):
            self._code_ids = code_ids
            self._code_weight = self.head_weight.index_select(0, code_ids).contiguous()  # [K, H]
        return F.linear(hidden, self._code_weight).float()

    # ------------------------------------------------------------------ forward

    def _forward(
        self,
        ids: torch.Tensor,  # [B, T]
        pos: torch.Tensor,  # [B, T] position ids
        cache: KVCache,
        slots: torch.Tensor,  # [T] cache slots written by these tokens
        mask: torch.Tensor,  # bool [B, 1, T, S]: query t may attend to slot s
        kv_len: int,  # attend over slots [0, kv_len)
    ) -> torch.Tensor:
        core = self.core
        b, t = ids.shape
        h = core.embed_tokens(ids)  # [B, T, H]
        cos, sin = core.rotary_emb(h, pos)  # [B, T, D] each
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for i, layer in enumerate(core.layers):
            a = layer.self_attn
            x = h if self.swin else layer.input_layernorm(h)
            q = a.q_norm(a.q_proj(x).reshape(-1, self.n_heads, self.head_dim))
            k = a.k_norm(a.k_proj(x).reshape(-1, self.n_kv, self.head_dim))
            v = a.v_proj(x)
            q = q.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, T, D]
            k = k.reshape(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
            v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            cache.keys[i].index_copy_(2, slots, k.to(self.dtype))
            cache.values[i].index_copy_(2, slots, v.to(self.dtype))
            keys = cache.keys[i][:, :, :kv_len]
            vals = cache.values[i][:, :, :kv_len]
            o = F.scaled_dot_product_attention(
                q, keys, vals, attn_mask=mask, scale=self.scaling, enable_gqa=self.n_kv != self.n_heads
            )  # [B, Hq, T, D]
            o = a.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            if self.swin:
                h = h + layer.input_layernorm(o)
                h = h + layer.post_attention_layernorm(layer.mlp(h))
            else:
                h = h + o
                h = h + layer.mlp(layer.post_attention_layernorm(h))
        return core.norm(h)  # [B, T, H]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, attention: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run the left-padded prompts [B, P] into slots 0..P-1; returns the last hidden state [B, H]."""
        b, p = ids.shape
        pos = (attention.long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
        slots = torch.arange(p, device=ids.device)
        cache.valid[:, :p] = attention.bool()
        causal = slots[None, :] <= slots[:, None]  # [P(q), P(k)]
        # A pad query attends to itself only, so no row of the mask is empty (no NaN).
        mask = (causal[None] & cache.valid[:, None, :p]) | torch.eye(p, dtype=torch.bool, device=ids.device)
        hidden = self._forward(ids, pos, cache, slots, mask[:, None], p)
        return hidden[:, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, pos: torch.Tensor, slot: int, cache: KVCache) -> torch.Tensor:
        """One token per row [B] at position `pos` [B] into cache slot `slot`; returns hidden [B, H]."""
        if self.graphs:
            return self._graph_step(tokens, pos, slot, cache)
        cache.valid[:, slot] = True
        slots = torch.full((1,), slot, dtype=torch.long, device=tokens.device)
        mask = cache.valid[:, None, None, : slot + 1]  # [B, 1, 1, slot+1]
        return self._forward(tokens[:, None], pos[:, None], cache, slots, mask, slot + 1)[:, 0]

    def _graph_step(self, tokens: torch.Tensor, pos: torch.Tensor, slot: int, cache: KVCache) -> torch.Tensor:
        """Replay the cache's captured step (captured on first use, after one real warm-up step).

        The warm-up executes the very step being asked for, so capturing it changes nothing:
        replays with the same inputs write the same keys/values.
        """
        g = cache.graph
        if g is None:
            static = {
                "tokens": tokens.clone(),
                "pos": pos.clone(),
                "slot": torch.full((1,), slot, device=tokens.device),
            }
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                out = self._static_fn(static["tokens"], static["pos"], static["slot"], cache)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    static["out"] = self._static_fn(static["tokens"], static["pos"], static["slot"], cache)
            except RuntimeError as exc:  # e.g. an op that syncs with the host: keep going eagerly
                log.warning("capturing the decode step failed (%s); continuing without CUDA graphs", exc)
                self.graphs = False
                return out
            cache.graph = (graph, static)
            self.captures += 1
            held = getattr(cache, "pool_entry", None)
            if held is not None:
                held.graph = cache.graph  # later batches of this shape replay it
            return out
        graph, static = g
        static["tokens"].copy_(tokens)
        static["pos"].copy_(pos)
        static["slot"].fill_(slot)
        graph.replay()
        return static["out"]

    def _step_static(self, tokens: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, cache: KVCache):
        """The same step with shapes independent of `slot` (attends over every slot, masked)."""
        cache.valid.index_fill_(1, slot, True)
        mask = cache.valid[:, None, None, :]  # [B, 1, 1, L]
        return self._forward(tokens[:, None], pos[:, None], cache, slot, mask, cache.length)[:, 0]


def left_pad(prompts: list[list[int]], pad: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [B, P] and attention mask [B, P] (True for real tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.bool)
    for r, p in enumerate(prompts):
        if p:
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[r, width - len(p) :] = True
    return ids.to(device), attn.to(device)


def boi_last_step(
    lengths: torch.Tensor, image_budgets: torch.Tensor, allow: torch.Tensor, masks: TextMasks
) -> torch.Tensor:
    """The last step t [B] at which BOI may be sampled (-1: never), for contexts of `lengths` tokens.

    Anole: BOI is disallowed once the sequence holds >= max_seq_len - 1026 tokens, so at step t
    (context lengths + t) it needs lengths + t < context - block. Ours adds that the block fits the
    record's remaining budget: t + block <= image_budgets.
    """
    last = torch.minimum(masks.context - masks.image_block - 1 - lengths, image_budgets - masks.image_block)
    return torch.where(allow, last, torch.full_like(last, -1))


@dataclass
class TextResult:
    """New tokens of one row and why the row stopped ("eos", "boi", "length")."""

    tokens: list[int]
    stop: str


@torch.no_grad()
def generate_text(
    runner: Runner,
    prompts: list[list[int]],
    *,
    budgets: list[int],
    masks: TextMasks,
    seeds: torch.Tensor,
    step_offsets: list[int] | None = None,
    allow_image: list[bool] | None = None,
    repetition_penalty: float = 1.2,
    temperature: float = 0.0,
    top_p: float = 1.0,
    check_every: int = 16,
    min_new: list[int] | None = None,
    image_budgets: list[int] | None = None,
) -> list[TextResult]:
    """Decode text for a batch of prompts until EOS, BOI (when images are allowed) or the budget.

    `budgets[b]` is the most new tokens row b may take in this call. BOI is allowed for row b only
    while `allow_image[b]` and Anole's room rule holds: with L tokens in the row's context, BOI is
    suppressed once L >= context - image_block (Anole's `DisallowTokensAtOrAfterIndexLogitsProcessor`
    at `max_seq_len - 1026`), so an image always ends at least one position before the context
    does. A user budget adds: the whole block must fit in `image_budgets[b]` (the new tokens the
    record may still take; default `budgets[b]`). The loop does not synchronise with the host except
    every `check_every` steps to see whether every row has finished. EOS is suppressed for row b
    during its first `min_new[b]` steps.
    """
    dev = runner.device
    b = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=dev)
    budget_t = torch.tensor(budgets, device=dev)
    max_new = max(budgets)
    if max_new <= 0:
        return [TextResult([], "length") for _ in prompts]
    offsets = torch.tensor(step_offsets or [0] * b, device=dev)
    allow = torch.tensor(allow_image or [False] * b, device=dev)
    image_budget_t = torch.tensor(image_budgets if image_budgets is not None else budgets, device=dev)
    boi_ok_until = boi_last_step(lengths, image_budget_t, allow, masks)  # BOI allowed while t <= this

    eos_from = torch.tensor(min_new, device=dev) if min_new and any(min_new) else None

    ids, attn = left_pad(prompts, masks.pad, dev)
    width = ids.shape[1]
    cache = runner.new_cache(b, width + max_new)
    hidden = runner.prefill(ids, attn, cache)
    # Every token so far (prompt included, as in HF), for the repetition penalty; left padding and
    # slots not yet generated hold `pad`, which is never allowed anyway.
    history = torch.full((b, width + max_new), masks.pad, dtype=torch.long, device=dev)
    history[:, :width] = ids
    out = torch.full((b, max_new), masks.pad, dtype=torch.long, device=dev)
    finished = torch.zeros(b, dtype=torch.bool, device=dev)
    steps = 0
    for t in range(max_new):
        logits = runner.logits(hidden)  # [B, V]
        eos_ok = None if eos_from is None else eos_from <= t
        logits = text_logits(
            logits,
            history=history,
            masks=masks,
            repetition_penalty=repetition_penalty,
            boi_allowed=boi_ok_until >= t,
            eos_allowed=eos_ok,
        )
        tok = sample(logits, temperature=temperature, top_p=top_p, seeds=seeds, steps=offsets + t)
        tok = torch.where(finished, masks.pad, tok)
        out[:, t] = tok
        history[:, width + t] = tok
        finished |= (tok == masks.eos) | (tok == masks.boi) | (t + 1 >= budget_t)
        steps = t + 1
        if steps == max_new or (steps % check_every == 0 and bool(finished.all())):
            break
        hidden = runner.step(tok, lengths + t, width + t, cache)

    rows = out[:, :steps].tolist()
    results = []
    for r, row in enumerate(rows):
        toks: list[int] = []
        stop = "length"
        for tok in row[: budgets[r]]:
            if tok == masks.eos:
                stop = "eos"
                break
            toks.append(tok)
            if tok == masks.boi:
                stop = "boi"
                break
        results.append(TextResult(toks, stop))
    return results
