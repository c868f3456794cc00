"""bench/pack.py: `medmax pack` end to end vs a naive MedMax-style baseline, tokens/s and packing efficiency.

Input: N synthetic task instances in JSONL with a MedMax-like length mix (80% one image, 10% two,
10% none; images are 1,024 VQ codes = a 1,026-token block; questions and answers of varied length),
tokenised with the tiny model's real BPE tokenizer and its real 65,536-id layout.

- naive: written like MedMax's data path: per-line `json.loads`, per-record and per-part
  `tokenizer.encode`, Python lists mapping code -> code + offset, right truncation, one row per
  sample padded to --seq-len, each row written as .npy members of a tar.
- ours: `medmax_cli.pack.stage.pack_to_dir` as the command runs it (orjson + schema validation,
  batched `encode_batch`, numpy image blocks, best-fit-decreasing packing, deterministic shards).

Texts are realistic, not single-space separated: multi-paragraph captions (newlines), double
spaces, unicode (µm, °, β, ×, Größe, 肝). Comparisons, each interleaved ABAB (see _harness.py):
1. naive vs ours (same real tokens);
2. the physical limit of the stage: the bare tokenizer's `encode_batch` on the same texts vs ours;
   the ratio is pack's rate as a share of the tokenizer's, per core (TOKENIZERS_PARALLELISM=false
   and --workers 0: one thread each). Target: >= 70%.
Also the efficiency of the default streaming buffer vs first-fit-decreasing over the whole input.

    .venv/bin/python bench/pack.py            # 1,500 instances
    .venv/bin/python bench/pack.py --quick    # 600 instances
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # per core: one thread on every side

import numpy as np
import orjson

from _harness import Bench

WORDS = (
    "the a of in with and shows axial coronal sagittal CT MRI slice chest radiograph lesion nodule liver "
    "lung kidney hypodense hyperintense mass tissue stained H&E glands nuclei cribriform margin enhancement "
    "right left lobe effusion pleural no evidence of consolidation arrow indicates is there finding normal"
).split()


def make_vocabulary(rng: np.random.Generator, size: int = 30000) -> np.ndarray:
    """Real words first, then pseudo-words and numbers, drawn Zipf-like: realistic word repetition
    (so per-word caching is neither free nor useless), punctuation included."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    extra = ["".join(letters[rng.integers(0, 26, int(rng.integers(3, 12)))]) for _ in range(size)]
    extra[::7] = [f"{rng.integers(1, 500)}.{rng.integers(0, 10)}" for _ in range(len(extra[::7]))]
    extra[::11] = [w + rng.choice([",", ".", ";", ")"]) for w in extra[::11]]
    return np.array(WORDS + extra)


UNICODE = ["µm", "5°", "β-catenin", "2×2", "Größe", "肝", "naïve", "–", "≥3", "α"]


class WordStream:
    """Zipf-drawn words, drawn a million at a time (one rng.choice a word is slow)."""

    def __init__(self, rng: np.random.Generator, words: np.ndarray, zipf: np.ndarray):
        self.rng, self.words, self.zipf = rng, words, zipf
        self.pool: list[str] = []
        self.at = 0

    def take(self, n: int) -> list[str]:
        if self.at + n > len(self.pool):
            self.pool = self.rng.choice(self.words, 1 << 20, p=self.zipf).tolist()
            self.at = 0
        self.at += n
        return self.pool[self.at - n : self.at]


def realistic_text(rng: np.random.Generator, stream: WordStream, n_words: int) -> str:
    """Sentences of Zipf-drawn words with unicode; a third are multi-paragraph (blank lines, line
    breaks), some have double spaces after a full stop, as captions and reports do."""
    picked = stream.take(n_words)
    for k in range(0, n_words, 9):
        if rng.random() < 0.5:
            picked[k] = UNICODE[int(rng.integers(len(UNICODE)))]
    sentences, k = [], 0
    while k < len(picked):
        step = int(rng.integers(6, 18))
        sentences.append(" ".join(picked[k : k + step]).capitalize() + ".")
        k += step
    style = rng.random()
    if style < 0.35:
        return " ".join(sentences)  # single spaces: the word path can take it
    if style < 0.7:
        joiners = ["\n\n", "\n\n", "\n", " ", " "]
        picks = rng.integers(0, len(joiners), len(sentences))
        text = sentences[0]
        for sentence, pick in zip(sentences[1:], picks, strict=False):
            text += joiners[pick] + sentence
        return text
    return "  ".join(sentences)  # two spaces after a full stop


