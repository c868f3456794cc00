"""Training throughput on one GPU: the stock transformers path vs ours, same model, same process.

A random 7B-shaped Chameleon (bf16 weights, LoRA r16 alpha16 dropout0.05 on the seven projections,
AdamW), one optimizer step = forward + backward + step:

(a) full 4096-token rows (one sample per row, MedMax-like labels: responses only):
    stock = `model(input_ids, labels=...)` (SDPA, gradient checkpointing on every layer, full
    [T x 65,536] logits, image logits masked) vs ours = `model.model` + chunked head/loss over
    supervised positions, FlexAttention document mask, checkpointing on a fraction of the layers.
(b) a MedMax-like length mix (mostly one 1,026-token image block plus text, some text-only QA,
    some image generation whose answer is the image block): stock one unpadded sample per step
    (MedMax: global batch 4 over 4 GPUs, i.e. 1 per GPU) vs ours packed into 4096-token rows.
    Both process the same samples; supervised tokens are counted the same way for both (the stock
    path's image labels are set to -100 only so its loss stays finite: its masked head cannot
    learn them, REFERENCE.md 4).

(c) adapter memory (runs first: the figure `finetune --adapter-dtype` needs): our step on the same
    full rows as (a), per-sample loss weighting (the finetune default), for LoRA adapters in fp32
    with dropout 0.05 (peft's default dtype, MedMax's dropout) vs bf16 with dropout 0 (no fp32 input
    copy and no dropout output/mask kept per adapted projection), each with half the layers
    checkpointed and with none. Same rows and initial weights for every configuration: the first
    step's loss is printed so that equal work can be checked.

Prints tokens/s, supervised tokens/s, MFU (model FLOPs: 4 x linear params per token for LoRA with
a frozen base (forward + input gradients) + causal attention, over --peak-tflops), peak memory, and
the ratios (medians over the timed steps). `--quick` runs a tiny config on CPU as a smoke test.
`--time-limit` (default 170 s) skips the sections and variants that would start after it (the
torch.compile variant runs last), so the full run fits in ~240 s; what is skipped is printed.

  python bench/train_gpu.py            # one H100/H200, ~4 minutes
  python bench/train_gpu.py --only c   # just the adapter-memory table
  python bench/train_gpu.py --quick    # CPU smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from medmax_cli.model.attention import packed_attention_mask
from medmax_cli.model.loss import lm_loss
from medmax_cli.train.recipe import enable_checkpointing

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    seq_len: int
    image_tokens: int  # codes per image (the block adds BOI and EOI)


COMPILE_RESERVE = 60.0  # s: a torch.compile variant's warm-up (not measured here; a guess to keep the slot)
FULL = Shape(4096, 11008, 32, 32, 4096, 1024)
QUICK = Shape(64, 128, 2, 4, 256, 62)


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype):
    """A random Chameleon with the real 65,536-token layout (fake text token names), LoRA attached."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    from medmax_cli.model.tiny import VQ_CONFIG, layout_names

    names = layout_names([f"t{i}" for i in range(4096)])
    config = ChameleonConfig(
        vocab_size=65536,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=max(4096, shape.seq_len),
        vocabulary_map={n: i for i, n in enumerate(names)},
        vq_config=dict(VQ_CONFIG),
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = ChameleonForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    model.config.use_cache = False
    return attach_lora(model, "fp32", 0.05), names


def attach_lora(base, adapter_dtype: str, dropout: float):
    """LoRA r16 alpha16 on the seven projections, as `finetune` builds it (--adapter-dtype, --lora-dropout)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=16, lora_alpha=16, lora_dropout=dropout, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    torch.manual_seed(1)  # the same adapter init for every configuration
    model = get_peft_model(base, lora, autocast_adapter_dtype=adapter_dtype == "fp32")
    if adapter_dtype == "bf16":
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    model.train()
    return model


def linear_params(model) -> int:
    base = model.get_base_model().model
    return sum(p.numel() for n, p in base.layers.named_parameters() if "lora_" not in n and p.dim() == 2)


def make_mix(n: int, shape: Shape, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """MedMax-like samples: [BOS] prompt [SEP] response [EOS], labels on the response (+SEP/EOS rule)."""
    block = shape.image_tokens + 2
    text = lambda k: rng.integers(8712, 12808, k)  # noqa: E731
    image = lambda: np.concatenate([[8197], rng.integers(4, 8196, shape.image_tokens), [8196]])  # noqa: E731
    scale = shape.seq_len / 4096
    out = []
    for _ in range(n):
        kind = rng.choice(["vqa", "caption", "qa", "generate"], p=[0.5, 0.25, 0.1, 0.15])
        k = lambda lo, hi: max(1, int(rng.integers(lo, hi) * scale))  # noqa: E731
        if kind == "vqa":
            prompt, resp = np.concatenate([image(), text(k(10, 60))]), text(k(1, 40))
        elif kind == "caption":
            prompt, resp = np.concatenate([image(), text(k(5, 20))]), text(k(40, 300))
        elif kind == "qa":
            prompt, resp = text(k(100, 600)), text(k(20, 200))
        else:
            prompt, resp = text(k(20, 120)), image()
        ids = np.concatenate([[0], prompt, [8710], resp, [2]]).astype(np.int64)
        labels = ids.copy()
        labels[: len(prompt) + 2] = -100
        assert len(ids) <= shape.seq_len, (len(ids), block)
        out.append((ids, labels))
    return out


def pack(samples, seq_len: int) -> list[list[int]]:
    """First-fit decreasing: indices of the samples in each row."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i][0]))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(samples[i][0])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_len - n)
    return rows


def packed_batch(samples, idx: list[int], seq_len: int, device) -> dict[str, torch.Tensor]:
    ids = torch.full((1, seq_len), 1, dtype=torch.long)
    labels = torch.full((1, seq_len), -100, dtype=torch.long)
    pos = torch.zeros((1, seq_len), dtype=torch.long)
    doc = torch.full((1, seq_len), -1, dtype=torch.long)
    at = 0
    for d, i in enumerate(idx):
        x, y = samples[i]
        n = len(x)
        ids[0, at : at + n] = torch.from_numpy(x)
        labels[0, at : at + n] = torch.from_numpy(y)
        pos[0, at : at + n] = torch.arange(n)
        doc[0, at : at + n] = d
        at += n
    return {
        k: v.to(device)
        for k, v in dict(input_ids=ids, labels=labels, position_ids=pos, document_ids=doc).items()
    }


def attn_flops(lengths: list[int], hidden: int, layers: int) -> float:
    """Causal attention matmul FLOPs (QK^T and PV, forward + input-grad backward = x2) per document."""
    return sum(6 * n * n * hidden * layers for n in lengths)  # fwd 2 n^2 d (causal half) + bwd 2x


class Runner:
    def __init__(self, model, device, attn_ours: str, chunk: int):
        self.model, self.device = model, device
        self.attn_ours, self.chunk = attn_ours, chunk
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
        self.image_ids = torch.arange(4, 8196, device=device)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _compile_layers(self, on: bool):
        for layer in self.model.get_base_model().model.layers:
            if on:
                layer.compile()  # fuses norms, rotary, SiLU, LoRA dropout/adds
            else:
                layer._compiled_call_impl = None

    def stock_mode(self):
        self._compile_layers(False)
        self.model.set_attn_implementation("sdpa")
        enable_checkpointing(self.model, 1.0)

    def ours_mode(self, ckpt_fraction: float, compiled: bool):
        self.model.set_attn_implementation(self.attn_ours)
        if ckpt_fraction > 0:
            enable_checkpointing(self.model, ckpt_fraction)
        else:
            self.model.gradient_checkpointing_disable()
        self._compile_layers(compiled)

    def stock_step(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        stock_labels = labels.masked_fill(torch.isin(labels, self.image_ids), -100)  # keep its loss finite
        loss = self.model(input_ids=ids, labels=stock_labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def ours_step(self, b: dict[str, torch.Tensor], per_sample: bool = False) -> float:
        mask = packed_attention_mask(b["document_ids"], self.attn_ours, torch.bfloat16)
        loss_sum, n = lm_loss(
            self.model,
            b["input_ids"],
            b["labels"],
            position_ids=b["position_ids"],
            attention_mask=mask,
            document_ids=b["document_ids"],
            chunk_size=self.chunk,
            per_sample=per_sample,
        )
        # per-sample: loss_sum is already a sum of per-sample means; one row of samples per step here
        loss = loss_sum / (int(b["document_ids"].max()) + 1 if per_sample else n.clamp(min=1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def timed(self, fn, items, warmup: int) -> tuple[list[float], float]:
        """Seconds of each timed item (after `warmup` untimed ones) and peak memory in GiB."""
        for item in items[:warmup]:
            fn(item)
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for item in items[warmup:]:
            t0 = time.perf_counter()
            fn(item)
            self._sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else float("nan")
        return times, peak


def report(
    name: str, tokens: float, supervised: float, seconds: float, flops: float, peak: float, peak_tf: float
):
    mfu = flops / seconds / (peak_tf * 1e12)
    print(
        f"  {name:<34} {tokens / seconds:>10,.0f} tok/s  {supervised / seconds:>10,.0f} sup tok/s  "
        f"MFU {100 * mfu:5.1f}%  peak {peak:6.1f} GiB  ({seconds:.3f} s)"
    )
    return tokens / seconds, supervised / seconds


def parse_variants(spec: str) -> list[tuple[str, float, bool]]:
    out = []
    for item in spec.split(","):
        parts = item.strip().split("+")
        if not parts[0].startswith("ckpt=") or any(p != "compile" for p in parts[1:]):
            raise SystemExit(f"bad variant {item!r}: use ckpt=FRACTION or ckpt=FRACTION+compile")
        out.append((item.strip(), float(parts[0][5:]), "compile" in parts[1:]))
    return out


def run_variant(run: Runner, name, frac, compiled, step, items, warmup, show):
    """One configuration of our path; a failure (e.g. out of memory, a compile error) is reported, not fatal."""
    try:
        run.ours_mode(frac, compiled)
        ts, peak = run.timed(step, items, warmup)
        return show(ts, peak)
    except Exception as exc:  # noqa: BLE001 - a one-shot GPU script reports and goes on
        print(f"  ours {name}: failed: {type(exc).__name__}: {str(exc)[:300]}")
        run.opt.zero_grad(set_to_none=True)
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        return None


def adapter_memory(base, shape: Shape, device, attn: str, chunk: int, rows, warmup: int, sup, flops, args):
    """(c): fp32 + dropout vs bf16 + no dropout adapters, with and without checkpointing."""
    T = shape.seq_len
    configs = [
        (adapter, dropout, frac)
        for adapter, dropout in (("fp32", 0.05), ("bf16", 0.0))
        for frac in (0.5, 0.0)
    ]
    out = {}
    for adapter, dropout, frac in configs:
        name = f"adapters {adapter} dropout {dropout:g} ckpt {frac:g}"
        model = attach_lora(base, adapter, dropout)
        run = Runner(model, device, attn, chunk)
        first: list[float] = []

        def step(r, run=run, first=first):
            loss = run.ours_step(packed_batch([r], [0], T, device), per_sample=True)
            if not first:
                first.append(loss)

        got = run_variant(
            run,
            name,
            frac,
            False,
            step,
            rows,
            warmup,
            lambda ts, peak, name=name: (
                report(name, T, sup, statistics.median(ts), flops, peak, args.peak_tflops)
                + (statistics.median(ts), peak)
            ),
        )
        if got is not None:
            print(f"    first-step loss {first[0]:.6f} (equal work: the same rows and initial weights)")
            out[(adapter, frac)] = got
        del run
        base = model.unload()  # the bare model again, for the next adapter configuration
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if ("fp32", 0.5) in out and ("bf16", 0.0) in out:
        a, b = out[("fp32", 0.5)], out[("bf16", 0.0)]
        print(
            f"  bf16/no-dropout/no-ckpt vs fp32/dropout/ckpt-0.5: {a[2] / b[2]:.2f}x faster step, "
            f"peak {b[3]:.1f} vs {a[3]:.1f} GiB"
        )
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny config on CPU (smoke test)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps for (a) [4]")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (flex compiles) [2]")
    ap.add_argument("--mix-rows", type=int, default=4, help="timed packed rows for (b) [4]")
    ap.add_argument(
        "--variants",
        default=None,
        help="ours: comma list of ckpt=FRACTION[+compile] (share of layers recomputed; "
        "torch.compile per layer) [ckpt=0.5,ckpt=0.5+compile; --quick: ckpt=0.5]",
    )
    ap.add_argument("--attn", default=None, help="ours: flex_attention (CUDA default) or sdpa")
    ap.add_argument("--chunk", type=int, default=1024, help="ours: loss chunk [1024]")
    ap.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU [989: H100/H200]"
    )
    ap.add_argument("--only", choices=["a", "b", "c"], default=None)
    ap.add_argument(
        "--time-limit", type=float, default=170.0, help="skip sections/variants starting after this [170 s]"
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    cuda = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = QUICK if args.quick else FULL
    started = time.perf_counter()

    def in_time(section: str, reserve: float = 0.0) -> bool:
        """Start `section` only if `reserve` seconds (its expected length beyond a plain one) remain."""
        spent = time.perf_counter() - started
        if spent + reserve > args.time_limit:
            print(
                f"({section}) skipped: {spent:.0f} s spent (+{reserve:.0f} s expected), "
                f"over --time-limit {args.time_limit:.0f} s"
            )
            return False
        return True

    attn = args.attn or ("flex_attention" if cuda else "sdpa")
    if args.quick:
        args.steps, args.warmup, args.mix_rows = min(args.steps, 2), 1, min(args.mix_rows, 2)
    print(
        f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}; "
        f"shape {shape}; ours: {attn}, chunk {args.chunk}"
    )
    t0 = time.perf_counter()
    model, _ = build_model(shape, device, dtype)
    n_lin = linear_params(model)
    print(
        f"model built in {time.perf_counter() - t0:.1f} s; {n_lin / 1e9:.2f} B linear params in the decoder"
    )
    run = Runner(model, device, attn, args.chunk)
    variants = parse_variants(args.variants or ("ckpt=0.5" if args.quick else "ckpt=0.5,ckpt=0.5+compile"))
    rng = np.random.default_rng(0)
    L, T = shape.layers, shape.seq_len
    results = {}
    full_rows = []
    while len(full_rows) < args.warmup + args.steps:  # a long text sample: prompt then a long answer
        ids = np.concatenate([[0], rng.integers(8712, 12808, T - 2), [2]])
        labels = ids.copy()
        labels[: T // 4] = -100
        full_rows.append((ids.astype(np.int64), labels.astype(np.int64)))
    full_sup = float(sum((r[1][1:] != -100).sum() for r in full_rows[args.warmup :]) / args.steps)
    full_flops = 4 * n_lin * T + attn_flops([T], shape.hidden, L)

    if args.only in (None, "c"):
        print(f"(c) adapter memory: full {T}-token rows, ours ({attn}), per-sample loss")
        base = adapter_memory(
            model.unload(),
            shape,
            device,
            attn,
            args.chunk,
            full_rows,
            args.warmup,
            full_sup,
            full_flops,
            args,
        )
        model = attach_lora(base, "fp32", 0.05)  # (a) and (b) as before: peft's default adapters
        run = Runner(model, device, attn, args.chunk)

    if args.only in (None, "a") and in_time("a"):
        print(f"(a) full {T}-token rows, one sample per row")
        rows, sup, flops = full_rows, full_sup, full_flops
        run.stock_mode()
        ts, peak = run.timed(
            lambda r: run.stock_step(
                torch.from_numpy(r[0])[None].to(device), torch.from_numpy(r[1])[None].to(device)
            ),
            rows,
            args.warmup,
        )
        stock = report(
            "stock (sdpa, ckpt all, full logits)",
            T,
            sup,
            statistics.median(ts),
            flops,
            peak,
            args.peak_tflops,
        )
        best = 0.0
        for name, frac, compiled in variants:
            if not in_time(f"a: ours {name}", COMPILE_RESERVE if compiled else 0.0):
                break
            got = run_variant(
                run,
                name,
                frac,
                compiled,
                lambda r: run.ours_step(packed_batch([r], [0], T, device)),
                rows,
                args.warmup,
                lambda ts, peak, name=name: report(
                    f"ours {name}", T, sup, statistics.median(ts), flops, peak, args.peak_tflops
                ),
            )
            best = max(best, got[0] if got else 0.0)
        if best:  # no ratio when every variant failed or was skipped
            results["a"] = best / stock[0]
            print(f"  ratio best ours/stock tokens/s: {results['a']:.2f}x")

    if args.only in (None, "b") and in_time("b"):
        samples = make_mix(400, shape, rng)
        all_rows = pack(samples, T)
        packing = sum(len(s[0]) for s in samples) / (len(all_rows) * T)
        # rows spread over the packing order (first-fit decreasing fills the first rows best)
        pick = np.linspace(0, len(all_rows) - 1, args.warmup + args.mix_rows).round().astype(int)
        rows = [all_rows[i] for i in pick]
        timed_rows = rows[args.warmup :]
        lens = [len(samples[i][0]) for r in timed_rows for i in r]
        tokens = float(sum(lens))
        sup = float(sum(int((samples[i][1][1:] != -100).sum()) for r in timed_rows for i in r))
        flops = 4 * n_lin * tokens + attn_flops(lens, shape.hidden, L)
        eff = tokens / (len(timed_rows) * T)
        print(
            f"(b) MedMax-like mix: {len(lens)} samples (mean {np.mean(lens):.0f} tokens, "
            f"{sup / tokens:.0%} supervised) in {len(timed_rows)} rows of {T} ({eff:.0%} full; "
            f"{packing:.0%} over all {len(all_rows)} rows)"
        )
        run.stock_mode()
        warm = [samples[i] for r in rows[: args.warmup] for i in r][: args.warmup]
        order = warm + [samples[i] for r in timed_rows for i in r]
        ts, peak = run.timed(
            lambda s: run.stock_step(
                torch.from_numpy(s[0])[None].to(device), torch.from_numpy(s[1])[None].to(device)
            ),
            order,
            len(warm),
        )
        stock = report("MedMax (stock, 1 sample/step)", tokens, sup, sum(ts), flops, peak, args.peak_tflops)
        best = 0.0
        for name, frac, compiled in variants:
            if not in_time(f"b: ours {name}", COMPILE_RESERVE if compiled else 0.0):
                break
            got = run_variant(
                run,
                name,
                frac,
                compiled,
                lambda r: run.ours_step(packed_batch(samples, r, T, device)),
                rows,
                args.warmup,
                lambda ts, peak, name=name: report(
                    f"ours packed {name}", tokens, sup, sum(ts), flops, peak, args.peak_tflops
                ),
            )
            best = max(best, got[1] if got else 0.0)
        if best:  # no ratio when every variant failed or was skipped
            results["b"] = best / stock[1]
            print(f"  ratio best ours/MedMax supervised tokens/s: {results['b']:.2f}x")
    print("summary: " + ", ".join(f"({k}) {v:.2f}x" for k, v in results.items()))


if __name__ == "__main__":
    main()
