"""bench/pack.py: `medmax pack` end to end vs a naive MedMax-style baseline, tokens/s and packing efficiency.

Input: N synthetic task instances in JSONL with a MedMax-like length mix (80% one image, 10% two,
10% none; images are 1,024 VQ codes = a 1,026-token block; questions and answers of varied length),
tokenised with the tiny model's real BPE tokenizer and its real 65,536-id layout.

- naive: written like MedMax's data path: per-line `json.loads`, per-record and per-part
  `tokenizer.encode`, Python lists mapping code -> code + offset, right truncation, one row per
  sample padded to --seq-len, each row written as .npy members of a tar.
- ours: `medmax_cli.pack.stage.pack_to_dir` as the command runs it (orjson + schema validation,
  batched `encode_batch`, numpy image blocks, best-fit-decreasing packing, deterministic shards).

Prints both rates (median of --repeats), the ratio, the packing efficiency of each, and the efficiency
of the default streaming buffer vs first-fit-decreasing over the whole input.

    .venv/bin/python bench/pack.py            # 20,000 instances
    .venv/bin/python bench/pack.py --quick    # 2,000 instances
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

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


def make_instances(n: int, seed: int, codes_per_image: int) -> list[bytes]:
    """JSONL lines of synthetic instances with the MedMax-like length mix."""
    rng = np.random.default_rng(seed)
    words = make_vocabulary(rng)
    zipf = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    zipf /= zipf.sum()
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
        question = " ".join(rng.choice(words, int(rng.integers(8, 120)), p=zipf))
        answer = " ".join(rng.choice(words, int(rng.integers(1, 200)), p=zipf))
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
    from medmax_cli.pack.stage import PackSettings, pack_to_dir
    from medmax_cli.streams import ErrorPolicy, read_records

    policy = ErrorPolicy("fail", stage="pack")
    settings = PackSettings(seq_len=seq_len, pack_buffer=buffer)
    with open(path, "rb") as handle:
        records = read_records(handle, name=str(path), policy=policy, check=False)  # as the command

        return pack_to_dir(
            records,
            out,
            vocab=vocab,
            tokenizer=tokenizer,
            settings=settings,
            policy=policy,
            model={"dir": "tiny"},
            workers=workers,
        )


def timed_pair(first, second, repeats: int):
    """Run the two alternately (load drifts on shared machines); medians of wall and CPU seconds."""
    walls: list[list[float]] = [[], []]
    cpus: list[list[float]] = [[], []]
    results: list[object] = [None, None]
    for _ in range(repeats):
        for k, fn in enumerate((first, second)):
            wall, cpu = time.perf_counter(), time.process_time()
            results[k] = fn()
            walls[k].append(time.perf_counter() - wall)
            cpus[k].append(time.process_time() - cpu)
    return [(statistics.median(walls[k]), statistics.median(cpus[k]), results[k]) for k in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 instances instead of 20,000")
    parser.add_argument("-n", type=int, default=None, help="number of instances")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--pack-buffer", type=int, default=2000)
    parser.add_argument("--codes-per-image", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="ours: tokenising processes (0: in-process)")
    args = parser.parse_args()
    n = args.n or (2000 if args.quick else 20000)

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

        def run_naive():
            out = tmp_path / "naive"
            out.mkdir(exist_ok=True)
            # A fresh tokenizer each run: the baseline has no cache to warm.
            from tokenizers import Tokenizer

            from medmax_cli.text.tokenizer import find_tokenizer_file

            return naive_pack(
                data, out, Tokenizer.from_file(str(find_tokenizer_file(model_dir))), vocab, args.seq_len
            )

        def run_ours():
            return ours_pack(
                data,
                tmp_path / "ours",
                load_text_tokenizer(model_dir),
                vocab,
                args.seq_len,
                args.pack_buffer,
                args.workers,
            )

        (t_naive, c_naive, (naive_tokens, naive_rows)), (t_ours, c_ours, manifest) = timed_pair(
            run_naive, run_ours, args.repeats
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

    ours_rate, naive_rate = manifest["tokens"] / t_ours, naive_tokens / t_naive
    naive_eff = naive_tokens / (naive_rows * args.seq_len)
    settings = {
        "instances": n,
        "seq_len": args.seq_len,
        "pack_buffer": args.pack_buffer,
        "workers": args.workers,
    }
    print(json.dumps(settings))
    print(
        f"naive (MedMax-style)  {naive_rate / 1e6:6.2f} M tokens/s wall ({t_naive:.2f} s), "
        f"{naive_tokens / c_naive / 1e6:6.2f} M tokens/CPU-s  efficiency {100 * naive_eff:5.1f}%  ({naive_rows} rows)"
    )
    print(
        f"ours  (medmax pack)   {ours_rate / 1e6:6.2f} M tokens/s wall ({t_ours:.2f} s), "
        f"{manifest['tokens'] / c_ours / 1e6:6.2f} M tokens/CPU-s  efficiency {100 * manifest['efficiency']:5.1f}%  "
        f"({manifest['rows']} rows)" + ("  [CPU-s: main process only]" if args.workers else "")
    )
    print(
        f"ratio ours/naive      {ours_rate / naive_rate:6.1f}x wall, "
        f"{(manifest['tokens'] / c_ours) / (naive_tokens / c_naive):.1f}x CPU; "
        f"{naive_rows / manifest['rows']:.2f}x fewer rows (training steps)"
    )
    print(
        f"packing: buffer {args.pack_buffer} {100 * streamed:.2f}% vs first-fit-decreasing over all "
        f"{100 * ffd:.2f}% (gap {100 * (ffd - streamed):+.2f} pp)"
    )


if __name__ == "__main__":
    main()
