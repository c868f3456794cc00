"""Files that appear under their final name only once complete (temp name, then rename).

A killed run must never leave a file that looks finished: every output, cache entry and
state file of the toolkit goes through here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFile:
    """A file that appears under its final name only when closed without error."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600; give what open() would
        self.handle = os.fdopen(fd, mode)
        self.fsync = fsync

    def __enter__(self) -> IO[Any]:
        return self.handle

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(ok=exc_type is None)

    def finish(self, ok: bool) -> None:
        if self.handle.closed:
            return
        if ok and self.fsync:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        self.handle.close()
        if ok:
            os.replace(self._tmp, self.path)
        else:
            Path(self._tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with AtomicFile(path, "wb", fsync=fsync) as handle:
        handle.write(data)
    return Path(path)
