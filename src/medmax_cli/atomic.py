"""Files that appear under their final name only once complete (temp name, then rename).

A killed run must never leave a file that looks finished: every output, cache entry and
state file of the toolkit goes through here.

What is not a regular file is never replaced: `-o` naming a FIFO, a character device
(`/dev/null`, a terminal) or a link to one (`/dev/stdout`, `/proc/self/fd/1`) is opened and
written in place, since renaming a temporary file over it would swap the pipe or device for a
plain file nobody reads. A symbolic link to a regular file keeps its link: the file it points
to is the one replaced atomically.

Any failure to write (disk full, file too large, read-only or missing directory, permission)
becomes `CannotWrite`, an OSError naming the final path, and leaves no temporary file behind.

A temporary file is named `.NAME.PID-RANDOM.tmp` beside its output. Every one not yet renamed or
removed is listed in this process, and `discard_pending` (called whatever ends a command, SIGTERM
and Ctrl-C included) removes them. One a killed process (`kill -9`) left is removed by the next run
that writes the same output (`sweep=True`, which the stages' outputs use): its PID is no longer alive.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

_PENDING: set[str] = set()  # temporary files of this process not yet renamed or removed
_PENDING_LOCK = threading.Lock()


def discard_pending() -> None:
    """Remove every temporary file this process still holds (the run is ending without them)."""
    with _PENDING_LOCK:
        pending = list(_PENDING)
        _PENDING.clear()
    for tmp in pending:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we can judge: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def sweep_stale(final: Path) -> list[Path]:
    """Remove `.NAME.PID-RANDOM.tmp` files beside `final` whose process is gone; returns them."""
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(\d+)-[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


class CannotWrite(OSError):
    """Writing an output failed; `filename` is the output's path, `strerror` the reason."""

    def __str__(self) -> str:
        return f"cannot write: {self.filename}: {self.strerror}"


def _cannot_write(path: Path | str, exc: OSError) -> CannotWrite:
    if isinstance(exc, CannotWrite):
        return exc
    return CannotWrite(exc.errno or 0, exc.strerror or str(exc), str(path))


def in_place_target(path: Path) -> bool:
    """True if `path` exists (following links) and is not a regular file or directory, or is a
    link through /proc or /dev/fd (`/dev/stdout` redirected to a file: that open file is the output)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return True
    return stat.S_ISREG(mode) and _links_through_fd_table(path)


def _links_through_fd_table(path: Path) -> bool:
    current = str(path)
    for _ in range(40):  # the kernel's own limit on link chains
        if current.startswith(("/proc/", "/dev/fd/")):
            return True
        try:
            target = os.readlink(current)
        except OSError:
            return False
        current = os.path.join(os.path.dirname(current), target)
    return False


class _Guarded:
    """A file object whose write/flush/close failures raise CannotWrite naming the output."""

    def __init__(self, handle: IO[Any], path: Path):
        self._handle = handle
        self._path = path

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            raise _cannot_write(self._path, exc) from None

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as exc:
            raise _cannot_write(self._path, exc) from None

    def close(self) -> None:
        try:
            self._handle.close()
        except OSError as exc:
            raise _cannot_write(self._path, exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _Guarded:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AtomicFile:
    """A file that appears under its final name only when closed without error."""

    def __init__(
        self, path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = False, sweep: bool = False
    ):
        self.path = Path(path)
        self.fsync = fsync
        self._tmp: str | None = None
        try:
            if in_place_target(self.path):  # a pipe, a device, or a link to one: write it as it is
                self.handle: Any = _Guarded(open(self.path, mode), self.path)
                return
            final = Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise CannotWrite(
                    errno.ENOTDIR, "a parent of the path is not a directory", str(path)
                ) from None
            if sweep:  # a killed run's temporary files of this output
                sweep_stale(final)
            fd = self._create_temp(final)
            self._final = final
        except OSError as exc:
            raise _cannot_write(self.path, exc) from None
        try:
            self.handle = _Guarded(os.fdopen(fd, mode), self.path)
        except OSError as exc:
            os.close(fd)
            self._discard()
            raise _cannot_write(self.path, exc) from None

    def _create_temp(self, final: Path) -> int:
        """Name the temporary file, list it for `discard_pending`, and only then create it: a signal
        that lands between two lines (SIGTERM unwinds from any bytecode) never leaves it unlisted.
        Created as open() would (0666 less the umask), exclusively."""
        for _ in range(100):
            tmp = str(final.parent / f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
            with _PENDING_LOCK:
                _PENDING.add(tmp)
            self._tmp = tmp
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                self._forget()
            except OSError:
                self._forget()
                raise
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(final))

    def _forget(self) -> None:
        if self._tmp is not None:
            with _PENDING_LOCK:
                _PENDING.discard(self._tmp)
            self._tmp = None

    def __enter__(self) -> IO[Any]:
        return self.handle  # type: ignore[no-any-return]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(ok=exc_type is None)

    def _discard(self) -> None:
        if self._tmp is not None:
            Path(self._tmp).unlink(missing_ok=True)
            with _PENDING_LOCK:
                _PENDING.discard(self._tmp)

    def finish(self, ok: bool) -> None:
        if self.handle.closed:
            return
        if not ok:  # the run failed already: drop the temporary file, keep the first error
            try:
                self.handle._handle.close()
            except OSError:
                pass
            self._discard()
            return
        try:
            if self.fsync and self._tmp is not None:
                self.handle.flush()
                os.fsync(self.handle.fileno())
            self.handle.close()
            if self._tmp is not None:
                os.replace(self._tmp, self._final)
                with _PENDING_LOCK:
                    _PENDING.discard(self._tmp)
                self._tmp = None
        except OSError as exc:
            self._discard()
            raise _cannot_write(self.path, exc) from None


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, fsync: bool = False, sweep: bool = False
) -> Path:
    """Write `data` to `path` atomically; returns the path (`sweep`: see AtomicFile)."""
    with AtomicFile(path, "wb", fsync=fsync, sweep=sweep) as handle:
        handle.write(data)
    return Path(path)


@contextlib.contextmanager
def pid_lock(
    folder: Path, name: str, busy: Callable[[str], Exception], *, inheritable: bool = False
) -> Iterator[int]:
    """Hold an exclusive, non-blocking `flock` on `folder/name` for the block, the holder's pid
    written in it for the message of the next comer (`busy(pid)` is raised). The kernel releases
    the lock when its holder dies, so a killed run never blocks the rerun that cleans up after it;
    the file is never deleted (unlinking a lock file races with a run that has just opened it).
    `inheritable`: the descriptor survives exec (a launcher that becomes torchrun keeps it)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | (0 if inheritable else os.O_CLOEXEC)
    fd = os.open(folder / name, flags, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if inheritable:
            os.set_inheritable(fd, True)
        yield fd
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
