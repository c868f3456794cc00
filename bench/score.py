"""Rule-scored items/s: a naive scorer (json per line + MedMax-style python rules) vs `medmax score`'s stage.

Both read JSONL prediction lines, score closed and multiple-choice items with MedMax's rules and
write one scored JSON line per item; ours also checks the fields it reads (id, prediction, answer),
counts statuses and keeps what the summary needs. The bootstrap summary of ours is timed separately.

    .venv/bin/python bench/score.py           # 1M synthetic predictions
    .venv/bin/python bench/score.py --quick   # 100k
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import time
from collections import defaultdict

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


def naive(data: bytes) -> tuple[int, dict[str, float]]:
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
    return n, {k: sum(v) / len(v) for k, v in per_task.items()}


def ours(data: bytes, kept: list) -> int:
    from medmax_cli.score.stage import Scorer, score_records
    from medmax_cli.score.summary import compact
    from medmax_cli.streams import ErrorPolicy, RecordWriter, read_records

    policy = ErrorPolicy()
    writer = RecordWriter(io.BytesIO(), flush_each=False)
    n = 0
    records = read_records(io.BytesIO(data), policy=policy, check=False)  # as the command reads them
    for line in score_records(records, scorer=Scorer(), policy=policy):
        kept.append(compact(line))
        writer.write(line)
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k predictions instead of 1M")
    parser.add_argument("-n", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    total = args.n or (100_000 if args.quick else 1_000_000)
    from medmax_cli.score.summary import summarise

    rates: dict[str, list[float]] = {"naive": [], "ours": []}
    summary_seconds = []
    for _ in range(args.repeats):
        spent = {"naive": 0.0, "ours": 0.0}
        kept: list = []
        naive_means: dict[str, list[float]] = defaultdict(list)
        for start in range(0, total, CHUNK):
            data = make_chunk(start, min(CHUNK, total - start))
            t0 = time.perf_counter()
            _, means = naive(data)
            spent["naive"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            ours(data, kept)
            spent["ours"] += time.perf_counter() - t0
            for k, v in means.items():
                naive_means[k].append(v)
        for name in spent:
            rates[name].append(total / spent[name])
        t0 = time.perf_counter()
        summary = summarise(kept, seed=0)
        summary_seconds.append(time.perf_counter() - t0)
        for task, means in naive_means.items():  # same rules, same answers (chunks are equal-sized)
            assert abs(statistics.mean(means) - summary["tasks"][task]["mean"]) < 1e-3, task
    naive_rate, our_rate = statistics.median(rates["naive"]), statistics.median(rates["ours"])
    print(f"score bench: {total:,} synthetic closed/multiple-choice predictions, median of {args.repeats}")
    print(f"  naive (json + python rules, like MedMax's script): {naive_rate:,.0f} items/s")
    print(f"  ours  (medmax score stage: orjson + checks + rules + scored lines): {our_rate:,.0f} items/s")
    print(f"  ratio ours/naive: {our_rate / naive_rate:.2f}x")
    print(
        f"  summary with 1000-replicate bootstrap CIs (7 tasks + macro): {statistics.median(summary_seconds):.2f} s"
    )


if __name__ == "__main__":
    main()
