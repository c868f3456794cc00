"""Packed rows and the WebDataset shard writer (format: docs/pack.md "Shards").

One tar sample per packed row, key `row-%09d` (global row index), members in sorted order:

    row-000000000.boundaries.npy  int32 [n+1] cumulative sample lengths 0, l1, l1+l2, ..., L
    row-000000000.input_ids.npy   int32 [L]   L <= seq_len, not padded
    row-000000000.json            {"ids": [...], "tasks": [...], "sources": [...]}
    row-000000000.labels.npy      int32 [L]   -100 = no loss

Every tar header has mtime 0, uid/gid 0, no user names and mode 0644, so the same rows give the
same bytes. A shard is written under a temporary name unique to the writer
(`.shard-NNNNNN.tar.PID-RANDOM.tmp`) and renamed to `shard-NNNNNN.tar` only once complete; the
manifest (written after the last shard) is what marks the directory finished. A run holds an
exclusive lock on `DIR/.lock` from clearing the directory to writing the manifest
(`lock_output_dir`), so two runs into one directory never interleave: the second one stops.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from medmax_cli.atomic import pid_lock
from medmax_cli.pack.sequence import Sample

SHARD_PATTERN = "shard-%06d.tar"
SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
TMP_RE = re.compile(r"^\.shard-\d{6}\.tar(\.[0-9]+-[0-9a-f]+)?\.tmp$")  # (without the tag: older runs)
ROW_KEY = "row-%09d"
MANIFEST = "manifest.json"
LOCK = ".lock"


@dataclass
class PackedRow:
    """One training row: several whole samples back to back."""

    input_ids: np.ndarray  # int32 [L]
    labels: np.ndarray  # int32 [L]
    boundaries: np.ndarray  # int32 [n+1], 0 ... L
    meta: dict[str, Any] = field(default_factory=dict)  # {"ids", "tasks", "sources"}

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def make_row(samples: Sequence[Sample]) -> PackedRow:
    """Concatenate whole samples into one row; boundaries are their cumulative lengths."""
    lengths = [len(s) for s in samples]
    boundaries = np.zeros(len(samples) + 1, dtype=np.int32)
    np.cumsum(lengths, out=boundaries[1:])
    return PackedRow(
        input_ids=np.concatenate([s.input_ids for s in samples]).astype(np.int32, copy=False),
        labels=np.concatenate([s.labels for s in samples]).astype(np.int32, copy=False),
        boundaries=boundaries,
        meta={
            "ids": [s.id for s in samples],
            "tasks": [s.task for s in samples],
            "sources": [s.source for s in samples],
        },
    )


_NPY_HEADERS: dict[tuple[str, int], bytes] = {}


def npy_bytes(array: np.ndarray) -> bytes:
    """`np.save` bytes of a 1-D array; the header comes from numpy itself, cached per (dtype, length)."""
    array = np.ascontiguousarray(array)
    if array.ndim != 1:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    key = (array.dtype.str, int(array.shape[0]))
    header = _NPY_HEADERS.get(key)
    if header is None:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        header = buffer.getvalue()[: -array.nbytes or None]
        if len(_NPY_HEADERS) < 100_000:
            _NPY_HEADERS[key] = header
    return header + array.tobytes()


def row_members(key: str, row: PackedRow) -> list[tuple[str, bytes]]:
    """The tar members of one row, in sorted name order."""
    return [
        (f"{key}.boundaries.npy", npy_bytes(row.boundaries.astype(np.int32, copy=False))),
        (f"{key}.input_ids.npy", npy_bytes(row.input_ids.astype(np.int32, copy=False))),
        (f"{key}.json", orjson.dumps(row.meta, option=orjson.OPT_SORT_KEYS)),
        (f"{key}.labels.npy", npy_bytes(row.labels.astype(np.int32, copy=False))),
    ]


def tar_member_info(name: str, size: int) -> tarfile.TarInfo:
    """The fixed, reproducible header fields of every shard member."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


