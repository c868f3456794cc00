"""Run metrics: RUN/metrics.jsonl (one line per logged step), TensorBoard events, RUN/loss.png.

Rank 0 only. On resume, lines after the resumed step are dropped first, so the file reads as one
uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medmax_cli.atomic import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsLog:
    def __init__(self, run: str | Path, start_step: int = 0):
        self.run = Path(run)
        self.run.mkdir(parents=True, exist_ok=True)
        path = self.run / METRICS_FILE
        kept = [m for m in read_metrics(self.run) if m["step"] <= start_step]
        atomic_write_bytes(path, "".join(json.dumps(m) + "\n" for m in kept).encode("utf-8"))
        self.handle = open(path, "a", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run / "tb"), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # tensorboard not installed: the jsonl file still has everything
            pass

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens"):
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        if self.tb is not None:
            self.tb.close()
        plot_loss(self.run)


def plot_loss(run: str | Path) -> Path | None:
    """RUN/loss.png: training loss per step (matplotlib, Agg backend: no display needed)."""
    rows = read_metrics(run)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (per supervised token)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run) / PLOT_FILE
    tmp = out.with_name(f".{PLOT_FILE}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out
