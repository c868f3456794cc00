#!/usr/bin/env python3
"""The real-size rehearsal: the demo chain on a random model of Anole-7B's exact shape (2 layers).

Every stage runs as its own `bash -c 'set -euo pipefail; ...'` child at real settings: 512x512
images = 1,024 codes, 1,026-token image blocks in 4,096-token rows, the 65,536-entry head at width
4,096, CFG generation of a full image, the real VQ-GAN decoder at 512 px. Each stage's wall time and
peak RSS (the largest single process of the stage, from getrusage(RUSAGE_CHILDREN) in a fresh
measuring child) are printed and written to OUT/stages.json; the run then checks what the chain must
deliver (exit 1 naming what failed) and the whole run against a time and memory budget.

  python examples/rehearsal/run.py [--out rehearsal-out] [--layers 2] [--budget-s 1200] [--budget-gb 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# name -> shell commands (run from the repository root with $R = the output folder).
STAGES: list[tuple[str, str]] = [
    (
        "init-model",
        """if [ -n "${GIVEN_MODEL:-}" ]; then echo "using the given model $MEDMAX_MODEL" >&2
elif [ "$LAYERS" = tiny ]; then medmax init-model --tiny --seed 0 -o "$MEDMAX_MODEL" --force >/dev/null
else medmax init-model --shape anole-7b --layers "$LAYERS" --seed 0 -o "$MEDMAX_MODEL" --force >/dev/null; fi""",
    ),
    (
        "fetch",
        """{ medmax fetch jats examples/sample/jats -q
  medmax fetch jsonl examples/sample/vqa.jsonl --root examples/sample -q; } > "$R/sources.jsonl"
medmax fetch jsonl examples/sample/eval.jsonl --root examples/sample -q -o "$R/eval-sources.jsonl"
""",
    ),
    (
        "synthesize",
        """medmax synthesize "$R/sources.jsonl" --seed 0 -q -o "$R/instances.jsonl"
medmax synthesize "$R/eval-sources.jsonl" --tasks vqa -q -o "$R/eval-instances.jsonl"
""",
    ),
    (
        "tokenize-images",
        'medmax tokenize-images "$R/instances.jsonl" --device "$DEVICE" --dtype bf16 --batch-size 4 -q -o "$R/instances.tok.jsonl"',
    ),
    (
        "pack",
        'medmax pack "$R/instances.tok.jsonl" --seq-len 4096 --seed 0 -q -o "$R/shards"',
    ),
    (
        "finetune",
        """medmax finetune "$R/shards" -o "$R/run" --precision bf16 --micro-batch 1 --max-steps "$FT_STEPS" \\
  --lr 1e-4 --warmup-ratio 0 -q""",
    ),
    (
        "generate-text",
        """medmax generate "$R/eval-instances.jsonl" --adapter "$R/run" --dtype "$GEN_DTYPE" --device "$DEVICE" --mode text \\
  --limit 1 --max-new-tokens 8 --min-new-tokens 1 -q -o "$R/predictions.jsonl\"""",
    ),
    (
        "generate-image",
        """medmax generate "$R/instances.tok.jsonl" --adapter "$R/run" --dtype "$GEN_DTYPE" --device "$DEVICE" \\
  --task image_generation --limit 1 --mode image --seed 0 -q -o "$R/generated-image.jsonl\"""",
    ),
    # A 24-token budget: the 2-layer random model hardly ever samples BOI, so a budget that could
    # hold an image (>= 1,026) would decode ~1,100 text steps through the 65,536-wide head for
    # nothing; the full CFG image is the stage above.
    (
        "generate-interleaved",
        """medmax generate "$R/instances.tok.jsonl" --adapter "$R/run" --dtype "$GEN_DTYPE" --device "$DEVICE" \\
  --task interleaved --limit 1 --mode interleaved --max-new-tokens 24 --min-new-tokens 1 --seed 0 -q \\
  -o "$R/generated-interleaved.jsonl\"""",
    ),
    (
        "detokenize",
        """grep -m1 '"tokens"' "$R/instances.tok.jsonl" | medmax detokenize --device "$DEVICE" -q > "$R/detokenized.jsonl\"""",
    ),
    (
        "score",
        'medmax score "$R/predictions.jsonl" --summary "$R/summary.json" -q -o "$R/scores.jsonl"',
    ),
    (
        "report",
        'medmax report "$R" -o "$R/report" --gallery 2 --device "$DEVICE"',
    ),
]

