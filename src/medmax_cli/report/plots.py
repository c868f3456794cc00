"""The report's charts: small matplotlib PNGs (Agg backend, no display), one function each.

Each returns the PNG's file name inside the report folder, or None when there is nothing to draw.
Files are written under a temporary name and renamed, like every other output.

Labels are data (task names, reasons, sources): every chart is drawn under NO_MATH, so a `$` in a
label is a dollar sign, never matplotlib mathtext or LaTeX (a task named `$x^2$` prints as typed,
and an unbalanced `$\\frac{` cannot fail the report).
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

NO_MATH = {"text.usetex": False, "text.parse_math": False}
MAX_LABEL = 60  # characters of a label drawn; longer ones end in "..."
MAX_BARS = 40  # rows of a per-task chart (a figure's height grows with them)


def _label(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 3] + "..."


F = TypeVar("F", bound=Callable[..., Any])


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def no_math(function: F) -> F:
    """Run a chart function with mathtext and usetex off (text objects read these when made and drawn)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(NO_MATH):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _save(fig: Any, out: Path, name: str) -> str:
    plt = _plt()
    fig.tight_layout()
    tmp = out / f".{name}.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out / name)
    return name


@no_math
def bar(
    counts: Counter | dict[str, int], out: Path, name: str, *, title: str, xlabel: str = "count"
) -> str | None:
    """Horizontal bars, largest on top."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:20]
    if not items:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(items) + 1.2))
    labels = [_label(k) for k, _ in items][::-1]
    ax.barh(range(len(labels)), [v for _, v in items][::-1], color="#4a78b5")
    ax.set_yticks(range(len(labels)), labels)  # positions, not categories: equal labels stay apart
    ax.set_title(_label(title))
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, name)


@no_math
def histogram(
    values: list[float], out: Path, name: str, *, title: str, xlabel: str, bins: int = 20
) -> str | None:
    if not values:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(values, bins=min(bins, max(1, len(set(values)))), color="#4a78b5", edgecolor="white")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.grid(alpha=0.3)
    return _save(fig, out, name)


@no_math
def image_sizes(sides: list[tuple[int, int]], out: Path, name: str) -> str | None:
    """Width x height scatter plus the histogram of the longer side."""
    if not sides:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.scatter([w for w, _ in sides], [h for _, h in sides], s=10, alpha=0.6, color="#4a78b5")
    left.set_xlabel("width (px)")
    left.set_ylabel("height (px)")
    left.set_title("image sizes")
    left.grid(alpha=0.3)
    longest = [max(w, h) for w, h in sides]
    right.hist(longest, bins=min(20, max(1, len(set(longest)))), color="#4a78b5", edgecolor="white")
    right.set_xlabel("longer side (px)")
    right.set_title("longer side")
    right.grid(alpha=0.3)
    return _save(fig, out, name)


@no_math
def training_curves(rows: list[dict[str, Any]], out: Path, name: str) -> str | None:
    """Loss, learning rate and tokens/s per step from RUN/metrics.jsonl."""
    if not rows:
        return None
    plt = _plt()
    keys = [k for k in ("loss", "lr", "tokens_per_s") if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3))
    axes = [axes] if len(keys) == 1 else list(axes)
    labels = {"loss": "training loss", "lr": "learning rate", "tokens_per_s": "tokens/s"}
    for ax, key in zip(axes, keys, strict=True):
        points = [
            (r["step"], r[key])
            for r in rows
            if isinstance(r.get("step"), (int, float)) and isinstance(r.get(key), (int, float))
        ]
        ax.plot([s for s, _ in points], [v for _, v in points], lw=1.3, color="#4a78b5")
        ax.set_title(labels[key])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(fig, out, name)


@no_math
def task_accuracy(
    tasks: dict[str, dict[str, Any]], out: Path, name: str, *, with_interval: Callable[[dict], bool]
) -> str | None:
    """Per-task mean with its 95% bootstrap interval, where `with_interval` says one may be shown."""
    rows = [
        (str(t), v)
        for t, v in tasks.items()
        if isinstance(v, dict) and isinstance(v.get("mean"), (int, float))
    ]
    if not rows:
        return None
    rows = rows[:MAX_BARS][::-1]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
    names = [_label(t) for t, _ in rows]
    means = [float(v["mean"]) for _, v in rows]
    spans = [v["ci95"] if with_interval(v) else [m, m] for m, (_, v) in zip(means, rows, strict=True)]
    lows = [max(0.0, m - s[0]) for m, s in zip(means, spans, strict=True)]
    highs = [max(0.0, s[1] - m) for m, s in zip(means, spans, strict=True)]
    ax.barh(range(len(names)), means, xerr=[lows, highs], color="#4a78b5", capsize=3)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (95% bootstrap CI where n allows)")
    ax.set_title("evaluation per task")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, name)
