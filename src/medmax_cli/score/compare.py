"""`--compare A B`: the paired difference B - A per task and for the VQA macro average.

Items are paired by id; only items scored in both runs are compared (the counts of the
others are reported). Replicates resample the paired items (or image clusters) with the
same per-task seed as the summary, so the macro CI is stratified the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from medmax_cli.score.bootstrap import (
    N_BOOT,
    mean_se,
    paired_differences,
    percentile_ci,
    stratified_mean,
    task_seed,
)
from medmax_cli.score.summary import _ordered, _r
from medmax_cli.score.tasks import VQA_TASKS


def compare(
    lines_a: Iterable[Mapping[str, Any]],
    lines_b: Iterable[Mapping[str, Any]],
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
    cluster: bool = False,
) -> dict[str, Any]:
    a, b = _by_id(lines_a, "A"), _by_id(lines_b, "B")
    pairs: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    only_a = only_b = unscored = judge_errors = 0
    for rid, x in a.items():
        y = b.get(rid)
        if y is None:
            only_a += 1
            continue
        if x["score"] is None or y["score"] is None:
            unscored += 1
            judge_errors += "judge_error" in (x.get("status"), y.get("status"))
            continue
        pairs[str(x["eval_task"])].append(
            (float(x["score"]), float(y["score"]), str(x.get("cluster") or rid))
        )
    only_b = sum(1 for rid in b if rid not in a)

    tasks: dict[str, Any] = {}
    reps: dict[str, np.ndarray] = {}
    for name in _ordered(pairs):
        sa, sb, cl = zip(*pairs[name], strict=True)
        reps[name] = paired_differences(
            sa, sb, seed=task_seed(seed, name), n_boot=n_boot, clusters=list(cl) if cluster else None
        )
        diff, se = mean_se(np.asarray(sb) - np.asarray(sa))
        ci = percentile_ci(reps[name])
        tasks[name] = {
            "n_paired": len(sa),
            "mean_a": _r(float(np.mean(sa))),
            "mean_b": _r(float(np.mean(sb))),
            "diff": _r(diff),
            "stderr": _r(se),
            "ci95": None if ci is None else [_r(ci[0]), _r(ci[1])],
        }
    present = [t for t in VQA_TASKS if t in reps]
    macro: dict[str, Any] = {"tasks": present, "n_tasks": len(present), "diff": None, "ci95": None}
    if present:
        ci = percentile_ci(stratified_mean({t: reps[t] for t in present}))
        macro.update(
            diff=_r(float(np.mean([tasks[t]["diff"] for t in present]))),
            ci95=None if ci is None else [_r(ci[0]), _r(ci[1])],
        )
    return {
        "schema": "medmax-score-compare/1",
        "seed": seed,
        "n_boot": n_boot,
        "cluster": "image" if cluster else None,
        # judge_error_in_either: pairs left out because a judge request failed (rerun that side)
        "counts": {
            "only_a": only_a,
            "only_b": only_b,
            "unscored_in_either": unscored,
            "judge_error_in_either": judge_errors,
        },
        "macro": macro,
        "tasks": tasks,
    }


def _by_id(lines: Iterable[Mapping[str, Any]], side: str) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for line in lines:
        if line["id"] in out:
            raise ValueError(f"--compare {side}: duplicate id {line['id']!r}")
        score = line.get("score")  # a hand-edited line must not pair as a number it is not (true -> 1.0)
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)
        ):
            raise ValueError(
                f"--compare {side}: record {line['id']!r}: 'score' is not a number: {score!r:.40}"
            )
        if "eval_task" not in line:
            raise ValueError(
                f"--compare {side}: record {line['id']!r} has no 'eval_task' (not a scored line)"
            )
        out[line["id"]] = line
    return out


def markdown_compare(result: Mapping[str, Any]) -> str:
    rows = ["| task | n paired | A | B | B - A | 95% CI |", "| --- | ---: | ---: | ---: | ---: | --- |"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:+.1f}" if x < 0 or x > 0 else "0.0"

    for name, t in result["tasks"].items():
        ci = t["ci95"]
        rows.append(
            f"| {VQA_TASKS[name][1] if name in VQA_TASKS else name} | {t['n_paired']} | "
            f"{100 * t['mean_a']:.1f} | {100 * t['mean_b']:.1f} | {pct(t['diff'])} | "
            f"{'-' if ci is None else f'{pct(ci[0])} to {pct(ci[1])}'} |"
        )
    macro = result["macro"]
    ci = macro["ci95"]
    rows.append(
        f"| **VQA average** ({macro['n_tasks']}/12) | | | | {pct(macro['diff'])} | "
        f"{'-' if ci is None else f'{pct(ci[0])} to {pct(ci[1])}'} |"
    )
    failed = result["counts"].get("judge_error_in_either")
    if failed:
        rows += ["", f"Left out: {failed} pairs with a judge_error on a side (rerun its score to ask again)."]
    return "\n".join(rows) + "\n"
