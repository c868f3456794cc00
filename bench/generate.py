"""Decode speed: our loop vs stock `model.generate` (default cache and static cache), side by side.

Default: the tiny model on CPU. `--full`: a random 7B-shaped Chameleon in bf16 on a GPU, plus one
image's worth of tokens with three-row CFG. `--full --quick`: the same code path with a reduced
config, runnable on CPU for smoke testing. Prints tokens/s (median of repeats), the ratios and the
time of each path's cold first call making 2 tokens (the first token plus the first decode step, so
any compilation / CUDA-graph capture is included).

    python bench/generate.py                    # tiny, CPU
    python bench/generate.py --full             # 7B-shaped, bf16, CUDA
    python bench/generate.py --full --compile   # + our captured decode step
    python bench/generate.py --full --quick     # smoke test of --full on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from _harness import Bench, Measured  # noqa: E402
from medmax_cli.generate.cfg import generate_images  # noqa: E402
from medmax_cli.generate.decode import Runner, generate_text  # noqa: E402
from medmax_cli.generate.processors import TextMasks  # noqa: E402
from medmax_cli.text.vocab import ChameleonVocab  # noqa: E402

FULL_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
)
FULL_QUICK = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=4096,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tiny_model(model_dir: str | None):
    from medmax_cli.generate.prompt import tokens_per_image
    from medmax_cli.model.load import load_model
    from medmax_cli.model.tiny import build_tiny_model

    if model_dir is None:
        model_dir = str(Path(tempfile.mkdtemp(prefix="bench-gen-")) / "model")
        build_tiny_model(model_dir, seed=0)
    model = load_model(model_dir)
    return model, ChameleonVocab.from_model_dir(model_dir), tokens_per_image(model_dir)


def random_model(sizes: dict, device: torch.device, dtype: torch.dtype):
    """A random Chameleon with the real vocabulary layout and the given sizes (no weights on disk)."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    from medmax_cli.model.tiny import N_CODES, layout_names

    names = layout_names([f"t{i}" for i in range(4096)])
    vocab_map = {n: i for i, n in enumerate(names)}
    config = ChameleonConfig(
        vocab_size=len(names),
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        vocabulary_map=vocab_map,
        **sizes,
    )
    config.vq_config.num_embeddings = N_CODES
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly: no transient fp32 copy of 7B weights
    try:
        with torch.device(device):
            model = ChameleonForConditionalGeneration(config).to(dtype).eval()
    finally:
        torch.set_default_dtype(default)
    return model, ChameleonVocab.from_vocabulary_map(vocab_map, len(names))


def prompt_batch(vocab: ChameleonVocab, batch: int, length: int) -> list[list[int]]:
    text_ids = torch.nonzero(torch.from_numpy(vocab.text_token_mask.copy())).flatten()
    g = torch.Generator().manual_seed(0)
    return [
        [vocab.bos, *text_ids[torch.randint(10, len(text_ids), (length - 1,), generator=g)].tolist()]
        for _ in range(batch)
    ]


def timed(run, n: int, device: torch.device) -> Measured:
    """Seconds of one call making `n` tokens a row; output: the shape of what it made (same work)."""
    sync(device)
    t0 = time.perf_counter()
    made = run(n)
    sync(device)
    return Measured(time.perf_counter() - t0, made)


def stock_run(model, prompts, cache_implementation=None):
    """Greedy `model.generate`, EOS ignored (min_new_tokens) so every call makes `n` tokens a row."""
    ids = torch.tensor(prompts, device=model.device)
    kw = dict(do_sample=False, pad_token_id=1, attention_mask=torch.ones_like(ids))
    if cache_implementation:
        kw["cache_implementation"] = cache_implementation

    def run(n):
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        return [out.shape[1] - ids.shape[1]] * out.shape[0]

    return run


def ours_run(runner, masks, prompts):
    """Our loop, greedy, no repetition penalty, EOS ignored (same work as the stock call)."""
    masks = dataclasses.replace(masks, eos=-1)  # never stop early
    seeds = torch.zeros(len(prompts), dtype=torch.long, device=runner.device)

    def run(n):
        out = generate_text(
            runner, prompts, budgets=[n] * len(prompts), masks=masks, seeds=seeds, repetition_penalty=1.0
        )
        return [len(r.tokens) for r in out]

    return run