MEASURE = "--measure-child"


def measure_child(result_file: str, argv: list[str]) -> int:
    """Run argv, then write its wall time and the peak RSS of its largest process to result_file."""
    start = time.monotonic()
    rc = subprocess.call(argv)
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "rc": rc,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),  # / cores = the wall time on an idle machine
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
    }
    with open(result_file, "w") as fh:
        json.dump(result, fh)
    return rc


def run_stage(name: str, script: str, env: dict[str, str], out: Path) -> dict:
    """One stage in a fresh measuring child, so RUSAGE_CHILDREN covers this stage alone."""
    result_file = out / f".stage-{name}.json"
    result_file.unlink(missing_ok=True)
    # `medmax` is this interpreter's module: no console script on PATH needed (a GPU machine has
    # the package on PYTHONPATH only).
    prelude = 'set -euo pipefail\nmedmax() { "$REHEARSAL_PYTHON" -m medmax_cli "$@"; }\n'
    cmd = [sys.executable, __file__, MEASURE, str(result_file), "bash", "-c", prelude + script]
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        result_file.unlink()
    else:
        result = {"rc": rc, "wall_s": None, "peak_rss_mb": None}
    return {"stage": name, **result}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def checks(out: Path, model_dir: Path, real_shape: bool) -> list[str]:
    """What the rehearsal must deliver at real size; returns the failures."""
    import math

    from PIL import Image

    from medmax_cli.vision.spec import VQSpec

    failed: list[str] = []
    spec = VQSpec.from_model_dir(model_dir)
    n_codes, side = spec.tokens_per_image, spec.resolution
    if real_shape and (n_codes, side) != (1024, 512):
        failed.append(f"model: {n_codes} tokens per {side} px image, want 1024 per 512 px")

    gen = [json.loads(line) for line in (out / "generated-image.jsonl").read_text().splitlines() if line]
    images = [
        (rec, rec["images"][part["image"]]) for rec in gen for part in rec["prediction"] if "image" in part
    ]
    if not images:
        failed.append("generate-image: no image generated")
    for rec, image in images:
        tokens = image.get("tokens") or []
        if len(tokens) != n_codes:
            failed.append(f"generate-image {rec['id']}: {len(tokens)} codes, want {n_codes}")
        png = out / "media" / image["path"]
        size = Image.open(png).size
        if size != (side, side):
            failed.append(f"generate-image {rec['id']}: {png} is {size}, want {(side, side)}")
    adapters = {rec.get("generation", {}).get("settings", {}).get("adapter") for rec in gen}
    if None in adapters or not adapters:
        failed.append(f"generate-image: records do not name the adapter they used ({adapters})")

    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    from medmax_cli.pack.reader import PackedShards

    boi, eoi = 8197, 8196
    blocks = 0
    for row in PackedShards(out / "shards", verify=True).iter_rows(rank=0, world_size=1, seed=0):
        ids = row.input_ids.tolist()
        for i, t in enumerate(ids):
            if t == boi:
                if eoi not in ids[i:] or ids.index(eoi, i) - i + 1 != n_codes + 2:
                    failed.append(f"pack: an image block at {i} is not {n_codes + 2} tokens")
                blocks += 1
    if manifest.get("seq_len") not in (None, 4096):
        failed.append(f"pack: seq_len {manifest.get('seq_len')}, want 4096")
    if not blocks:
        failed.append("pack: no image block in the packed rows")

    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line]
    losses = [m["loss"] for m in metrics if "loss" in m]
    if not losses or not all(math.isfinite(x) for x in losses):
        failed.append(f"finetune: losses {losses} are not all finite")
    return failed


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == MEASURE:
        return measure_child(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="rehearsal-out")
    ap.add_argument("--layers", default="2", help="decoder layers of the anole-7b-shaped model, or 'tiny'")
    ap.add_argument(
        "--model", default=None, help="use this model directory (real weights) instead of building one"
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--finetune-steps", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=1200.0)
    ap.add_argument("--budget-gb", type=float, default=16.0)
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated stages to rerun in an existing OUT (merged into its stages.json)",
    )
    ap.add_argument("--checks", action="store_true", help="with --only: run the checks too")
    args = ap.parse_args()

    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    only = [s for s in args.only.split(",") if s]
    if not only:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        R=str(out),
        REHEARSAL_PYTHON=sys.executable,
        LAYERS=str(args.layers),
        FT_STEPS=str(args.finetune_steps),
        DEVICE=args.device,
        GEN_DTYPE="bfloat16",  # the model's own precision (bf16 weights), on CPU too
        GIVEN_MODEL=args.model or "",
        MEDMAX_MODEL=str(Path(args.model).resolve() if args.model else out / "model"),
        MEDMAX_MEDIA=str(out / "media"),
        MEDMAX_STATS_DIR=str(out / "stats"),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
    )
    results = []
    total_start = time.monotonic()
    status = 0
    for name, script in STAGES:
        if only and name not in only:
            continue
        before = load_avg()
        print(f"==> {name}", file=sys.stderr, flush=True)
        res = run_stage(name, script, env, out)
        res["load_avg_before"] = before
        results.append(res)
        print(
            f"    {name}: {res['wall_s']} s, peak RSS {res['peak_rss_mb']} MB (load {before[0]})",
            file=sys.stderr,
            flush=True,
        )
        if res["rc"] != 0:
            print(f"rehearsal: stage {name} failed (exit {res['rc']})", file=sys.stderr)
            status = 1
            break
    total = round(time.monotonic() - total_start, 1)
    peak = max((r["peak_rss_mb"] or 0) for r in results) if results else 0
    failed: list[str] = []
    if only and (out / "stages.json").is_file():  # keep the other stages' figures of the earlier run
        earlier = json.loads((out / "stages.json").read_text()).get("stages", [])
        rerun = {r["stage"] for r in results}
        order = [name for name, _ in STAGES]
        results = sorted(
            [r for r in earlier if r["stage"] not in rerun] + results, key=lambda r: order.index(r["stage"])
        )
        total = round(sum(r["wall_s"] or 0 for r in results), 1)
        peak = max((r["peak_rss_mb"] or 0) for r in results)
    if status == 0 and (not only or args.checks):
        failed = checks(out, Path(env["MEDMAX_MODEL"]), real_shape=args.layers != "tiny")
        if total > args.budget_s:
            failed.append(f"total {total} s over the budget {args.budget_s} s")
        if peak > args.budget_gb * 1024:
            failed.append(f"peak RSS {peak} MB over the budget {args.budget_gb} GB")
    summary = {
        "layers": args.layers,
        "model": env["MEDMAX_MODEL"],
        "device": args.device,
        "omp_num_threads": env["OMP_NUM_THREADS"],
        "cpus": os.cpu_count(),
        "total_s": total,
        "peak_rss_mb": peak,
        "load_avg_end": load_avg(),
        "stages": results,
        "failed_checks": failed,
        "ok": status == 0 and not failed,
    }
    (out / "stages.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'stage':<22}{'wall s':>10}{'peak RSS MB':>14}", file=sys.stderr)
    for r in results:
        print(f"{r['stage']:<22}{r['wall_s']!s:>10}{r['peak_rss_mb']!s:>14}", file=sys.stderr)
    print(f"{'total':<22}{total:>10}{peak:>14}", file=sys.stderr)
    for f in failed:
        print(f"rehearsal check failed: {f}", file=sys.stderr)
    print(f"rehearsal: {'ok' if summary['ok'] else 'FAILED'}; {out / 'stages.json'}", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