def make_instances(n: int, seed: int, codes_per_image: int) -> list[bytes]:
    """JSONL lines of synthetic instances with the MedMax-like length mix and realistic texts."""
    rng = np.random.default_rng(seed)
    words = make_vocabulary(rng)
    zipf = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    zipf /= zipf.sum()
    stream = WordStream(rng, words, zipf)
    n_images = rng.choice([0, 1, 2], size=n, p=[0.1, 0.8, 0.1])
    lines = []
    for i in range(n):
        images = [
            {
                "sha256": f"{(i * 3 + j):064x}",
                "path": f"x/{i}-{j}.png",
                "vq": "bench",
                "tokens": rng.integers(0, 8192, codes_per_image).tolist(),
            }
            for j in range(int(n_images[i]))
        ]
        question = realistic_text(rng, stream, int(rng.integers(8, 120)))
        answer = realistic_text(rng, stream, int(rng.integers(1, 200)))
        content = [{"image": j} for j in range(len(images))] + [{"text": question}]
        record = {
            "id": f"b{i:06d}",
            "task": "vqa" if i % 3 else "captioning",
            "domain": "radiology",
            "source": ["pmc", "vqa_rad", "slake"][i % 3],
            "license": "cc-by",
            "credential": False,
            "images": images,
            "turns": [
                {"role": "user", "content": content},
                {"role": "assistant", "content": [{"text": answer}]},
            ],
            "meta": {},
        }
        lines.append(orjson.dumps(record) + b"\n")
    return lines


# --------------------------------------------------------------------------- naive baseline


def naive_pack(path: Path, out: Path, tokenizer, vocab, seq_len: int) -> tuple[int, int]:
    """MedMax-style: one padded row per sample. Returns (real tokens, rows)."""
    bos, eos, sep, boi, eoi, pad = vocab.bos, vocab.eos, vocab.sep, vocab.boi, vocab.eoi, vocab.pad
    offset = int(vocab.image_code_to_id[0])
    real = rows = 0
    with open(out / "naive.tar", "wb") as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                ids, labels = [bos], [-100]
                turns = record["turns"]
                for t, turn in enumerate(turns):
                    on = turn["role"] == "assistant"
                    for part in turn["content"]:
                        if "text" in part:
                            piece = tokenizer.encode(part["text"], add_special_tokens=False).ids
                        else:
                            codes = record["images"][part["image"]]["tokens"]
                            piece = [boi] + [c + offset for c in codes] + [eoi]
                        ids += piece
                        labels += piece if on else [-100] * len(piece)
                    closer = eos if t == len(turns) - 1 else sep
                    ids.append(closer)
                    labels.append(closer if on else -100)
                ids, labels = ids[:seq_len], labels[:seq_len]  # right cut, images be damned
                real += len(ids)
                ids = ids + [pad] * (seq_len - len(ids))
                labels = labels + [-100] * (seq_len - len(labels))
                for name, values in (("input_ids", ids), ("labels", labels)):
                    buffer = io.BytesIO()
                    np.save(buffer, np.array(values, dtype=np.int64))
                    info = tarfile.TarInfo(f"{record['id']}.{name}.npy")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(info, buffer)
                rows += 1
    return real, rows


# --------------------------------------------------------------------------- ours


def ours_pack(path: Path, out: Path, tokenizer, vocab, seq_len: int, buffer: int, workers: int = 0) -> dict:
    """`pack_to_dir` as the command runs it; the manifest, plus one digest over its shard hashes."""
    from medmax_cli.pack.stage import PackSettings, pack_to_dir
    from medmax_cli.streams import ErrorPolicy, read_records

    policy = ErrorPolicy("fail", stage="pack")
    settings = PackSettings(seq_len=seq_len, pack_buffer=buffer)
    with open(path, "rb") as handle:
        records = read_records(handle, name=str(path), policy=policy, check=False)  # as the command

        manifest = pack_to_dir(
            records,
            out,
            vocab=vocab,
            tokenizer=tokenizer,
            settings=settings,
            policy=policy,
            model={"dir": "tiny"},
            workers=workers,
        )
    # pack already hashed every shard it wrote (manifest "shards"): compare those, not re-read them
    digest = hashlib.sha256("".join(shard["sha256"] for shard in manifest["shards"]).encode())
    return {**manifest, "shards_sha256": digest.hexdigest()}


def texts_of(lines: list[bytes]) -> tuple[list[str], int]:
    """Every text part of the instances, in order, and the tokens pack adds around them (BOS, one
    closer a turn, BOI + codes + EOI an image): pack's tokens = text tokens + that, when nothing is cut."""
    texts, structure = [], 0
    for line in lines:
        record = orjson.loads(line)
        structure += 1 + len(record["turns"])
        structure += sum(len(image["tokens"]) + 2 for image in record["images"])
        texts += [part["text"] for turn in record["turns"] for part in turn["content"] if "text" in part]
    return texts, structure


