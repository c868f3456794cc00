"""Bin packing of variable-length samples into fixed-capacity rows, streaming with a bounded buffer.

`StreamPacker` collects `buffer_size` items, places them best-fit-decreasing (longest first, each into
the open row with the least free space that still fits it), then closes the rows that nothing can
fill any more (free space below the shortest item seen) and carries the others into the next round,
so a round's leftover space is not wasted. Carried rows are bounded (they hold at most half a buffer
of items; the fullest are closed first), so memory stays O(buffer_size) whatever the input size.
Closed rows leave in a seeded random order; the same input and seed give the same rows.

`first_fit_decreasing` over a whole list is the offline reference the benchmark compares against.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class StreamPacker(Generic[T]):
    """Pack (length, item) pairs into rows of total length <= capacity.

    `add` returns the rows closed by that call (often none); `flush` returns the rest. Each row is a
    list of items in arrival order. Items longer than `capacity` are a caller error (truncate first).
    """

    def __init__(self, capacity: int, buffer_size: int = 2000, seed: int = 0, shuffle: bool = True):
        if capacity < 1 or buffer_size < 1:
            raise ValueError("capacity and buffer_size must be positive")
        self.capacity = capacity
        self.buffer_size = buffer_size
        self.max_carried_items = max(1, buffer_size // 2)
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._pending: list[tuple[int, int, T]] = []  # (length, arrival, item)
        self._arrival = 0
        self._min_length = capacity
        # Open rows: sorted (free, row_id) keys for best-fit lookup; row_id -> [(arrival, item)].
        self._keys: list[tuple[int, int]] = []
        self._rows: dict[int, list[tuple[int, T]]] = {}
        self._next_row = 0

    def add(self, item: T, length: int) -> list[list[T]]:
        if not 0 < length <= self.capacity:
            raise ValueError(f"item length {length} is outside 1..{self.capacity}")
        self._pending.append((length, self._arrival, item))
        self._arrival += 1
        self._min_length = min(self._min_length, length)
        if len(self._pending) >= self.buffer_size:
            return self._round(final=False)
        return []

    def flush(self) -> list[list[T]]:
        return self._round(final=True)

    def _place(self) -> None:
        self._pending.sort(key=lambda p: (-p[0], p[1]))  # longest first, ties by arrival
        keys, rows = self._keys, self._rows
        for length, arrival, item in self._pending:
            i = bisect_left(keys, (length, -1))
            if i < len(keys):
                free, row_id = keys.pop(i)  # best fit: the least free space that still fits
            else:
                free, row_id = self.capacity, self._next_row
                self._next_row += 1
                rows[row_id] = []
            rows[row_id].append((arrival, item))
            insort(keys, (free - length, row_id))
        self._pending = []

    def _round(self, final: bool) -> list[list[T]]:
        self._place()
        keys = self._keys
        if final:
            closing = keys
            self._keys = []
        else:
            # Rows nothing seen so far fits into are done; of the rest, carry the emptiest ones.
            cut = bisect_left(keys, (self._min_length, -1))
            closing, keep = keys[:cut], keys[cut:]
            carried = 0
            start = len(keep)
            while start > 0 and carried + len(self._rows[keep[start - 1][1]]) <= self.max_carried_items:
                start -= 1
                carried += len(self._rows[keep[start][1]])
            closing = closing + keep[:start]
            self._keys = keep[start:]
        row_ids = sorted(row_id for _, row_id in closing)
        if self.shuffle and len(row_ids) > 1:
            row_ids = [row_ids[i] for i in self._rng.permutation(len(row_ids))]
        out = []
        for row_id in row_ids:
            members = sorted(self._rows.pop(row_id), key=lambda m: m[0])
            out.append([item for _, item in members])
        return out


class OnePerRow(Generic[T]):
    """`--no-pack`: every item is its own row, in input order (MedMax parity)."""

    def __init__(self, capacity: int):
        self.capacity = capacity

    def add(self, item: T, length: int) -> list[list[T]]:
        if not 0 < length <= self.capacity:
            raise ValueError(f"item length {length} is outside 1..{self.capacity}")
        return [[item]]

    def flush(self) -> list[list[T]]:
        return []


def pack_lengths(
    lengths: Sequence[int], capacity: int, buffer_size: int = 2000, seed: int = 0
) -> list[list[int]]:
    """Rows of item indices from `StreamPacker` (for tests and the benchmark)."""
    packer: StreamPacker[int] = StreamPacker(capacity, buffer_size, seed)
    rows: list[list[int]] = []
    for index, length in enumerate(lengths):
        rows += packer.add(index, int(length))
    return rows + packer.flush()


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Offline first-fit-decreasing over the whole input: rows of item indices."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[int] = []
    rows: list[list[int]] = []
    # Segment-tree-free FFD: lengths here are bounded by capacity, so scanning rows by a max-free
    # index over blocks keeps it fast enough for benchmark sizes (tens of thousands of items).
    block = 64
    block_max: list[int] = []
    for i in order:
        length = lengths[i]
        placed = False
        for b, bmax in enumerate(block_max):
            if bmax >= length:
                for r in range(b * block, min((b + 1) * block, len(free))):
                    if free[r] >= length:
                        free[r] -= length
                        rows[r].append(i)
                        block_max[b] = max(free[b * block : (b + 1) * block])
                        placed = True
                        break
                if placed:
                    break
        if not placed:
            free.append(capacity - length)
            rows.append([i])
            if (len(free) - 1) % block == 0:
                block_max.append(free[-1])
            else:
                block_max[-1] = max(block_max[-1], free[-1])
    return rows


def efficiency(lengths: Sequence[int], rows: Sequence[Sequence[int]], capacity: int) -> float:
    """Real tokens / (rows * capacity)."""
    if not rows:
        return 0.0
    return float(sum(lengths[i] for row in rows for i in row)) / (len(rows) * capacity)


def iter_rows(packer, items: Iterator[tuple[T, int]]) -> Iterator[list[T]]:
    """Drive a packer over (item, length) pairs, yielding rows as they close."""
    for item, length in items:
        yield from packer.add(item, length)
    yield from packer.flush()
