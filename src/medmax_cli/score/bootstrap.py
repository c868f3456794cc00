"""Seeded bootstrap: per-task CIs, stratified macro CIs, paired differences.

Each task draws its replicates from its own generator seeded by a hash of (seed, task
name), so a task's CI does not move when other tasks are added or reordered, and the
macro average's replicate r is the mean of every task's replicate r (a stratified
bootstrap: items are resampled within each task, never across tasks).
With `clusters` (e.g. the image sha256), whole clusters are resampled, since several
questions about one image are not independent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95
_CHUNK_CELLS = 2_000_000  # replicates x clusters per block, bounds memory (~16 MB of int64)


def task_seed(seed: int, name: str) -> int:
    """A 64-bit seed from the run seed and a task name (stable across Python runs)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error std(ddof=1)/sqrt(n) (REFERENCE.md 7); None where undefined."""
    n = len(values)
    if n == 0:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if n < 2:
        return mean, None
    return mean, float(arr.std(ddof=1) / math.sqrt(n))


def replicates(
    values: Sequence[float], *, seed: int, n_boot: int = N_BOOT, clusters: Sequence[str] | None = None
) -> np.ndarray:
    """Bootstrap replicate means, shape [n_boot]; resamples clusters when given."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return np.full(n_boot, np.nan)
    if clusters is None:
        sums, counts = arr, np.ones_like(arr)
    else:
        if len(clusters) != arr.size:
            raise ValueError("clusters must have one entry per value")
        _, inverse = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
        sums = np.bincount(inverse, weights=arr)  # [k] score total per cluster
        counts = np.bincount(inverse).astype(np.float64)  # [k] items per cluster
    k = sums.size
    # Clusters with the same (score total, size) are interchangeable, so resampling k clusters with
    # replacement is drawing how many of each kind: Multinomial(k, share of each kind). Same
    # distribution as indexing, but O(kinds) per replicate: 0/1 accuracy has at most a few kinds.
    kinds, freq = np.unique(np.stack([sums, counts], axis=1), axis=0, return_counts=True)  # [u, 2], [u]
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot, dtype=np.float64)
    step = max(1, _CHUNK_CELLS // len(kinds))
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        draws = rng.multinomial(k, freq / k, size=stop - start).astype(
            np.float64
        )  # [chunk, u] clusters per kind
        out[start:stop] = (draws @ kinds[:, 0]) / (draws @ kinds[:, 1])
    return out


def percentile_ci(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """The percentile interval of replicates (None when there are none)."""
    reps = reps[~np.isnan(reps)]
    if reps.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float],
    *,
    seed: int,
    n_boot: int = N_BOOT,
    clusters: Sequence[str] | None = None,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean."""
    if len(values) == 0:
        return None
    return percentile_ci(replicates(values, seed=seed, n_boot=n_boot, clusters=clusters), level)


def stratified_mean(per_task: dict[str, np.ndarray]) -> np.ndarray:
    """Replicates of the unweighted mean over tasks: mean of each task's replicate r."""
    stacked = np.stack([per_task[name] for name in sorted(per_task)])  # [tasks, n_boot]
    return stacked.mean(axis=0)


def paired_differences(
    a: Sequence[float],
    b: Sequence[float],
    *,
    seed: int,
    n_boot: int = N_BOOT,
    clusters: Sequence[str] | None = None,
) -> np.ndarray:
    """Replicates of mean(b - a) over the same items (items resampled jointly)."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    return replicates(diff, seed=seed, n_boot=n_boot, clusters=clusters)
