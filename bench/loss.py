"""LM head + cross-entropy: naive (full [T x V] fp32 logits) vs chunked over supervised positions.

Same process, same inputs; forward + backward. Prints medians of a few repeats, the ratio, and
the largest logit buffer each path holds (measured peak on CUDA). `--quick` for a small size.

  python bench/loss.py [--quick] [--tokens 4096] [--hidden 4096] [--supervised 0.6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from medmax_cli.model.loss import chunked_cross_entropy


def naive(hidden, weight, targets):
    logits = (hidden @ weight.t()).float()  # [T, V] all at once
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


def run(fn, hidden, weight, targets, repeats, cuda):
    times, peak = [], 0.0
    for _ in range(repeats):
        h = hidden.detach().requires_grad_(True)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = fn(h, weight, targets)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**30
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak


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
    if args.quick or not cuda:
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
    t_naive, m_naive = run(naive, hidden, weight, targets, args.repeats, cuda)
    t_ours, m_ours = run(
        lambda h, w, t: chunked_cross_entropy(h, w, t, args.chunk)[0],
        hidden,
        weight,
        targets,
        args.repeats,
        cuda,
    )
    mib = lambda rows: rows * args.vocab * 4 / 2**20  # noqa: E731
    print(
        f"  naive   {t_naive * 1e3:8.1f} ms  logits buffer {mib(args.tokens):7.0f} MiB fp32"
        + (f"  peak {m_naive:.2f} GiB" if cuda else "")
    )
    print(
        f"  chunked {t_ours * 1e3:8.1f} ms  logits buffer {mib(min(args.chunk, n_sup)):7.0f} MiB fp32"
        + (f"  peak {m_ours:.2f} GiB" if cuda else "")
    )
    print(f"  ratio naive/chunked time: {t_naive / t_ours:.2f}x")


if __name__ == "__main__":
    main()
