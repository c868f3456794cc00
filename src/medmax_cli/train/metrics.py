"""Run metrics: RUN/metrics.jsonl (one line per logged step), RUN/loss.png, plus the trackers chosen.

Rank 0 only. On resume, lines after the resumed step are dropped first, so the file reads as one
uninterrupted run. metrics.jsonl is always written (the report and the tests read it); on top,
each name in `loggers` adds one tracker behind the same two calls (`log(row, step)`, `close()`):
`tensorboard` (the default, RUN/tb), `wandb` and `mlflow`. A tracker's package is imported only
when it is chosen, so neither is a dependency; a chosen one that is not installed is an error
that says what to install (a missing TensorBoard with the default setting only warns).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from medmax_cli.atomic import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens")
log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log(self, row: dict[str, Any], step: int) -> None: ...
    def close(self) -> None: ...


class TrackerError(ValueError):
    pass


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {f"train/{k}": float(row[k]) for k in SCALARS if row.get(k) is not None}


class _TensorBoard:
    def __init__(self, run: Path, start_step: int, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run / "tb"), purge_step=start_step + 1 if start_step else None)

    def log(self, row: dict[str, Any], step: int) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """Weights & Biases; project/entity/mode come from the usual WANDB_* environment variables."""

    def __init__(self, run: Path, start_step: int, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "medmax"),
            name=run.name,
            dir=str(run),
            config=config,
            resume="allow" if start_step else None,
        )

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(_scalars(row), step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    """MLflow; the tracking server comes from MLFLOW_TRACKING_URI (default: ./mlruns)."""

    def __init__(self, run: Path, start_step: int, config: dict[str, Any]):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "medmax"))
        self.active = mlflow.start_run(run_name=run.name)
        mlflow.log_params({k: str(v)[:500] for k, v in config.items()})

    def log(self, row: dict[str, Any], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in _scalars(row).items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS: dict[str, tuple[Callable[..., Tracker], str]] = {
    "tensorboard": (_TensorBoard, "tensorboard"),
    "wandb": (_Wandb, "wandb"),
    "mlflow": (_MLflow, "mlflow"),
}


def parse_loggers(spec: str | None) -> list[str]:
    """'tensorboard,wandb' -> names; 'none' or '' -> none; an unknown name lists the valid ones."""
    names = [n.strip().lower() for n in (spec or "").split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TrackerError(f"unknown logger {unknown[0]!r}; choose from {', '.join(TRACKERS)} or none")
    return names


def check_loggers(spec: str | None) -> list[str]:
    """Names, each chosen tracker's package installed (checked without importing it)."""
    import importlib.util

    names = parse_loggers(spec)
    for name in names:
        package = TRACKERS[name][1]
        if name != "tensorboard" and importlib.util.find_spec(package) is None:
            raise TrackerError(
                f"--log-to {name}: the {package} package is not installed (pip install {package})"
            )
    return names


def open_trackers(
    spec: str | None, run: Path, start_step: int = 0, config: dict[str, Any] | None = None
) -> list[Tracker]:
    trackers: list[Tracker] = []
    for name in parse_loggers(spec):
        factory, package = TRACKERS[name]
        try:
            trackers.append(factory(run, start_step, config or {}))
        except ImportError:
            if name == "tensorboard" and spec == "tensorboard":  # the default: metrics.jsonl has everything
                log.warning("tensorboard is not installed: metrics go to %s only", run / METRICS_FILE)
                continue
            raise TrackerError(
                f"--log-to {name}: the {package} package is not installed (pip install {package})"
            ) from None
    return trackers


class MetricsError(ValueError):
    """metrics.jsonl has a damaged line before its last one (not a crash mid-write: refuse)."""


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The rows of RUN/metrics.jsonl. A torn last line (the run died mid-write) is dropped with a
    warning naming the file; a damaged line before it is a MetricsError naming file and line."""
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    rows: list[dict[str, Any]] = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics row with an integer step")
        except (ValueError, UnicodeDecodeError) as exc:
            if number == last:
                log.warning(
                    "%s: dropped its torn last line %d (a run stopped while writing it): %.60r",
                    path,
                    number + 1,
                    line,
                )
                continue
            raise MetricsError(f"{path}: line {number + 1} is not a metrics row ({exc})") from None
        rows.append(row)
    return rows


class MetricsLog:
    def __init__(
        self,
        run: str | Path,
        start_step: int = 0,
        loggers: str | None = "tensorboard",
        config: dict[str, Any] | None = None,
    ):
        self.run = Path(run)
        self.run.mkdir(parents=True, exist_ok=True)
        path = self.run / METRICS_FILE
        kept = [m for m in read_metrics(self.run) if m["step"] <= start_step]
        atomic_write_bytes(path, "".join(json.dumps(m) + "\n" for m in kept).encode("utf-8"), sweep=True)
        self.handle = open(path, "a", encoding="utf-8")
        self.trackers = open_trackers(loggers, self.run, start_step, config)

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        for tracker in self.trackers:
            tracker.log(row, row["step"])

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
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
