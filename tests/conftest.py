"""Shared fixtures: a tiny model built once per test run, a media store, the real command.

Two ways to run the command, with the same signature and the same result type
(`subprocess.CompletedProcess` with stdout/stderr bytes):

- `run_medmax` (fixture `medmax`) starts `python -m medmax_cli` in a subprocess. Use it where the
  test is about the process: signals, real pipes, a child's environment, torchrun, interpreter
  start-up and shutdown.
- `run_medmax_inprocess` (fixture `medmax_inproc`) calls the same entry (`medmax_cli.errors.run`
  on the typer app) in this process with stdin/stdout/stderr, argv, the environment and the working
  directory swapped in for the call and everything restored after it. It saves the 1-3 s start of a
  Python with torch per call; exit status and stderr text are those of the subprocess.

The suite runs under pytest-xdist (`make test`): fixtures that build something expensive are shared
between the workers through a lock in the run's common temporary directory.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

import pytest

# one torch thread per xdist worker (workers share the cores), two in a single-process run
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A command with no --model must not pick a model by itself (issue 25): the suite asks for the
# built-in tiny model explicitly, as `make demo` does.
os.environ.setdefault("MEDMAX_MODEL", "tiny")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample"


def pytest_collection_modifyitems(config, items):
    _skip_gpu(items)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # tell the scheduler (below) which tests must share a worker
        groups = {item.nodeid: group for item in items if (group := _fixture_group(item))}
        folder = shared_dir(config._tmp_path_factory, "xdist-groups")
        tmp = folder / f".{worker}.json.tmp"
        tmp.write_text(json.dumps(groups))
        tmp.replace(folder / f"{worker}.json")


def _fixture_group(item) -> str | None:
    """Tests that use a module- or class-scoped fixture (a loaded engine, a trained run) go to one
    xdist worker, so that the fixture is built once, not once per worker: their file is their group."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs}
    return item.nodeid.split("::")[0] if scopes & {"module", "class", "package"} else None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the groups of `_fixture_group` (what the workers wrote at collection);
    every other test is its own unit. (xdist's own loadgroup reads `xdist_group` marks through a node
    id suffix that pytest 9 no longer shows, so it would spread a module's tests over the workers.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    folder = shared_dir(config._tmp_path_factory, "xdist-groups")

    class FixtureGroupScheduling(LoadGroupScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once all workers have collected
                self.groups = {}
                for path in sorted(folder.glob("*.json")):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return FixtureGroupScheduling(config, log)


def _skip_gpu(items) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every xdist worker of this run sees (the run's base temp dir; the session's own
    base temp dir without xdist). Build into it so that racing workers cannot see half a result:
    under a lock, then a rename, as `tiny_model_dir` does."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # workers get <run>/popen-gwN; <run> is common to them
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny random Chameleon (real vocabulary layout) for the whole run: built once, by the first
    worker that asks, renamed into place under a file lock (the other workers wait, then reuse it)."""
    from medmax_cli.model.resolve import build_tiny_model_atomic

    return build_tiny_model_atomic(shared_dir(tmp_path_factory, "tiny") / "model", seed=0)


@pytest.fixture
def media(tmp_path):
    from medmax_cli.media import MediaStore

    return MediaStore(tmp_path / "media")


def run_medmax(
    *args: str,
    input: bytes | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run the real `medmax` command in a subprocess (stdin bytes in, stdout/stderr bytes out).

    With `input=None` stdin is /dev/null, not the terminal pytest was started from."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "medmax_cli", *args],
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"medmax {' '.join(args)} exited {result.returncode}:\n{result.stderr.decode()}")
    return result


def run_medmax_inprocess(
    *args: str,
    input: bytes | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`run_medmax` without the new process: `medmax_cli.errors.run(app, args)` here, as
    `python -m medmax_cli` would call it, with stdin (`input`, else empty), stdout and stderr
    (captured bytes, as through pipes), sys.argv, the environment (`env` over os.environ) and the
    working directory swapped in, and restored afterwards together with logging, signal handlers,
    warning filters, random states, torch's thread count and context variables. An exception that
    escapes `run` (SystemExit, or anything under MEDMAX_DEBUG=1) ends the call as it would end the
    process: its status, or 1 and the traceback on stderr. `timeout` is accepted for the same
    signature; pytest-timeout bounds the call."""
    ctx = contextvars.copy_context()  # the command's context variables die with the call
    code, out, err = ctx.run(_call_in_process, [str(a) for a in args], input, env, cwd)
    result = subprocess.CompletedProcess(["medmax", *args], code, out, err)
    if check and code != 0:
        raise AssertionError(f"medmax {' '.join(args)} exited {code}:\n{err.decode(errors='replace')}")
    return result


class _Captured(io.TextIOWrapper):
    """A text stream over bytes, as sys.stdout/sys.stderr are over a pipe (utf-8, no terminal)."""

    def __init__(self, errors: str = "strict"):
        self.raw_bytes = io.BytesIO()
        super().__init__(self.raw_bytes, encoding="utf-8", errors=errors, line_buffering=False)

    def value(self) -> bytes:
        with contextlib.suppress(ValueError):
            self.flush()
        return self.raw_bytes.getvalue()


def _stdin(data: bytes) -> io.TextIOWrapper:
    """sys.stdin over a real file holding `data`: a BufferedReader with a file descriptor, as the
    read end of a pipe is (a BytesIO has neither)."""
    raw = tempfile.TemporaryFile("w+b", buffering=0)
    raw.write(data)
    raw.seek(0)
    return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8")


def _logger_state() -> dict:
    loggers = [logging.getLogger()] + [
        lg for lg in list(logging.root.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]
    return {lg: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers}


def _restore_loggers(saved: dict, streams: tuple, fallback) -> None:
    for lg in [logging.getLogger()] + [
        lg for lg in list(logging.root.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]:
        if lg in saved:
            handlers, level, propagate, disabled = saved[lg]
            lg.handlers[:] = handlers
            lg.level, lg.propagate, lg.disabled = level, propagate, disabled
        else:  # a logger the call created: keep it (libraries cache them), repoint its streams
            for h in lg.handlers:
                if isinstance(h, logging.StreamHandler) and h.stream in streams:
                    h.setStream(fallback)


_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None),
                        getattr(signal, "SIGPIPE", None), getattr(signal, "SIGUSR1", None)) if s]  # fmt: skip


def _call_in_process(args: list[str], input: bytes | None, env: dict | None, cwd: Path | None):
    from medmax_cli.cli import app
    from medmax_cli.errors import run

    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_argv = sys.argv
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    saved_signals = {s: signal.getsignal(s) for s in _SIGNALS}
    saved_loggers = _logger_state()
    saved_random = random.getstate()
    np = sys.modules.get("numpy")
    saved_np = np.random.get_state() if np is not None else None
    torch = sys.modules.get("torch")
    saved_torch = (torch.get_num_threads(), torch.get_rng_state()) if torch is not None else None
    hf_logging = sys.modules.get("transformers.utils.logging")
    saved_bars = hf_logging.is_progress_bar_enabled() if hf_logging is not None else None
    threads_before = set(threading.enumerate())

    stdin = _stdin(input or b"")
    stdout, stderr = _Captured(), _Captured(errors="backslashreplace")
    code = 0
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        # a subprocess on a pipe wraps help text at 80 columns, not at this terminal's width
        os.environ.setdefault("COLUMNS", "80")
        if cwd is not None:
            os.chdir(cwd)
        if torch is not None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))  # as a new process would
        sys.argv = [str(Path(sys.modules["medmax_cli"].__file__).parent / "__main__.py"), *args]
        sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
        with warnings.catch_warnings():
            try:
                code = run(app, args)
            except SystemExit as exc:  # what the interpreter does with it
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:  # noqa: BLE001 - an uncaught exception: traceback, status 1
                traceback.print_exc(file=sys.stderr)
                code = 1
            with contextlib.suppress(ValueError, OSError):
                sys.stdout.flush()
    finally:
        out, err = stdout.value(), stderr.value()
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        stdin.close()
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for s, handler in saved_signals.items():
            if handler is not None and signal.getsignal(s) is not handler:
                signal.signal(s, handler)
        _restore_loggers(saved_loggers, (stdout, stderr), saved_streams[2])
        random.setstate(saved_random)
        if saved_np is not None:
            np.random.set_state(saved_np)
        torch = sys.modules.get("torch")
        if saved_torch is not None:
            torch.set_num_threads(saved_torch[0])
            torch.set_rng_state(saved_torch[1])
        hf_logging = sys.modules.get("transformers.utils.logging")
        if saved_bars is not None and hf_logging is not None:
            (hf_logging.enable_progress_bar if saved_bars else hf_logging.disable_progress_bar)()
    left = [t for t in threading.enumerate() if t not in threads_before and t.name.startswith("medmax")]
    if left:
        raise AssertionError(f"medmax {' '.join(args)} left threads running: {[t.name for t in left]}")
    return code, out, err


@pytest.fixture
def medmax():
    """The command in a subprocess (`run_medmax`)."""
    return run_medmax


@pytest.fixture
def medmax_inproc():
    """The command in this process (`run_medmax_inprocess`): same call, same result, no start-up."""
    return run_medmax_inprocess
