"""Class 8 of issue 24: SIGTERM / SIGINT (how SLURM and Ctrl-C stop a job) remove the run's
temporary files and exit 143 / 130; a rerun removes the temporary files a killed run left; a
closed pipe on stdout or stderr ends quietly with status 0 and loses no -o output.

These run the real `medmax` process: signals, exit statuses and closed descriptors are about the
process. Nothing waits on a clock: each test waits for a file or a line the process makes, and
signals it then (the deadline is only there to fail instead of hanging)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medmax_cli.atomic import AtomicFile, sweep_stale

SRC = str(Path(__file__).resolve().parents[1] / "src")
DEADLINE = 120.0


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MEDMAX_HEARTBEAT": "0"}


def _default_signals() -> None:
    """In the child before exec: SIGINT/SIGTERM as a shell's foreground job has them (a runner that
    ignores SIGINT would otherwise pass that on, and Python keeps an inherited ignore)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _popen(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medmax_cli", *args], cwd=cwd, env=_env(), preexec_fn=_default_signals, **kw
    )


def _wait_for(predicate, proc: subprocess.Popen) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended first (status {proc.returncode})")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("the process never reached the awaited state")
        time.sleep(0.02)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.name)


def _record(i: int) -> bytes:
    """One record as medmax writes it (compact JSON), so an output can be compared byte for byte."""
    return (
        json.dumps({"id": f"r{i}", "kind": "instance", "text": "x" * 40}, separators=(",", ":")).encode()
        + b"\n"
    )


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_removes_temporary_outputs_and_exits_with_its_code(tmp_path, sig, status):
    proc = _popen(
        ["cat", "-", "-o", "out.jsonl", "--on-error", "skip", "--rejects", "rej.jsonl"],
        tmp_path,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(_record(0))
    proc.stdin.flush()  # the stage now waits for more input, its outputs open as temporary files
    _wait_for(lambda: any(n.startswith(".out.jsonl.") for n in _temps(tmp_path)), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=DEADLINE)
    proc.stdin.close()
    assert proc.returncode == status, err
    assert _temps(tmp_path) == [] and not (tmp_path / "out.jsonl").exists()
    assert b"Traceback" not in err
    if sig == signal.SIGTERM:
        assert b"terminated" in err


def test_pack_removes_its_temporary_shard_on_sigterm(tmp_path, tiny_model_dir):
    out = tmp_path / "shards"
    proc = _popen(
        [
            "pack",
            "-",
            "-o",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--max-count",
            "1",
            "--seq-len",
            "64",
            "--batch-size",
            "1",
            "--no-pack",
            "-q",
        ],  # fmt: skip
        tmp_path,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    turn = [
        {"role": "user", "content": [{"text": "Is there a lesion?"}]},
        {"role": "assistant", "content": [{"text": "No."}]},
    ]
    for i in range(3):
        rec = {"id": f"s{i}", "task": "vqa", "source": "t", "license": "cc-by", "credential": False,
               "images": [], "turns": turn}  # fmt: skip
        proc.stdin.write(json.dumps(rec).encode() + b"\n")
    proc.stdin.flush()
    _wait_for(lambda: out.is_dir() and any(n.startswith(".shard-") for n in _temps(out)), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=DEADLINE)
    proc.stdin.close()
    assert proc.returncode == 143, err
    assert _temps(out) == [] and not (out / "manifest.json").exists()


def test_a_rerun_removes_what_a_killed_run_left(tmp_path):
    proc = _popen(["cat", "-", "-o", "out.jsonl"], tmp_path, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(_record(0))
    proc.stdin.flush()
    _wait_for(lambda: bool(_temps(tmp_path)), proc)
    proc.kill()  # kill -9: no handler runs
    proc.wait()
    proc.stdin.close()
    (left,) = _temps(tmp_path)
    (tmp_path / "in.jsonl").write_bytes(_record(1))
    live = tmp_path / f".out.jsonl.{os.getpid()}-keepme.tmp"  # a live process's file is not touched
    live.write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "medmax_cli", "cat", "in.jsonl", "-o", "out.jsonl", "-q"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    assert _temps(tmp_path) == [live.name] and left != live.name
    assert (tmp_path / "out.jsonl").read_bytes() == _record(1)


def test_temporary_names_carry_the_pid_and_the_sweep_spares_live_ones(tmp_path):
    final = tmp_path / "x.json"
    handle = AtomicFile(final, sweep=True)
    (name,) = _temps(tmp_path)
    assert name.startswith(f".x.json.{os.getpid()}-")
    assert sweep_stale(final) == []  # this process is alive
    handle.finish(ok=False)
    assert _temps(tmp_path) == []


def _big_input(folder: Path, n: int = 20000) -> Path:
    path = folder / "in.jsonl"
    path.write_bytes(b"".join(_record(i) for i in range(n)))
    return path


def test_stdout_reader_gone_exits_0_quietly(tmp_path):
    """`medmax cat big | head -1`: more than a pipe buffer is written after the reader left."""
    _big_input(tmp_path)
    proc = _popen(["cat", "in.jsonl"], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    if first.startswith(b'{"medmax_stream"'):  # the end-of-stream header on a pipe (docs/records.md)
        first = proc.stdout.readline()
    assert first.startswith(b'{"id":"r0"')
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=DEADLINE) == 0, err
    assert b"Traceback" not in err and b"Exception ignored" not in err and b"BrokenPipe" not in err


@pytest.mark.parametrize(
    "args",
    [["stats", "merge", "--help"], ["synthesize", "--print-config"], ["validate", "in.jsonl", "--json"]],
)
def test_stdout_closed_before_the_first_write_exits_0(tmp_path, args):
    _big_input(tmp_path, 3)
    proc = _popen(args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read()
    assert proc.wait(timeout=DEADLINE) == 0, err
    assert b"Traceback" not in err and b"Exception ignored" not in err


def test_stderr_reader_gone_loses_nothing(tmp_path):
    """`medmax cat IN -o OUT 2>&1 | head -0`: the summary line hits a closed pipe; the output is whole."""
    _big_input(tmp_path)
    proc = _popen(["cat", "in.jsonl", "-o", "out.jsonl"], tmp_path, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    proc.stderr.close()
    assert proc.wait(timeout=DEADLINE) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "in.jsonl").read_bytes()


def test_stderr_closed_loses_nothing(tmp_path):
    """`2>&-`: fd 2 is closed at start; no output file may take its number."""
    _big_input(tmp_path, 50)
    script = f'exec "{sys.executable}" -m medmax_cli cat in.jsonl -o out.jsonl --on-error skip 2>&-'
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, env=_env())
    assert result.returncode == 0
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "in.jsonl").read_bytes()
