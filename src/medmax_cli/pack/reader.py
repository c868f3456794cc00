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
        name = self.shards[shard]["name"]
        return {
            index: checked_row(members, f"{name}: row {index}", self.seq_len)
            for index, members in parts.items()
        }


def _array(members: dict[str, bytes], member: str, where: str) -> np.ndarray:
    if member not in members:
        raise ValueError(f"{where} lacks member {member!r}")
    try:
        array = np.load(io.BytesIO(members[member]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # not .npy, truncated, or pickled objects
        raise ValueError(f"{where}: member {member!r} is not a numpy array file ({exc})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: member {member!r} must be a 1-D integer array, got {array.dtype} {array.shape}"
        )
    return array


def checked_row(members: dict[str, bytes], where: str, seq_len: int | None = None) -> PackedRow:
    """A row from its tar members, or ValueError naming the row and what is wrong with it: a tampered
    or foreign shard must not reach training (or `medmax inspect`) as a row of wrong shape."""
    ids = _array(members, "input_ids.npy", where)
    labels = _array(members, "labels.npy", where)
    bounds = _array(members, "boundaries.npy", where)
    if len(labels) != len(ids):
        raise ValueError(f"{where}: {len(labels)} labels for {len(ids)} input ids")
    if seq_len is not None and len(ids) > seq_len:
        raise ValueError(f"{where}: {len(ids)} tokens, more than the manifest's seq_len {seq_len}")
    if len(ids) and int(ids.min()) < 0:
        raise ValueError(f"{where}: a negative token id ({int(ids.min())})")
    if len(labels) and np.any((labels < 0) & (labels != IGNORE)):
        raise ValueError(f"{where}: a negative label other than {IGNORE}")
    if len(bounds) < 1 or bounds[0] != 0 or bounds[-1] != len(ids) or np.any(np.diff(bounds) < 0):
        raise ValueError(f"{where}: boundaries must rise from 0 to the row's length {len(ids)}")
    if "json" not in members:
        raise ValueError(f"{where} lacks member 'json'")
    try:
        meta = orjson.loads(members["json"])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{where}: member 'json' is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: member 'json' must be a JSON object")
    return PackedRow(input_ids=ids, labels=labels, boundaries=bounds, meta=meta)


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