def tokenizer_limit(tokenizer, texts: list[str], batch: int) -> int:
    """The bare tokenizer on the same texts, in pack's batch size: text tokens made."""
    return sum(
        len(e.ids)
        for start in range(0, len(texts), batch)
        for e in tokenizer.encode_batch_fast(texts[start : start + batch], add_special_tokens=False)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 instances instead of 1,500, 1 repeat")
    parser.add_argument("-n", type=int, default=None, help="number of instances")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--pack-buffer", type=int, default=2000)
    parser.add_argument("--codes-per-image", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="ours: tokenising processes (0: in-process)")
    args = parser.parse_args()
    n = args.n or (600 if args.quick else 1500)
    if args.quick:
        args.repeats = 1

    from medmax_cli.model.resolve import ensure_tiny_model
    from medmax_cli.pack.binpack import efficiency, first_fit_decreasing, pack_lengths
    from medmax_cli.text.tokenizer import load_text_tokenizer
    from medmax_cli.text.vocab import ChameleonVocab

    model_dir = ensure_tiny_model(notify=lambda m: print(m, file=sys.stderr))
    vocab = ChameleonVocab.from_model_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "instances.jsonl"
        t0 = time.perf_counter()
        data.write_bytes(b"".join(make_instances(n, args.seed, args.codes_per_image)))
        print(
            f"{n} instances, {data.stat().st_size / 1e6:.0f} MB JSONL (made in {time.perf_counter() - t0:.1f} s); "
            f"seq_len {args.seq_len}, {args.repeats} repeats, medians",
            file=sys.stderr,
        )

        lines = data.read_bytes().splitlines(keepends=True)
        texts, structure = texts_of(lines)
        del lines
        from tokenizers import Tokenizer

        from medmax_cli.text.tokenizer import find_tokenizer_file

        tokenizer_file = str(find_tokenizer_file(model_dir))
        bench = Bench("pack", quick=args.quick, settings={**vars(args), "instances": n})
        print(
            f"pack: {n} instances, {len(texts)} texts (realistic: newlines, double spaces, unicode), "
            f"seq_len {args.seq_len}, workers {args.workers}, TOKENIZERS_PARALLELISM="
            f"{os.environ.get('TOKENIZERS_PARALLELISM')}"
        )

        def run_naive():
            out = tmp_path / "naive"
            out.mkdir(exist_ok=True)
            # A fresh tokenizer each run: the baseline has no cache to warm.
            return naive_pack(data, out, Tokenizer.from_file(tokenizer_file), vocab, args.seq_len)

        def run_ours() -> dict:
            tok = load_text_tokenizer(model_dir)  # fresh each run: a cold cache, as a real run starts
            return ours_pack(
                data, tmp_path / "ours", tok, vocab, args.seq_len, args.pack_buffer, args.workers
            )

        def run_tokenizer() -> int:
            return tokenizer_limit(Tokenizer.from_file(tokenizer_file), texts, 256) + structure

        manifests: dict[str, dict] = {}

        def keep(name: str, fn):
            def run():
                manifests[name] = fn()
                return manifests[name]

            return run

        bench.compare(
            "naive (MedMax-style) vs ours",
            naive=run_naive,
            ours=keep("ours", run_ours),
            repeats=args.repeats,
            work=lambda m: m["tokens"],
            unit="tokens",
            same=lambda a, b: a[0] == b["tokens"],  # the same real tokens (nothing is cut at this seq_len)
        )
        text_tokens = manifests["ours"]["tokens"] - structure
        entry = bench.compare(
            "tokenizer limit: bare encode_batch on the same texts vs pack",
            naive=run_tokenizer,
            ours=keep("ours", run_ours),
            repeats=args.repeats,
            work=text_tokens,
            unit="text tokens",
            same=lambda a, b: a == b["tokens"],  # pack tokenised exactly the tokenizer's text tokens
            names=("encode_batch", "pack"),
        )
        share, cpu = entry["ratio"], entry["ratio_cpu"]  # CPU time: the per-core view
        bench.figure(
            "share_of_tokenizer_limit",
            {"wall": share, "cpu": cpu},
            f"pack: {100 * cpu['median']:.0f}% of the bare tokenizer's rate per core (CPU time) "
            f"[{100 * cpu['min']:.0f}-{100 * cpu['max']:.0f}%], {100 * share['median']:.0f}% by wall time "
            f"[{100 * share['min']:.0f}-{100 * share['max']:.0f}%] (target >= 70%)",
        )

        # Packing quality on exactly the sample lengths ours produced.
        from medmax_cli.pack.reader import PackedShards

        lengths = [
            int(b)
            for row in PackedShards(tmp_path / "ours").iter_rows(shuffle=False)
            for b in np.diff(row.boundaries)
        ]
        ffd = efficiency(lengths, first_fit_decreasing(lengths, args.seq_len), args.seq_len)
        streamed = efficiency(lengths, pack_lengths(lengths, args.seq_len, args.pack_buffer), args.seq_len)
        naive_tokens, naive_rows = run_naive()

    manifest = manifests["ours"]
    bench.figure(
        "efficiency",
        {"naive": naive_tokens / (naive_rows * args.seq_len), "ours": manifest["efficiency"], "ffd": ffd},
        f"efficiency: naive {100 * naive_tokens / (naive_rows * args.seq_len):.1f}% ({naive_rows} rows), ours "
        f"{100 * manifest['efficiency']:.1f}% ({manifest['rows']} rows: {naive_rows / manifest['rows']:.2f}x fewer "
        f"training steps)",
    )
    bench.figure(
        "buffer_vs_ffd",
        {"streamed": streamed, "ffd": ffd},
        f"packing: buffer {args.pack_buffer} {100 * streamed:.2f}% vs first-fit-decreasing over all "
        f"{100 * ffd:.2f}% (gap {100 * (ffd - streamed):+.2f} pp)",
    )
    bench.finish()


if __name__ == "__main__":
    main()
