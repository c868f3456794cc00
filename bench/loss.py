"""LM head + cross-entropy: naive (full [T x V] fp32 logits) vs chunked over supervised positions.

Same process, same inputs; forward + backward. Prints medians of a few repeats, the ratio, and
the largest logit buffer each path holds (measured peak on CUDA). `--quick` for a small size.

  python bench/loss.py [--quick] [--tokens 4096] [--hidden 4096] [--supervised 0.6]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _harness import Bench
from medmax_cli.model.loss import chunked_cross_entropy


def naive(hidden, weight, targets):
    logits = (hidden @ weight.t()).float()  # [T, V] all at once
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


def step(fn, hidden, weight, targets, cuda, peaks: list[float]):
    """One forward + backward; (loss, grad of hidden) for the same-output check."""
    h = hidden.detach().requires_grad_(True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loss = fn(h, weight, targets)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() / 2**30)
    return loss.detach().float().cpu(), h.grad.float().cpu()


def close(a, b) -> bool:
    return bool(
        torch.allclose(a[0], b[0], rtol=2e-2, atol=1e-2) and torch.allclose(a[1], b[1], rtol=5e-2, atol=1e-3)
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--supervised", type=float, default=0.6, help="share of positions with a label")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.quick
    if args.quick:
        args.tokens, args.hidden, args.repeats = min(args.tokens, 256), min(args.hidden, 128), 1
    elif not cuda:
        args.tokens, args.hidden, args.repeats = min(args.tokens, 1024), min(args.hidden, 256), 3
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=g).to(device, dtype)
    weight = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).to(device, dtype)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    targets[torch.rand(args.tokens, generator=g) > args.supervised] = -100
    targets = targets.to(device)
    n_sup = int((targets != -100).sum())
    print(f"T={args.tokens} H={args.hidden} V={args.vocab} supervised={n_sup} chunk={args.chunk} on {device}")
    bench = Bench("loss", quick=args.quick, settings={**vars(args), "device": device, "supervised_n": n_sup})
    peaks: dict[str, list[float]] = {"naive": [], "chunked": []}

    def chunked(h, w, t):
        return chunked_cross_entropy(h, w, t, args.chunk)[0]

    bench.compare(
        "LM head + cross-entropy, forward + backward",
        naive=lambda: step(naive, hidden, weight, targets, cuda, peaks["naive"]),
        ours=lambda: step(chunked, hidden, weight, targets, cuda, peaks["chunked"]),
        repeats=args.repeats,
        work=args.tokens,
        unit="tokens",
        same=close,
        names=("naive", "chunked"),
        warmup=True,
    )
    mib = lambda rows: rows * args.vocab * 4 / 2**20  # noqa: E731
    bench.figure("logits_buffer_mib", {"naive": mib(args.tokens), "chunked": mib(min(args.chunk, n_sup))})
    print(
        f"  logits buffer fp32: naive {mib(args.tokens):.0f} MiB, chunked {mib(min(args.chunk, n_sup)):.0f} MiB"
    )
    if cuda:
        bench.figure("peak_gib", {k: max(v) for k, v in peaks.items()})
        print(f"  CUDA peak: naive {max(peaks['naive']):.2f} GiB, chunked {max(peaks['chunked']):.2f} GiB")
    bench.finish()


if __name__ == "__main__":
    main()
