"""How the `medmax` process meets signals and closed streams (installed once by `cli.main`).

- **SIGTERM** (what SLURM's scancel, a time limit and `kill` send) raises `Terminated` in the main
  thread, so every `with` block and `finally` runs as for Ctrl-C: atomic outputs drop their temporary
  files (medmax_cli.atomic), pack drops its temporary shard, and the run exits 143 (128 + 15) after
  one line on stderr. SIGINT stays Python's KeyboardInterrupt and exits 130. Temporary files that no
  block owns any more are removed too (`atomic.discard_pending`).
- **stderr** is best effort: when its reader has gone (`2>&1 | head -1`, a closed log pipe), the
  first failed write points fd 2 at /dev/null and the run goes on; the records it writes are what
  matters, and its exit status is what it would have been. A closed fd 0, 1 or 2 at start is opened
  on /dev/null, so no output file can take its number and receive stray writes.
- **stdout** whose reader has gone (`| head -1`) ends the run quietly with status 0 (StageIO and
  `errors.run` handle the BrokenPipeError; this module only keeps shutdown from failing again).
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
from typing import Any

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):
    """SIGTERM arrived: unwind like KeyboardInterrupt (not an Exception: no handler swallows it)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while unwinding ends it at once
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM -> Terminated in the main thread (a no-op elsewhere, or where SIGTERM is ignored)."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass


def _devnull_on_closed_fds() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if fd == 1:
                sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)  # noqa: SIM115
            elif fd == 2:
                sys.stderr = _quiet_stderr()


class _BestEffortFd(io.RawIOBase):
    """fd 2 as a raw stream whose writes never fail: after EPIPE (or any write error) it is /dev/null."""

    def __init__(self, fd: int):
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        try:
            return os.isatty(self._fd)
        except OSError:
            return False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        try:
            return os.write(self._fd, view)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF, errno.EIO, errno.ENOSPC):
                raise
            silence_fd(self._fd)
            return len(view)


def silence_fd(fd: int) -> None:
    """Point `fd` at /dev/null (its reader is gone): later writes, even from C, vanish quietly."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


def _quiet_stderr() -> io.TextIOWrapper:
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    raw = _BestEffortFd(2)
    return io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=encoding,
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )


def install_stream_guards() -> None:
    """stderr that never raises on a gone reader; closed standard fds opened on /dev/null."""
    _devnull_on_closed_fds()
    stderr = sys.stderr
    if stderr is None or getattr(stderr, "fileno", None) is None:
        return
    try:
        if stderr.fileno() != 2:
            return
        stderr.flush()
    except (OSError, ValueError):
        pass
    sys.stderr = _quiet_stderr()


def install() -> None:
    install_stream_guards()
    install_signal_handlers()
