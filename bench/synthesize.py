"""synthesize: builders + filters on synthetic records, naive near-duplicate search vs ours.

    python bench/synthesize.py [--records 20000] [--repeats 3] [--quick]

Three measurements, naive and ours interleaved (ABAB, see _harness.py):
1. the whole stage (captioning, image_generation, interleaved, vqa, report_understanding builders,
   exact dedup, near-duplicate filter, decontamination against an eval set) in instances/s, with the
   naive near-duplicate search (numpy brute force over every kept hash: O(n^2)) vs our banded index;
   both must keep exactly the same instances and drop the same counts, and the planted overlaps must
   be caught: every instance of the 50 training records whose image is in the eval set (same pHash,
   other file) is dropped as contaminated, and the 5% near copies as near duplicates;
2. the near-duplicate search alone (hashes/s), on the same 20k hashes;
3. near-duplicate queries against an index already holding --scale-hashes hashes (300,000 by
   default, a fifth of MedMax's 1.47M instances): what the index is for. At 20k hashes the naive
   O(n) scan per query is as cheap as the index's probes, and the builders take over 80% of the stage
   (a cProfile of both sides), so 1 and 2 stay near 1x; the naive scan grows with the corpus;
4. pHash speed (images/s) on real 256x256 images, the one-off cost per distinct image.
pHashes of the synthetic records are planted in the hasher's cache (5% near copies within 1-2
bits), so 1 and 2 time the builders and filters, not image decoding.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from typing import Any

import numpy as np
from PIL import Image

import medmax_cli.synthesize.decontaminate as decontaminate_mod
import medmax_cli.synthesize.filters as filters_mod
from _harness import Bench, Measured
from medmax_cli.streams import ErrorPolicy
from medmax_cli.synthesize import build_record, synthesize
from medmax_cli.synthesize.common import BuildContext, Drop
from medmax_cli.synthesize.decontaminate import EvalIndex
from medmax_cli.synthesize.imagehash import ImageHasher, NearDupIndex, phash

TASKS = ("captioning", "image_generation", "interleaved", "vqa", "report_understanding")
BITS = 4


class NaiveNearDupIndex:
    """The baseline: compare a new hash with every stored one (numpy-vectorised, still O(n) a query)."""

    def __init__(self, threshold: int):
        self.threshold = threshold
        self._hashes = np.zeros(1024, dtype=np.uint64)
        self._values: list[Any] = []

    def __len__(self) -> int:
        return len(self._values)

    def fill(self, hashes: list[int]) -> None:
        """Bulk load (setup for the at-scale queries, not timed)."""
        self._hashes = np.array(hashes, dtype=np.uint64)
        self._values = list(range(len(hashes)))

    def add(self, value_hash: int, value: Any) -> None:
        n = len(self._values)
        if n == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros(n, dtype=np.uint64)])
        self._hashes[n] = value_hash
        self._values.append(value)

    def nearest(self, value_hash: int) -> tuple[Any, int] | None:
        n = len(self._values)
        if n == 0:
            return None
        distances = np.bitwise_count(self._hashes[:n] ^ np.uint64(value_hash))
        best = int(np.argmin(distances))
        return (self._values[best], int(distances[best])) if distances[best] <= self.threshold else None


def sha(i: int) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()


def make_records(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """n source records (60% figures, 30% qa, 10% reports) and the planted pHash of each image."""
    rng = np.random.default_rng(seed)
    hashes: dict[str, int] = {}
    records = []
    for i in range(n):
        digest = sha(i)
        if i > 100 and rng.random() < 0.05:  # a near copy of an earlier image
            other = hashes[sha(int(rng.integers(0, i)))]
            hashes[digest] = other ^ (1 << int(rng.integers(0, 64))) ^ (1 << int(rng.integers(0, 64)))
        else:
            hashes[digest] = int(rng.integers(0, 2**63)) << 1 | int(rng.integers(0, 2))
        image = {"sha256": digest, "path": f"{digest[:2]}/{digest}.png", "width": 512, "height": 512}
        base = {
            "id": f"R{i}",
            "source": "bench",
            "license": "cc-by",
            "credential": False,
            "images": [image],
            "meta": {},
        }
        kind = i % 10
        if kind < 6:
            paragraph = (
                f"Patients were scanned at {i % 7} sites. The lesion measured {i % 40} mm on the "
                f"axial CT (Figure {i % 5 + 1}). Follow-up showed no progression."
            )
            anchor = f"Figure {i % 5 + 1}"
            start = paragraph.index(anchor)
            records.append(
                {
                    **base,
                    "kind": "figure",
                    "label": anchor,
                    "figure_id": "F1",
                    "caption": f"Axial CT of case {i}: a {i % 40} mm hypodense lesion in segment IV.",
                    "mentions": [
                        {
                            "section": "Results",
                            "paragraph": paragraph,
                            "anchor": anchor,
                            "sentence": paragraph.split(". ")[1] + ".",
                            "start": start,
                            "end": start + len(anchor),
                        }
                    ],
                    "article": {"pmcid": f"PMC{i}", "title": "A bench article"},
                }
            )
        elif kind < 9:
            records.append(
                {
                    **base,
                    "kind": "qa",
                    "question": f"Is there a lesion in segment {i % 8} (case {i})?",
                    "answer": "yes" if i % 2 else "no",
                    "question_type": "closed",
                }
            )
        else:
            records.append(
                {**base, "kind": "report", "report": f"Case {i}. No acute cardiopulmonary process."}
            )
    return records, hashes


def run_stage(records, hashes, eval_hashes, index_class) -> Measured:
    """The stage with `index_class` as every near-dup index; output: kept ids and drop counts."""
    filters_mod.NearDupIndex = index_class  # the filter and the eval index build their index from these
    decontaminate_mod.NearDupIndex = index_class
    hasher = ImageHasher(None)
    hasher._cache.update({s: (s, h) for s, h in hashes.items()})
    eval_hasher = ImageHasher(None)
    eval_records = []
    for j, h in enumerate(eval_hashes):
        s = hashlib.sha256(f"eval-{j}".encode()).hexdigest()
        eval_hasher._cache[s] = (s, h)
        eval_records.append(
            {
                "id": f"E{j}",
                "kind": "qa",
                "question": f"eval question {j}?",
                "images": [{"sha256": s, "path": f"{s[:2]}/{s}.png"}],
            }
        )
    policy = ErrorPolicy("skip")
    start = time.perf_counter()
    index = EvalIndex(eval_hasher, BITS).add_records(eval_records, workers=1)
    stage = synthesize(
        records,
        policy=policy,
        tasks=TASKS,
        hasher=hasher,
        exclude=index,
        near_dup_bits=BITS,
        hash_workers=1,  # hashes are planted: nothing to decode, threads would only add overhead
    )
    ids = [x["id"] for x in stage]
    return Measured(time.perf_counter() - start, (ids, dict(policy.report.dropped)))


def bench_index(hashes: list[int], index_class) -> Measured:
    """Seconds to deduplicate `hashes` (query, then add the new ones) and which ones were new."""
    index = index_class(BITS)
    start = time.perf_counter()
    new = []
    for i, h in enumerate(hashes):
        hit = index.nearest(h)
        new.append(hit is None)
        if hit is None:
            index.add(h, i)
    return Measured(time.perf_counter() - start, new)


def random_hashes(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [
        int(x) << 1 | int(b) for x, b in zip(rng.integers(0, 2**63, n), rng.integers(0, 2, n), strict=True)
    ]


def scale_indexes(stored: list[int]) -> tuple[NaiveNearDupIndex, NearDupIndex]:
    naive = NaiveNearDupIndex(BITS)
    naive.fill(stored)
    ours: NearDupIndex = NearDupIndex(BITS)
    for i, h in enumerate(stored):
        ours.add(h, i)
    return naive, ours


def bench_queries(index: Any, queries: list[int]) -> Measured:
    """Seconds to look up `queries` in a filled index, and what each found (payload, distance)."""
    start = time.perf_counter()
    found = [index.nearest(h) for h in queries]
    return Measured(time.perf_counter() - start, found)


def bench_phash(n: int, repeats: int) -> float:
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8), "L").resize((256, 256))
        for _ in range(n)
    ]

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            phash(image)
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--eval", type=int, default=2_000, help="eval items to decontaminate against")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--scale-hashes", type=int, default=300_000, help="hashes in the index for the at-scale queries"
    )
    parser.add_argument("--scale-queries", type=int, default=2_000, help="queries against that index")
    parser.add_argument("--quick", action="store_true", help="5,000 records, 50,000 stored hashes, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.records, args.eval, args.repeats = 5_000, 500, 1
        args.scale_hashes, args.scale_queries = 50_000, 500
    records, hashes = make_records(args.records)
    rng = np.random.default_rng(2)
    eval_hashes = [int(x) for x in rng.integers(0, 2**63, args.eval)]
    eval_hashes[:50] = list(hashes.values())[:50]  # 50 planted eval images

    bench = Bench(
        "synthesize",
        quick=args.quick,
        settings={
            "records": args.records,
            "eval": args.eval,
            "bits": BITS,
            "scale_hashes": args.scale_hashes,
            "scale_queries": args.scale_queries,
        },
    )
    print(
        f"synthesize bench: {args.records} records, {args.eval} eval items (50 planted), near-dup threshold "
        f"{BITS} bits"
    )
    # Expected drops, by brute force: every instance of a record whose image is within BITS of an
    # eval image (the 50 planted and the near copies made of them) is contaminated.
    ctx = BuildContext(seed=0)
    eval_array = np.array(eval_hashes, dtype=np.uint64)
    touched = [
        r
        for r in records
        if int(np.bitwise_count(eval_array ^ np.uint64(hashes[r["images"][0]["sha256"]])).min()) <= BITS
    ]
    planted = sum(
        not isinstance(o, Drop) for r in touched for o in build_record(r, tasks=TASKS, ctx=ctx, client=None)
    )
    entry = bench.compare(
        "stage (builders + filters + decontamination)",
        naive=lambda: run_stage(records, hashes, eval_hashes, NaiveNearDupIndex),
        ours=lambda: run_stage(records, hashes, eval_hashes, NearDupIndex),
        repeats=args.repeats,
        work=lambda out: len(out[0]),
        unit="instances kept",
    )
    ids, dropped = run_stage(records, hashes, eval_hashes, NearDupIndex).output
    touched_ids = {r["id"] for r in touched}
    leaked = [i for i in ids if i.split("-")[0] in touched_ids]
    assert not leaked, f"instances of planted eval images survived: {leaked[:5]}"
    assert dropped.get("contaminated") == planted, (dropped, planted)
    assert dropped.get("near duplicate", 0) > 0, dropped
    bench.figure(
        "dropped",
        dropped,
        f"caught: {dropped['contaminated']} contaminated (= all {planted} instances of the {len(touched)} records "
        f"whose image is within {BITS} bits of an eval image: 50 planted + their near copies), "
        f"{dropped['near duplicate']} near duplicates; kept {entry['work']:.0f}",
    )
    values = list(hashes.values())
    bench.compare(
        "near-dup search alone",
        naive=lambda: bench_index(values, NaiveNearDupIndex),
        ours=lambda: bench_index(values, NearDupIndex),
        repeats=args.repeats,
        work=len(values),
        unit="hashes",
    )
    stored = random_hashes(args.scale_hashes, seed=3)
    queries = random_hashes(args.scale_queries, seed=4)
    for j in range(0, len(queries), 4):  # a quarter are near copies (1-2 bits off) of stored hashes
        queries[j] = stored[(j * 7919) % len(stored)] ^ (1 << (j % 64)) ^ (1 << ((j * 13) % 64))
    naive_index, our_index = scale_indexes(stored)
    bench.compare(
        f"near-dup queries, {args.scale_hashes:,} hashes stored",
        naive=lambda: bench_queries(naive_index, queries),
        ours=lambda: bench_queries(our_index, queries),
        repeats=args.repeats,
        work=len(queries),
        unit="queries",
    )
    rate = bench_phash(200 if args.quick else 1000, args.repeats)
    bench.figure(
        "phash_images_per_s",
        rate,
        f"pHash (256x256 greyscale): {rate:,.0f} images/s (once per distinct image)",
    )
    bench.finish()


if __name__ == "__main__":
    main()
