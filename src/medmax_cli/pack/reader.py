"""Read packed shards for training: rows split evenly across ranks and data workers, and collation.

`PackedShards(dir).iter_rows(rank, world_size, worker_id, num_workers, epoch, seed)` deals out
*rows*, not shards, so every rank gets exactly `rows_per_rank(world_size)` rows whatever the shard
count (unequal shard counts per rank hang DDP, REFERENCE.md 9). `collate_packed` turns rows into
the padded tensors the training loop needs, with position ids that restart per sample and
document ids for the block-diagonal mask.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from medmax_cli.pack.manifest import read_manifest, verify_shards
from medmax_cli.pack.sequence import IGNORE
from medmax_cli.pack.shards import ROW_KEY, PackedRow


class PackedShards:
    """A finished `medmax pack` output directory (it must hold manifest.json)."""

    def __init__(self, shard_dir: str | Path, *, verify: bool = False):
        self.dir = Path(shard_dir)
        self.manifest: dict[str, Any] = read_manifest(self.dir)
        if verify:
            verify_shards(self.dir, self.manifest)
        self.shards: list[dict[str, Any]] = self.manifest["shards"]
        for shard in self.shards:
            if not (self.dir / shard["name"]).is_file():
                raise FileNotFoundError(f"{self.dir / shard['name']}: listed in the manifest but missing")
        self._first_rows = np.array([s["first_row"] for s in self.shards], dtype=np.int64)
        self.num_rows: int = int(sum(s["rows"] for s in self.shards))
        self.seq_len: int = int(self.manifest["settings"]["seq_len"])

    def __len__(self) -> int:
        return self.num_rows

    def rows_per_rank(self, world_size: int) -> int:
        """ceil(num_rows / world_size): the remainder is filled by wrapping around (see `iter_rows`)."""
        if world_size < 1:
            raise ValueError("world_size must be >= 1")
        return -(-self.num_rows // world_size)

    def assignment(
        self,
        rank: int = 0,
        world_size: int = 1,
        worker_id: int = 0,
        num_workers: int = 1,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> np.ndarray:
        """Global row indices this rank/worker reads, in reading order (int64 [n])."""
        if not (0 <= rank < world_size and 0 <= worker_id < num_workers):
            raise ValueError(
                f"need 0 <= rank < world_size and 0 <= worker_id < num_workers, got "
                f"rank {rank}/{world_size}, worker {worker_id}/{num_workers}"
            )
        n = self.num_rows
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        order = np.resize(order, self.rows_per_rank(world_size) * world_size)  # wrap the remainder
        mine = order[rank::world_size][worker_id::num_workers]
        # Read shard by shard (each tar once), shards in the order they first appear in `mine`.
        shard_of = np.searchsorted(self._first_rows, mine, side="right") - 1
        first_seen = {}
        for position, shard in enumerate(shard_of.tolist()):
            first_seen.setdefault(shard, position)
        rank_of_shard = np.array([first_seen[s] for s in shard_of.tolist()], dtype=np.int64)
        reading = np.lexsort((np.arange(len(mine)), rank_of_shard))
        return mine[reading]

    def iter_rows(
        self,
        rank: int = 0,
        world_size: int = 1,
        worker_id: int = 0,
        num_workers: int = 1,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> Iterator[PackedRow]:
        """Rows for one rank and one data-loader worker.

        Rows (not shards) are dealt out: a seeded permutation of all rows (`seed`, `epoch`; identity
        when `shuffle` is False) is extended by WRAPPING around to a multiple of `world_size`, so every
        rank reads exactly `rows_per_rank(world_size)` rows and every row is read at least once per
        epoch (at most `world_size - 1` rows twice). Rank r takes every world_size-th row from r, and
        worker w of that rank every num_workers-th of those, so workers of one rank split its rows
        without overlap. Within a worker, rows are read one shard at a time (each tar opened once).
        """
        wanted = self.assignment(rank, world_size, worker_id, num_workers, epoch, seed, shuffle)
        if wanted.size == 0:
            return
        shard_of = np.searchsorted(self._first_rows, wanted, side="right") - 1
        start = 0
        while start < len(wanted):
            shard = int(shard_of[start])
            end = start
            while end < len(wanted) and shard_of[end] == shard:
                end += 1
            rows = self._read_shard(shard, set(wanted[start:end].tolist()))
            for index in wanted[start:end].tolist():
                yield rows[index]
            start = end

    def _read_shard(self, shard: int, indices: set[int]) -> dict[int, PackedRow]:
        keys = {ROW_KEY % i: i for i in indices}
        parts: dict[int, dict[str, bytes]] = {i: {} for i in indices}
        with tarfile.open(self.dir / self.shards[shard]["name"], "r:") as archive:
            for member in archive:
                key, _, rest = member.name.partition(".")
                index = keys.get(key)
                if index is None:
                    continue
                handle = archive.extractfile(member)
                parts[index][rest] = handle.read() if handle else b""
        rows = {}
        for index, members in parts.items():
            try:
                rows[index] = PackedRow(
                    input_ids=np.load(io.BytesIO(members["input_ids.npy"])),
                    labels=np.load(io.BytesIO(members["labels.npy"])),
                    boundaries=np.load(io.BytesIO(members["boundaries.npy"])),
                    meta=orjson.loads(members["json"]),
                )
            except KeyError as exc:
                raise ValueError(f"{self.shards[shard]['name']}: row {index} lacks member {exc}") from None
        return rows


def positions_and_documents(boundaries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token position ids restarting at 0 at each sample, and the sample index (int64 [L] each)."""
    lengths = np.diff(boundaries.astype(np.int64))
    starts = np.repeat(boundaries[:-1].astype(np.int64), lengths)
    positions = np.arange(int(boundaries[-1]), dtype=np.int64) - starts
    documents = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return positions, documents


def collate_packed(rows: Sequence[PackedRow], pad_id: int, seq_len: int | None = None) -> dict[str, Any]:
    """Pad rows to T (= `seq_len`, else the longest row) and stack them into torch tensors:

    input_ids [B, T] (pad_id on padding), labels [B, T] (-100 on padding), position_ids [B, T]
    (restarting at 0 per sample, 0 on padding), document_ids [B, T] (sample index within the row,
    -1 on padding; equal ids = same block of the block-diagonal causal mask). All int64.
    """
    import torch

    if not rows:
        raise ValueError("collate_packed needs at least one row")
    longest = max(len(r) for r in rows)
    width = seq_len if seq_len is not None else longest
    if longest > width:
        raise ValueError(f"a row holds {longest} tokens, more than seq_len {width}")
    batch = len(rows)
    input_ids = np.full((batch, width), pad_id, dtype=np.int64)  # [B, T]
    labels = np.full((batch, width), IGNORE, dtype=np.int64)  # [B, T]
    position_ids = np.zeros((batch, width), dtype=np.int64)  # [B, T]
    document_ids = np.full((batch, width), -1, dtype=np.int64)  # [B, T]
    for b, row in enumerate(rows):
        length = len(row)
        if int(row.boundaries[-1]) != length:
            raise ValueError(
                f"row boundaries end at {int(row.boundaries[-1])}, but the row has {length} tokens"
            )
        input_ids[b, :length] = row.input_ids
        labels[b, :length] = row.labels
        position_ids[b, :length], document_ids[b, :length] = positions_and_documents(row.boundaries)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(position_ids),
        "document_ids": torch.from_numpy(document_ids),
    }
