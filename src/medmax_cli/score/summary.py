"""The summary of scored lines: per task, the 12-task macro average, sub-averages, provenance.

Everything in it is a pure function of the scored lines, the seed and the options, so
the same input and seed give byte-identical JSON (floats rounded to 6 places, keys in
a fixed order, no clock).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson

from medmax_cli import __version__
from medmax_cli.score.bootstrap import N_BOOT, mean_se, percentile_ci, replicates, stratified_mean, task_seed
from medmax_cli.score.tasks import QUESTION_TYPES, VQA_TASKS

SUMMARY_SCHEMA = "medmax-score-summary/1"
KEEP = ("id", "eval_task", "question_type", "metric", "score", "status", "cluster")


def compact(line: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a scored line the summary needs (kept in memory while streaming)."""
    get = line.get
    return {
        "id": line["id"],
        "eval_task": line["eval_task"],
        "question_type": get("question_type"),
        "metric": get("metric"),
        "score": line["score"],
        "status": line["status"],
        "cluster": get("cluster"),
        "extra": get("extra"),
    }


def _r(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _ci(ci: tuple[float, float] | None) -> list[float | None] | None:
    return None if ci is None else [_r(ci[0]), _r(ci[1])]


def summarise(
    lines: Iterable[Mapping[str, Any]],
    *,
    seed: int = 0,
    n_boot: int = N_BOOT,
    cluster: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Per task n, scored, coverage, mean, stderr, bootstrap CI; macro and sub-averages."""
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for line in lines:
        by_task[str(line["eval_task"])].append(line)
        # a second score of the same item (interleaved: the text's relative score) is its own bucket
        for name, value in (line.get("extra") or {}).items():
            if isinstance(value, Mapping):  # a second score that is not plainly scored: keeps its status
                value, status = value.get("score"), str(value.get("status") or "unscored")
            else:
                status = "scored" if value is not None else "unscored"
            by_task[name].append(
                {
                    "id": line["id"],
                    "eval_task": name,
                    "question_type": None,
                    "metric": "relative_score",
                    "score": value,
                    "status": status,
                    "cluster": line.get("cluster"),
                }
            )

    tasks: dict[str, Any] = {}
    reps: dict[str, np.ndarray] = {}
    for name in _ordered(by_task):
        items = by_task[name]
        scored = [x for x in items if x["score"] is not None]
        values = [float(x["score"]) for x in scored]
        clusters = [str(x.get("cluster") or x["id"]) for x in scored] if cluster else None
        mean, se = mean_se(values)
        seed_t = task_seed(seed, name)
        if values:
            reps[name] = replicates(values, seed=seed_t, n_boot=n_boot, clusters=clusters)
        statuses = defaultdict(int)
        for x in items:
            statuses[x["status"]] += 1
        qtypes = {x.get("question_type") for x in items} - {None}
        tasks[name] = {
            "metric": items[0].get("metric") or "accuracy",
            "question_type": VQA_TASKS[name][0]
            if name in VQA_TASKS
            else (qtypes.pop() if len(qtypes) == 1 else None),
            "n": len(items),
            "scored": len(scored),
            "coverage": _r(len(scored) / len(items)),
            "missing": statuses.get("missing", 0),
            "unscored": statuses.get("unscored", 0),
            "judge_failed": statuses.get("judge_failed", 0),
            "judge_error": statuses.get("judge_error", 0),
            "dropped": statuses.get("dropped", 0),
            "unparsed": statuses.get("unparsed", 0),
            "rejected": statuses.get("rejected", 0),
            "mean": _r(mean),
            # every item, those with no score (dropped, unparsed, unscored, ...) counted as 0; none
            # while a judge request failed (a failure is no answer, right or wrong)
            "mean_all_items": _r(sum(values) / len(items))
            if items and not statuses.get("judge_error")
            else None,
            "stderr": _r(se),
            "ci95": _ci(percentile_ci(reps[name]) if name in reps else None),
            "seed": seed_t,
        }

    present = [t for t in VQA_TASKS if t in reps]
    macro = _average(present, tasks, reps)
    macro["missing_tasks"] = [t for t in VQA_TASKS if t not in tasks]  # not in the input at all
    macro["unscored_tasks"] = [
        t for t in VQA_TASKS if t in tasks and t not in reps
    ]  # present, nothing scored
    # judge requests that got no reply, in any task (the 12 and the others): rerun to ask again
    macro["judge_errors"] = sum(t["judge_error"] for t in tasks.values())
    # complete: every item of the 12 tasks has a score, or is one MedMax itself drops (a judge
    # reply it cannot parse), which its own number leaves out as the mean here does; and no judge
    # request anywhere failed
    macro["complete"] = (
        not macro["missing_tasks"]
        and not macro["unscored_tasks"]
        and not macro["judge_errors"]
        and all(tasks[t]["scored"] + tasks[t]["dropped"] == tasks[t]["n"] for t in present)
    )
    by_type = {
        qtype: _average([t for t in present if VQA_TASKS[t][0] == qtype], tasks, reps)
        for qtype in QUESTION_TYPES
    }
    return {
        "schema": SUMMARY_SCHEMA,
        "provenance": {
            "medmax_cli": __version__,
            "seed": seed,
            "n_boot": n_boot,
            "cluster": "image" if cluster else None,
            **dict(provenance or {}),
        },
        "macro": macro,
        "by_question_type": by_type,
        "tasks": tasks,
    }


def _average(names: list[str], tasks: Mapping[str, Any], reps: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Unweighted mean of task means with a stratified bootstrap CI."""
    if not names:
        return {"tasks": [], "n_tasks": 0, "mean": None, "ci95": None}
    mean = float(np.mean([tasks[t]["mean"] for t in names]))
    ci = percentile_ci(stratified_mean({t: reps[t] for t in names}))
    return {"tasks": names, "n_tasks": len(names), "mean": _r(mean), "ci95": _ci(ci)}


def _ordered(names: Iterable[str]) -> list[str]:
    """The 12 VQA tasks in table order first, then the others alphabetically."""
    names = set(names)
    return [t for t in VQA_TASKS if t in names] + sorted(names - set(VQA_TASKS))


def to_json(summary: Mapping[str, Any]) -> bytes:
    return orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n"


# --------------------------------------------------------------------------- Markdown


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """Per-task rows and the averages, values x100 (accuracy in %, cosine x100, relative score %)."""
    rows = [
        "| task | metric | n | scored | coverage | mean | se | 95% CI |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, t in summary["tasks"].items():
        label = VQA_TASKS[name][1] if name in VQA_TASKS else name
        ci = t["ci95"]
        rows.append(
            f"| {label} | {t['metric']} | {t['n']} | {t['scored']} | {_pct(t['coverage'])}% | "
            f"{_pct(t['mean'])} | {_pct(t['stderr'])} | "
            f"{'-' if ci is None else f'{_pct(ci[0])}-{_pct(ci[1])}'} |"
        )
    macro = summary["macro"]
    averages = [("VQA average", macro, len(VQA_TASKS))] + [
        (q.replace("_", " "), summary["by_question_type"][q], sum(v[0] == q for v in VQA_TASKS.values()))
        for q in QUESTION_TYPES
    ]
    for label, avg, total in averages:
        ci = avg["ci95"]
        rows.append(
            f"| **{label}** ({avg['n_tasks']}/{total} tasks) | accuracy | | | | {_pct(avg['mean'])} | | "
            f"{'-' if ci is None else f'{_pct(ci[0])}-{_pct(ci[1])}'} |"
        )
    notes = []
    if macro["missing_tasks"]:
        notes.append(
            f"Not in this input ({len(macro['missing_tasks'])} of the 12 tasks): "
            + ", ".join(macro["missing_tasks"])
            + "."
        )
    if macro["unscored_tasks"]:
        notes.append(
            "Present but unscored (open questions need --judge-url/--judge-model): "
            + ", ".join(macro["unscored_tasks"])
            + "."
        )
    for key, why in (
        ("judge_error", "judge requests that got no reply, not cached: rerun to ask them again"),
        ("dropped", "judge replies MedMax's parser cannot score, left out of the mean as MedMax does"),
        ("unparsed", "no clear answer under --rules robust (no judge asked), left out of the mean"),
        ("rejected", "predictions rejected as bad records (see the rejects file)"),
    ):
        counts = [(n, t) for n, t in summary["tasks"].items() if t.get(key)]
        if counts:
            notes.append(
                f"{key.capitalize()} ({why}): "
                + ", ".join(f"{n} {t[key]} (all-items mean {_pct(t['mean_all_items'])})" for n, t in counts)
                + "."
            )
    if notes:
        rows += ["", *notes, "The averages are over the tasks scored; coverage < 100% means unscored items."]
    return "\n".join(rows) + "\n"
