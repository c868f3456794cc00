"""On-disk token cache: (image sha256, VQ fingerprint) -> codes, so no image is encoded twice.

One SQLite file (WAL mode, so `--shard i/n` processes on one machine can share it; on a cluster,
give each node its own `--cache-dir` or a shared filesystem that supports locking). Codes are
stored as a little-endian uint16 blob when the codebook fits (8192 codes: 2 KiB an image),
int32 otherwise.

A hit is served only for the image file it was made from: each entry records the size and mtime of
that file at insert; when the file met now differs, it is hashed, and a file whose content is not the
entry's sha256 is a miss (the caller reads it, and its sha256 check names the damaged file). Opening a
fresh cache from several processes at once retries the WAL switch under the busy timeout instead of
failing with "database is locked".
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

CACHE_FILE = "vq-tokens.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    sha256 TEXT NOT NULL,
    vq TEXT NOT NULL,
    dtype TEXT NOT NULL,
    codes BLOB NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    PRIMARY KEY (sha256, vq)
) WITHOUT ROWID
"""
BUSY_TIMEOUT_S = 60.0
_sleep = time.sleep  # (tests replace it to release a lock at the first retry)
_T = TypeVar("_T")


def _retry_busy(step: Callable[[], _T], timeout: float = BUSY_TIMEOUT_S) -> _T:
    """Run `step`, retrying while SQLite says the database is locked or busy (a fresh cache opened by
    several processes at once: the WAL switch does not wait on the busy handler), up to `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        _sleep(delay)
        delay = min(delay * 2, 0.5)


def _file_stamp(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _file_sha256(path: str | Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def default_cache_dir(media_root: str | Path) -> Path:
    """Where the cache lives unless `--cache-dir` says otherwise: beside the images it describes."""
    return Path(media_root) / ".cache"


class TokenCache:
    """Get and put code lists by (sha256, vq). Use from one thread; open one per process."""

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        _retry_busy(lambda: self._db.execute("PRAGMA journal_mode=WAL").fetchone())
        _retry_busy(lambda: self._db.execute("PRAGMA synchronous=NORMAL"))
        _retry_busy(lambda: self._db.execute(_SCHEMA))
        columns = {
            row[1] for row in _retry_busy(lambda: self._db.execute("PRAGMA table_info(tokens)").fetchall())
        }
        for column in ("size", "mtime_ns"):  # a cache made before entries recorded their file
            if column not in columns:
                try:
                    _retry_busy(
                        lambda c=column: self._db.execute(f"ALTER TABLE tokens ADD COLUMN {c} INTEGER")
                    )
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # another process added it first
                        raise

    def __enter__(self) -> TokenCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def get_many(self, shas: Iterable[str], vq: str) -> dict[str, list[int]]:
        """The cached codes of those `shas` that are present."""
        wanted = list(dict.fromkeys(shas))
        found: dict[str, list[int]] = {}
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT sha256, dtype, codes FROM tokens WHERE vq = ? AND sha256 IN ({marks})", [vq, *chunk]
            )
            for sha, dtype, blob in rows:
                found[sha] = np.frombuffer(blob, dtype=np.dtype(dtype)).astype(np.int64).tolist()
        return found

    def get(self, sha: str, vq: str) -> list[int] | None:
        return self.get_many([sha], vq).get(sha)

    def get_verified(self, items: Iterable[tuple[str, str | Path]], vq: str) -> dict[str, list[int]]:
        """The cached codes of those (sha256, image file) whose file is still the image the codes were
        made from: the same size and mtime as at insert, or else content whose sha256 is the key (the
        entry then records the file's new stamp). A file that is gone or changed is a miss."""
        files: dict[str, list[str | Path]] = {}
        for sha, path in items:
            files.setdefault(sha, []).append(path)
        if not files:
            return {}
        found: dict[str, list[int]] = {}
        restamp: list[tuple[int, int, str, str]] = []
        shas = list(files)
        for start in range(0, len(shas), 500):  # SQLite's bound-parameter limit
            chunk = shas[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT sha256, dtype, codes, size, mtime_ns FROM tokens WHERE vq = ? AND sha256 IN ({marks})",
                [vq, *chunk],
            ).fetchall()
            for sha, dtype, blob, size, mtime_ns in rows:
                if not all(self._same_file(sha, path, size, mtime_ns, restamp) for path in files[sha]):
                    continue
                found[sha] = np.frombuffer(blob, dtype=np.dtype(dtype)).astype(np.int64).tolist()
        if restamp:
            _retry_busy(
                lambda: self._db.executemany(
                    "UPDATE tokens SET size = ?, mtime_ns = ? WHERE sha256 = ? AND vq = ?",
                    [(size, mtime, sha, vq) for size, mtime, sha, _ in restamp],
                )
            )
        return found

    @staticmethod
    def _same_file(sha: str, path: str | Path, size: Any, mtime_ns: Any, restamp: list) -> bool:
        stamp = _file_stamp(path)
        if stamp is None:
            return False
        if stamp == (size, mtime_ns):
            return True
        if _file_sha256(path) != sha:
            return False
        restamp.append((*stamp, sha, str(path)))
        return True

    def put_many(
        self, items: Sequence[tuple[str, Sequence[int]] | tuple[str, Sequence[int], str | Path]], vq: str
    ) -> None:
        """Store codes for several images in one transaction (existing entries are kept). An item may
        name the image file the codes were made from (sha, codes, path): its size and mtime are kept
        so that `get_verified` can tell the file was not changed since."""
        rows = []
        for item in items:
            sha, codes = item[0], item[1]
            stamp = _file_stamp(item[2]) if len(item) > 2 else None  # type: ignore[misc]
            array = np.asarray(codes, dtype=np.int64)
            dtype = "<u2" if array.size == 0 or (array.min() >= 0 and array.max() < 65536) else "<i4"
            size, mtime_ns = stamp if stamp is not None else (None, None)
            rows.append((sha, vq, dtype, array.astype(dtype).tobytes(), size, mtime_ns))

        def insert() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO tokens (sha256, vq, dtype, codes, size, mtime_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

        _retry_busy(insert)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0])
