"""On-disk token cache: (image sha256, VQ fingerprint) -> codes, so no image is encoded twice.

One SQLite file (WAL mode, so `--shard i/n` processes on one machine can share it; on a cluster,
give each node its own `--cache-dir` or a shared filesystem that supports locking). Codes are
stored as a little-endian uint16 blob when the codebook fits (8192 codes: 2 KiB an image),
int32 otherwise.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

CACHE_FILE = "vq-tokens.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    sha256 TEXT NOT NULL,
    vq TEXT NOT NULL,
    dtype TEXT NOT NULL,
    codes BLOB NOT NULL,
    PRIMARY KEY (sha256, vq)
) WITHOUT ROWID
"""


def default_cache_dir(media_root: str | Path) -> Path:
    """Where the cache lives unless `--cache-dir` says otherwise: beside the images it describes."""
    return Path(media_root) / ".cache"


class TokenCache:
    """Get and put code lists by (sha256, vq). Use from one thread; open one per process."""

    def __init__(self, cache_dir: str | Path):
        self.path = Path(cache_dir) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

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

    def put_many(self, items: Sequence[tuple[str, Sequence[int]]], vq: str) -> None:
        """Store codes for several images in one transaction (existing entries are kept)."""
        rows = []
        for sha, codes in items:
            array = np.asarray(codes, dtype=np.int64)
            dtype = "<u2" if array.size == 0 or (array.min() >= 0 and array.max() < 65536) else "<i4"
            rows.append((sha, vq, dtype, array.astype(dtype).tobytes()))
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT OR IGNORE INTO tokens VALUES (?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0])
