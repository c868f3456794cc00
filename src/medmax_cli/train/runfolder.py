"""A finetune run folder belongs to one run at a time, and a finished run is never replaced silently.

- `lock_run` holds an exclusive, non-blocking `flock` on RUN/.lock for as long as the run writes
  (as `medmax pack` does on its output folder): a second run into the same folder stops at once
  instead of interleaving checkpoints and metrics. The kernel drops the lock when the holder dies,
  so a killed run never blocks its own `--resume`. With `--gpus N` the lock is taken before
  torchrun replaces the process and is inherited across that exec; the workers it starts see
  `MEDMAX_RUN_LOCKED` and do not lock again.
- `prepare_run` refuses a folder that already holds a run (a config, metrics, checkpoints or an
  export) unless `--resume` continues it or `--overwrite` asks for it to be replaced; `--overwrite`
  removes only the names a run writes, holding the lock, before anything new is written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medmax_cli.atomic import pid_lock

LOCK = ".lock"
LOCK_ENV = "MEDMAX_RUN_LOCKED"
# What a run writes into its folder (finetune's outputs); other files are the user's and stay.
RUN_NAMES = ("config.json", "metrics.jsonl", "loss.png", "tb", "checkpoints", "adapter", "model", "merged")


class RunFolderError(RuntimeError):
    """The run folder holds a run this command would replace (a usage error: exit 2)."""


class RunFolderBusy(RunFolderError):
    """Another process is writing the run folder (exit 1)."""


def holds_run(run: Path) -> list[str]:
    """The names of a previous run found in `run` (empty: a new or empty folder)."""
    return [name for name in RUN_NAMES if (run / name).exists()]


def prepare_run(run: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start over a previous run unless asked; with `overwrite`, remove what it left.
    Call it holding `lock_run(run)`."""
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in -o and --overwrite replaces it: choose one")
    found = holds_run(run)
    if not found or resume:
        return
    if not overwrite:
        raise RunFolderError(
            f"{run} already holds a run ({', '.join(found)}): --resume continues it, --overwrite replaces "
            "it, or write to another folder"
        )
    for name in found:
        path = run / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for stale in run.glob(".*.tmp*"):  # half-written exports and plots of the replaced run
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _key(run: Path) -> str:
    return os.path.realpath(run)


def lock_held_by_launcher(run: Path) -> bool:
    """True in a torchrun worker whose launcher (this command before its exec) holds the lock."""
    return os.environ.get(LOCK_ENV) == _key(run)


@contextmanager
def lock_run(run: Path, *, inheritable: bool = False) -> Iterator[int]:
    """Hold RUN/.lock for the block (see the module docstring); `inheritable` keeps it across exec.
    Raises RunFolderError when another process holds it."""

    def busy(holder: str) -> RunFolderBusy:
        return RunFolderBusy(
            f"{run} is being written by another finetune run (pid {holder}); wait for it to finish "
            "or write to another folder"
        )

    with pid_lock(run, LOCK, busy, inheritable=inheritable) as fd:
        if inheritable:
            os.environ[LOCK_ENV] = _key(run)
        yield fd
