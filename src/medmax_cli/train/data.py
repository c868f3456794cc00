"""Training batches from packed shards: every rank gets the same number of steps, resumable by step.

The reader (`medmax_cli.pack.reader.PackedShards`) deals rows to ranks; here they are grouped into
micro-batches. Position in the data is a pure function of the optimizer step (epoch = step //
steps_per_epoch, then a row offset), so resuming needs only the step number.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medmax_cli.model.loss import IGNORE_INDEX, sample_weights, shift_targets
from medmax_cli.pack.reader import PackedShards, collate_packed

MODEL_DIR_KEYS = ("dir", "path", "model_dir")


class DataError(ValueError):
    """Shards that cannot be trained on (too few rows, wrong model)."""


def manifest_model_dir(shards: PackedShards) -> str | None:
    """The model directory recorded by `medmax pack` in manifest.json, if any."""
    model = shards.manifest.get("model") or {}
    for key in MODEL_DIR_KEYS:
        if model.get(key):
            value = Path(model[key])
            return str(value if value.is_absolute() or value.exists() else shards.dir / value)
    return None


@dataclass
class TrainData:
    """Rows of one rank, batched: `batches(start_step)` yields one list of micro-batches per step."""

    shards: PackedShards
    rank: int
    world_size: int
    micro_batch: int
    grad_accum: int
    seed: int
    shuffle: bool
    pad_id: int
    pad_multiple: int = 1  # pad each micro-batch to a multiple of this (FlexAttention blocks: 128)

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.shards.rows_per_rank(self.world_size) // self.rows_per_step

    def position(self, step: int) -> dict[str, int]:
        """Where step `step` starts reading: epoch and row offset within this rank's rows."""
        return {
            "epoch": step // self.steps_per_epoch,
            "row": (step % self.steps_per_epoch) * self.rows_per_step,
        }

    def batches(self, start_step: int = 0) -> Iterator[list[dict[str, torch.Tensor]]]:
        """Endless: one list of `grad_accum` collated micro-batches per optimizer step from `start_step`."""
        step = start_step
        while True:
            pos = self.position(step)
            rows = self.shards.iter_rows(
                self.rank, self.world_size, 0, 1, pos["epoch"], self.seed, self.shuffle
            )
            for _ in range(pos["row"]):  # skip what the checkpointed run already consumed
                next(rows)
            for _ in range(self.steps_per_epoch - step % self.steps_per_epoch):
                group = [next(rows) for _ in range(self.rows_per_step)]
                yield [
                    self._collate(group[i : i + self.micro_batch])
                    for i in range(0, len(group), self.micro_batch)
                ]
                step += 1

    def _collate(self, rows: list) -> dict[str, torch.Tensor]:
        # few distinct shapes: a compiled kernel (flex attention) is not rebuilt for every length
        longest = max(len(r) for r in rows)
        width = min(-(-longest // self.pad_multiple) * self.pad_multiple, max(longest, self.shards.seq_len))
        return collate_packed(rows, self.pad_id, width)


def supervised_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry a loss in this micro-batch (after the next-token shift)."""
    return int((shift_targets(batch["labels"], batch["document_ids"]) != IGNORE_INDEX).sum())


def supervised_samples(batch: dict[str, torch.Tensor]) -> int:
    """Samples with at least one loss-carrying token in this micro-batch (the per-sample divisor)."""
    targets = shift_targets(batch["labels"], batch["document_ids"])
    return sample_weights(targets, batch["document_ids"])[1]


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["document_ids"] >= 0).sum())


def open_shards(path: str | Path) -> tuple[PackedShards, dict[str, Any]]:
    shards = PackedShards(path)
    if shards.num_rows == 0:
        raise DataError(f"{path}: the shards hold no rows")
    return shards, shards.manifest
