"""Rule-scored items/s: a naive scorer (json per line + MedMax-style python rules) vs `medmax score`'s stage.

Both read JSONL prediction lines, score closed and multiple-choice items with MedMax's rules and
write one scored JSON line per item; ours is the command's pass (`score.stage.score_stream`): it also
checks the fields it reads (id, prediction, answer), hashes the input for the summary's provenance,
counts statuses and keeps what the summary needs. The bootstrap summary is timed separately.

    .venv/bin/python bench/score.py           # 150k synthetic predictions
    .venv/bin/python bench/score.py --quick   # 30k
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from collections import defaultdict

from _harness import Bench, Measured

CHUNK = 50_000
TASKS = [
    ("vqa_rad_closed", "closed"),
    ("slake_closed", "closed"),
    ("pathvqa_closed", "closed"),
    ("probmed_closed", "closed"),
    ("pmc_vqa", "multiple_choice"),
    ("omnimedvqa", "multiple_choice"),
    ("pathmmu", "multiple_choice"),
]
OUTPUTS = {
    "closed": ["yes", "no", "Yes.", "no, normal", "yes, no", ""],
    "multiple_choice": ["A", "B", " c ", "(B)", "The answer is D", ""],
}


def make_chunk(start: int, n: int) -> bytes:
    """n synthetic prediction lines (deterministic in `start`), shaped like `medmax generate` output."""
    rng = random.Random(start)
    lines = []
    for i in range(start, start + n):
        task, qtype = TASKS[i % len(TASKS)]
        gold = rng.choice(["yes", "no"]) if qtype == "closed" else rng.choice("ABCD")
        record = {
            "id": f"item-{i}",
            "task": "vqa",
            "domain": "radiology",
            "source": "bench",
            "license": "cc0",
            "credential": False,
            "images": [{"path": f"ab/{i % 997}.png"}],
            "turns": [
                {"role": "user", "content": [{"image": 0}, {"text": "Is there a lesion? Answer yes or no."}]},
                {"role": "assistant", "content": [{"text": gold}]},
            ],
            "answer": gold,
            "question_type": qtype,
            "meta": {"eval_task": task},
            "prediction": [{"text": rng.choice(OUTPUTS[qtype])}],
            "generation": {"max_new_tokens": 1},
        }
        if qtype == "multiple_choice":
            record["options"] = ["CT", "MRI", "X-ray", "PET"]
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()


def naive(data: bytes) -> tuple[int, dict[str, list[int]]]:
    """What MedMax's evaluation script does: json per line, substring rules, lists per task."""
    out = io.StringIO()
    per_task: dict[str, list[int]] = defaultdict(list)
    n = 0
    for line in data.decode().splitlines():
        record = json.loads(line)
        output = "".join(p.get("text", "") for p in record["prediction"])
        gold = record["answer"]
        if record["question_type"] == "closed":
            low = output.lower()
            ok = ("yes" in low and "no" not in low) if gold == "yes" else ("no" in low and "yes" not in low)
        else:
            ok = output.upper().strip() == gold
        per_task[record["meta"]["eval_task"]].append(int(ok))
        out.write(json.dumps({"id": record["id"], "score": int(ok)}) + "\n")
        n += 1
    return n, per_task


def ours(data: bytes, kept: list) -> int:
    """The command's pass (`score_stream`: rules, the scored line written, the compact line kept for
    the summary) on records read as the command reads them, through the input's sha256."""
    from medmax_cli.score.stage import Scorer, score_stream
    from medmax_cli.streams import ErrorPolicy, HashingReader, RecordWriter, read_records

    policy = ErrorPolicy()
    writer = RecordWriter(io.BytesIO(), flush_each=False)
    stream = HashingReader(io.BytesIO(data))
    records = read_records(stream, policy=policy, check=False)
    kept += score_stream(records, scorer=Scorer(), write=writer.write, policy=policy)
    assert len(stream.hexdigest()) == 64
    return policy.report.counts["in"]


def run_side(side: str, total: int) -> Measured:
    """Score `total` predictions chunk by chunk; only the scoring is timed, not making the chunks.
    Output: per-task (correct, items) for naive, the compact lines the summary needs for ours."""
    spent = 0.0
    kept: list = []
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for start in range(0, total, CHUNK):
        data = make_chunk(start, min(CHUNK, total - start))
        t0 = time.perf_counter()
        if side == "naive":
            _, per_task = naive(data)
        else:
            ours(data, kept)
        spent += time.perf_counter() - t0
        if side == "naive":
            for task, scores in per_task.items():
                counts[task][0] += sum(scores)
                counts[task][1] += len(scores)
    return Measured(spent, dict(counts) if side == "naive" else kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30k predictions instead of 150k")
    parser.add_argument("-n", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    total = args.n or (30_000 if args.quick else 150_000)
    repeats = 1 if args.quick else args.repeats
    from medmax_cli.score.summary import summarise

    bench = Bench("score", quick=args.quick, settings={"predictions": total})
    print(f"score bench: {total:,} synthetic closed/multiple-choice predictions")
    print(
        "  naive: json + python rules, like MedMax's script; ours: medmax score's pass (orjson, checks, input hash)"
    )
    summary_seconds: list[float] = []

    def same(counts: dict[str, list[int]], kept: list) -> bool:
        """Same rules, same answers: each task mean from the naive counts is ours (rounded to 6 places)."""
        t0 = time.perf_counter()
        summary = summarise(kept, seed=0)
        summary_seconds.append(time.perf_counter() - t0)
        return len(kept) == total and all(
            abs(c / n - summary["tasks"][task]["mean"]) <= 5e-7 for task, (c, n) in counts.items()
        )

    bench.compare(
        "score predictions",
        naive=lambda: run_side("naive", total),
        ours=lambda: run_side("ours", total),
        repeats=repeats,
        work=total,
        unit="items",
        same=same,
    )
    bench.figure(
        "summary_seconds",
        summary_seconds[0],
        f"summary with 1000-replicate bootstrap CIs (7 tasks + macro): {summary_seconds[0]:.2f} s",
    )
    bench.finish()


if __name__ == "__main__":
    main()
