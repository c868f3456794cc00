"""`--report DIR`: the summary JSON, the Markdown table and a bar chart of per-task scores with CIs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medmax_cli.score.summary import markdown_table, to_json
from medmax_cli.score.tasks import VQA_TASKS
from medmax_cli.streams import AtomicFile


def write_report(summary: Mapping[str, Any], directory: str | Path) -> list[Path]:
    """Write summary.json, table.md and scores.png into `directory`; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "summary.json", directory / "table.md", directory / "scores.png"]
    with AtomicFile(paths[0]) as handle:
        handle.write(to_json(summary))
    with AtomicFile(paths[1]) as handle:
        handle.write(markdown_table(summary).encode())
    with AtomicFile(paths[2]) as handle:
        bar_chart(summary, handle)
    return paths


def bar_chart(summary: Mapping[str, Any], handle: Any) -> None:
    """Per-task mean x100 with the 95% CI as error bars, plus the VQA average (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names, means, lows, highs = [], [], [], []
    rows = [(VQA_TASKS[n][1] if n in VQA_TASKS else n, t) for n, t in summary["tasks"].items()]
    macro = summary["macro"]
    if macro["mean"] is not None:
        rows.append((f"VQA average ({macro['n_tasks']}/12)", macro))
    for label, row in rows:
        if row.get("mean") is None:
            continue
        mean = 100 * row["mean"]
        ci = row.get("ci95") or [row["mean"], row["mean"]]
        names.append(label)
        means.append(mean)
        lows.append(max(0.0, mean - 100 * ci[0]))
        highs.append(max(0.0, 100 * ci[1] - mean))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 4.0), dpi=100)
    positions = range(len(names))
    colors = ["#4c72b0"] * (len(names) - (1 if macro["mean"] is not None else 0)) + (
        ["#dd8452"] if macro["mean"] is not None else []
    )
    ax.bar(positions, means, yerr=[lows, highs], capsize=3, color=colors)
    ax.set_xticks(list(positions), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("score x100 (95% bootstrap CI)")
    ax.set_title(f"medmax score ({summary['provenance'].get('rules_version', '')})")
    ax.set_ylim(0, max([100.0] + [m + h for m, h in zip(means, highs, strict=True)]))
    fig.tight_layout()
    fig.savefig(handle, format="png", metadata={"Software": None})
    plt.close(fig)