_HEADER_TEMPLATES: dict[tuple[int, str], bytes] = {}


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header `tarfile` writes for `tar_member_info(name, size)`, made by patching
    a cached template (same name length and suffix) instead of formatting every field each time."""
    suffix = name[name.index(".") :] if "." in name else ""
    key = (len(name), suffix)
    template = _HEADER_TEMPLATES.get(key)
    if template is None:
        template = tar_member_info(name, 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        _HEADER_TEMPLATES[key] = template
    raw = name.encode("utf-8")
    if len(raw) != len(name) or len(raw) > 100:
        return tar_member_info(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    header = bytearray(template)
    header[0 : len(raw)] = raw
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"        "
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def _tar_size(members: list[tuple[str, bytes]]) -> int:
    return sum(512 + -(-len(data) // 512) * 512 for _, data in members)


@dataclass
class ShardInfo:
    name: str
    rows: int
    bytes: int
    sha256: str
    first_row: int


class _HashingFile:
    """Write-through file wrapper that hashes and counts what TarFile writes."""

    def __init__(self, handle):
        self.handle = handle
        self.sha = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.handle.write(data)
        self.sha.update(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


class OutputDirLocked(RuntimeError):
    """Another process is writing the shard directory."""


@contextmanager
def lock_output_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive, non-blocking `flock` on `out_dir/.lock` for the duration of a pack run.

    The kernel releases the lock when its holder dies, so a killed run never blocks the rerun that
    cleans up after it. The file holds the holder's pid, for the message; it is never deleted
    (unlinking a lock file races with a run that has just opened it).
    """
    out = Path(out_dir)

    def busy(holder: str) -> OutputDirLocked:
        return OutputDirLocked(
            f"{out} is being written by another pack run (pid {holder}); wait for it to finish "
            "or write to another directory"
        )

    with pid_lock(out, LOCK, busy):
        yield out


def clear_outputs(out_dir: Path) -> None:
    """Remove a previous run's manifest (first: the directory stops looking finished), its shards
    and any temporary shard files (call it holding `lock_output_dir`: no live run owns them then).
    Other files in the directory are left alone."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for path in out_dir.iterdir():
        if SHARD_RE.match(path.name) or TMP_RE.match(path.name):
            path.unlink()


class ShardWriter:
    """Write PackedRows to `out_dir/shard-%06d.tar`, starting a new shard at `max_count` rows or
    before `max_size` bytes would be exceeded (a single larger row still gets a shard)."""

    def __init__(self, out_dir: str | os.PathLike[str], *, max_count: int = 1000, max_size: int = 1 << 30):
        if max_count < 1 or max_size < 1:
            raise ValueError("max_count and max_size must be positive")
        self.out_dir = Path(out_dir)
        self.max_count = max_count
        self.max_size = max_size
        self.shards: list[ShardInfo] = []
        self.rows_written = 0
        self._is_open = False
        self._file = None
        self._hasher: _HashingFile | None = None
        self._rows_in_shard = 0
        self._size = 0
        self._tmp: Path | None = None

    def write(self, row: PackedRow) -> str:
        """Append a row; returns its key."""
        key = ROW_KEY % self.rows_written
        members = row_members(key, row)
        size = _tar_size(members)
        if self._is_open and (
            self._rows_in_shard >= self.max_count or self._size + size + 1024 > self.max_size
        ):
            self._finish_shard()
        if not self._is_open:
            self._open_shard()
        assert self._hasher is not None
        out = self._hasher
        for name, data in members:
            out.write(ustar_header(name, len(data)))
            out.write(data)
            if len(data) % 512:
                out.write(bytes(512 - len(data) % 512))
        self._size += size
        self._rows_in_shard += 1
        self.rows_written += 1
        return key

    def _open_shard(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        index = len(self.shards)
        # unique per writer: even without the directory lock, two writers never share a temp file
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._tmp = self.out_dir / f".{SHARD_PATTERN % index}.{tag}.tmp"
        self._file = open(self._tmp, "xb")
        self._hasher = _HashingFile(self._file)
        self._is_open = True
        self._rows_in_shard = 0
        self._size = 0

    def _finish_shard(self) -> None:
        assert self._is_open and self._file is not None and self._hasher is not None and self._tmp
        # End of archive as tarfile writes it: two zero blocks, then zeros up to a 10,240-byte record.
        end = self._hasher.position + 2 * 512
        self._hasher.write(bytes(2 * 512 + (-end) % tarfile.RECORDSIZE))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = SHARD_PATTERN % len(self.shards)
        os.replace(self._tmp, self.out_dir / name)
        self.shards.append(
            ShardInfo(
                name=name,
                rows=self._rows_in_shard,
                bytes=self._hasher.position,
                sha256=self._hasher.sha.hexdigest(),
                first_row=self.rows_written - self._rows_in_shard,
            )
        )
        self._is_open = False
        self._file = self._hasher = self._tmp = None

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; returns every shard written."""
        if self._is_open:
            self._finish_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); finished shards stay."""
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._is_open = False
        self._file = self._hasher = self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