def bench_image(runner, vocab, prompt, tpi, repeats):
    dev = runner.device
    code_ids = torch.from_numpy(vocab.image_code_to_id.copy()).to(dev)
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        codes = generate_images(
            runner,
            [prompt],
            code_ids=code_ids,
            tokens_per_image=tpi,
            bos=vocab.bos,
            boi=vocab.boi,
            eoi=vocab.eoi,
            pad=vocab.pad,
            seeds=torch.zeros(1, device=dev),
        )
        sync(dev)
        times.append(time.perf_counter() - t0)
        assert codes.shape == (1, tpi)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="random 7B-shaped model, bf16, on CUDA")
    ap.add_argument("--quick", action="store_true", help="small sizes (with --full: a reduced config)")
    ap.add_argument("--model", help="tiny mode: an existing model directory instead of building one")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="our decode step captured as CUDA graphs (CUDA)")
    ap.add_argument(
        "--fuse", action="store_true", help="with --compile: torch.compile the step before capture"
    )
    ap.add_argument("--image-tokens", type=int, default=None, help="tokens per image for the CFG timing")
    ap.add_argument("--json", action="store_true", help="also print the results file as one line")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    if args.full:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        sizes = FULL_QUICK if args.quick else FULL_7B
        model, vocab = random_model(sizes, device, dtype)
        tpi = args.image_tokens or (64 if args.quick else 1024)
        new_tokens = args.new_tokens or (32 if args.quick else 256)
    else:
        device, dtype = torch.device("cpu"), torch.float32
        model, vocab, tpi = tiny_model(args.model)
        new_tokens = args.new_tokens or (16 if args.quick else 64)
    context = model.config.max_position_embeddings
    runner = Runner(model, compile=args.compile, fuse=args.fuse)
    masks = TextMasks.build(
        vocab,
        vocab_size=runner.head_weight.shape[0],
        context=context,
        tokens_per_image=tpi,
        device=runner.device,
    )
    prompts = prompt_batch(vocab, args.batch, args.prompt_len)
    repeats = 1 if args.quick else args.repeats
    label = "7B-shaped" if args.full and not args.quick else ("reduced full config" if args.full else "tiny")
    print(
        f"# generate bench: {label} model, {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})"
        f", {dtype}, batch {args.batch}, prompt {args.prompt_len}, {new_tokens} new tokens, median of {repeats}"
    )

    bench = Bench(
        "generate" + ("-full" if args.full else "") + ("-cuda" if device.type == "cuda" else ""),
        quick=args.quick,
        settings={
            "model": label,
            "device": str(device),
            "dtype": str(dtype),
            "new_tokens": new_tokens,
            **vars(args),
        },
    )
    runs = {
        "stock default cache": stock_run(model, prompts),
        "stock static cache": stock_run(model, prompts, "static"),
        "ours" + (" (captured step)" if args.compile else ""): ours_run(runner, masks, prompts),
    }
    # Cold first call of each path, first in the process for that path, making 2 tokens: decode-step
    # compilation or CUDA-graph capture happens at the first decode step, so it is included.
    for name, run in runs.items():
        cold = timed(run, 2, device).seconds
        bench.figure(
            f"cold_first_call_2_tokens_s/{name}",
            cold,
            f"{name}: cold first call (2 tokens) {cold * 1000:.1f} ms",
        )
    ours_name = list(runs)[-1]
    # Same work: every row of both paths makes `new_tokens` tokens (the tokens themselves differ:
    # ours masks image tokens out of text answers, stock generate does not).
    for name in list(runs)[:2]:
        bench.compare(
            f"decode {new_tokens} tokens x {args.batch} rows, {name} vs {ours_name}",
            naive=lambda run=runs[name]: timed(run, new_tokens, device),
            ours=lambda: timed(runs[ours_name], new_tokens, device),
            repeats=repeats,
            work=args.batch * new_tokens,
            unit="tokens",
            names=(name, ours_name),
        )
    if args.full:
        seconds = bench_image(runner, vocab, prompts[0], tpi, repeats)
        bench.figure(
            "image_cfg",
            {"tokens": tpi, "seconds": round(seconds, 3)},
            f"one image, {tpi} tokens, three-row CFG: {seconds:.2f} s ({tpi / seconds:.1f} tokens/s per image)",
        )
    path = bench.finish()
    if args.json:
        print(path.read_text().replace("\n", ""))


if __name__ == "__main__":
    main()
