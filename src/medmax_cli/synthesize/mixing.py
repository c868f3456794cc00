"""Task mixing: `--ratio task=weight,...` and `--max-per-task N`, deterministic for a seed.

The ratio fixes the share of each listed task in the output; the largest output that respects
every share (and the per-task cap) is kept. Tasks not listed keep all their instances (then the
cap); weight 0 drops a task. Which instances of a task survive is decided by ranking them by
sha256(seed, id), so the choice does not depend on input order; survivors keep input order.
`mix_stream` does the same in memory that does not grow with the corpus (the stage uses it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from medmax_cli.records import TASKS
from medmax_cli.synthesize.textutil import seeded_unit


def parse_ratio(spec: str | None) -> dict[str, float] | None:
    """'vqa=2,captioning=1' -> {'vqa': 2.0, 'captioning': 1.0}; ValueError naming the bad part."""
    if not spec:
        return None
    ratio: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, weight_text = part.partition("=")
        name = name.strip()
        if not sep or name not in TASKS:
            raise ValueError(
                f"--ratio: {part.strip()!r} must be task=weight with a task among {', '.join(TASKS)}"
            )
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(f"--ratio: weight {weight_text.strip()!r} of {name} is not a number") from None
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"--ratio: weight of {name} must be >= 0")
        ratio[name] = weight
    if not any(ratio.values()):
        raise ValueError("--ratio: at least one weight must be > 0")
    return ratio


def quotas(
    counts: Mapping[str, int], ratio: Mapping[str, float] | None, max_per_task: int | None
) -> dict[str, int]:
    """How many instances of each task to keep."""
    available = {t: min(n, max_per_task) if max_per_task is not None else n for t, n in counts.items()}
    quota = dict(available)
    if ratio:
        listed = {t: w for t, w in ratio.items() if w > 0 and available.get(t, 0) > 0}
        scale = min((available[t] / w for t, w in listed.items()), default=0.0)
        for task, weight in ratio.items():
            if task in quota:
                quota[task] = min(available[task], math.floor(scale * weight + 1e-9))
    return quota


def mix(
    instances: Sequence[dict[str, Any]],
    *,
    ratio: Mapping[str, float] | None,
    max_per_task: int | None,
    seed: int,
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(kept in input order, [(dropped, reason)])."""
    counts = Counter(str(x.get("task")) for x in instances)
    quota = quotas(counts, ratio, max_per_task)
    ranked: dict[str, list[int]] = {}
    for i, x in enumerate(instances):
        ranked.setdefault(str(x.get("task")), []).append(i)
    keep: set[int] = set()
    for task, indices in ranked.items():
        indices.sort(key=lambda i: (seeded_unit(seed, instances[i]["id"], "mix"), i))
        keep.update(indices[: quota[task]])
    kept, dropped = [], []
    for i, x in enumerate(instances):
        if i in keep:
            kept.append(x)
        else:
            task = str(x.get("task"))
            why = "weight 0" if ratio and ratio.get(task) == 0 else f"quota {quota[task]} of {counts[task]}"
            dropped.append((x, f"mixing: {task} over its {why}"))
    return kept, dropped


def mix_stream(
    instances: Iterable[dict[str, Any]],
    *,
    ratio: Mapping[str, float] | None,
    max_per_task: int | None,
    seed: int,
    spill_dir: str | None = None,
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """`mix` in bounded memory: (instance, None) if kept, (instance, reason) if dropped, input order.

    The quotas need every task's count, so the instances are spilled to a temporary file on the
    first pass (memory keeps 9 bytes an instance: its rank key and the keep flag) and read back on
    the second; the kept set is exactly `mix`'s (the same (key, position) ranking within a task).
    """
    import tempfile
    from array import array

    import numpy as np
    import orjson

    keys: dict[str, array] = {}
    with tempfile.TemporaryFile(prefix="medmax-mix-", dir=spill_dir) as spill:
        for x in instances:
            keys.setdefault(str(x.get("task")), array("d")).append(seeded_unit(seed, x["id"], "mix"))
            spill.write(orjson.dumps(x))
            spill.write(b"\n")
        counts = {task: len(k) for task, k in keys.items()}
        quota = quotas(counts, ratio, max_per_task)
        keep: dict[str, np.ndarray] = {}
        for task, k in keys.items():
            values = np.frombuffer(k, dtype=np.float64)
            flags = np.zeros(len(values), dtype=bool)
            flags[np.lexsort((np.arange(len(values)), values))[: quota[task]]] = True  # by key, then position
            keep[task] = flags
        del keys
        seen = dict.fromkeys(counts, 0)
        spill.seek(0)
        for line in spill:
            x = orjson.loads(line)
            task = str(x.get("task"))
            position = seen[task]
            seen[task] += 1
            if keep[task][position]:
                yield x, None
            else:
                why = (
                    "weight 0" if ratio and ratio.get(task) == 0 else f"quota {quota[task]} of {counts[task]}"
                )
                yield x, f"mixing: {task} over its {why}"
