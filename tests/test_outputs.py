"""Outputs that are not plain files, outputs that fail, and the one top-level error handler.

Built at test time: a FIFO with a reader, a link to this process's stdout, a link to a regular
file, /dev/full (ENOSPC), a file-size limit (RLIMIT_FSIZE: EFBIG on a regular file, no root
needed), a path under a regular file, and a small typer app raising faults in-process.
"""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
import threading

import orjson
import pytest
import typer

from medmax_cli import errors
from medmax_cli.streams import STREAM_HEADER, stream_trailer
from test_streams import qa

DATA = b"".join(orjson.dumps(qa(i)) + b"\n" for i in range(300))


def cat(*args: str, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medmax_cli", "cat", "-q", *args],
        input=DATA,
        capture_output=True,
        preexec_fn=preexec,
        timeout=120,
    )


def test_a_fifo_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = cat("-o", str(fifo))
    reader.join(timeout=30)
    assert result.returncode == 0, result.stderr
    # a FIFO is a pipe: the stream is bracketed by its header and counted trailer (docs/records.md)
    assert got == [STREAM_HEADER + DATA + stream_trailer(300)] and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_link_to_stdout_is_written_through_not_replaced(tmp_path):
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")  # what /dev/stdout is, without touching /dev
    result = cat("-o", str(link))
    assert result.returncode == 0, result.stderr
    assert result.stdout == STREAM_HEADER + DATA + stream_trailer(300) and link.is_symlink()  # a pipe


def test_a_link_to_a_regular_file_keeps_its_link(tmp_path):
    target = tmp_path / "real.jsonl"
    target.write_bytes(b"old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert cat("-o", str(link)).returncode == 0
    assert link.is_symlink() and target.read_bytes() == DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]


def test_a_full_device_is_a_clear_error():
    result = cat("-o", "/dev/full")
    assert result.returncode == 1
    assert (
        result.stderr.decode()
        .strip()
        .endswith("medmax cat: cannot write: /dev/full: No space left on device")
    )
    assert b"Traceback" not in result.stderr
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_file_too_large_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out.jsonl"

    def limit() -> None:  # in the child: writes past 4 KiB fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = cat("-o", str(out), preexec=limit)
    assert result.returncode == 1
    assert f"medmax cat: cannot write: {out}: File too large" in result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_regular_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    result = cat("-o", str(tmp_path / "file" / "out.jsonl"))
    assert result.returncode == 1
    assert b"cannot write:" in result.stderr and b"not a directory" in result.stderr
    assert b"Traceback" not in result.stderr


def faulty_app(exc: BaseException) -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command("boom")
    def boom() -> None:
        raise exc

    @app.command("other")
    def other() -> None:
        pass

    return app


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (MemoryError(), 1, "medmax boom: cannot continue: out of memory"),
        (OSError(28, "No space left on device"), 1, "medmax boom: cannot write: No space left on device"),
        (
            PermissionError(13, "Permission denied", "/data/x"),
            1,
            "medmax boom: cannot open: /data/x: Permission",
        ),
        (EOFError("Compressed file ended"), 1, "medmax boom: cannot read: input ended unexpectedly"),
        (KeyboardInterrupt(), 130, "medmax boom: interrupted"),
        (
            ValueError("bad http://h/x?api_key=SEKRET123 here"),
            1,
            "internal error: ValueError: bad http://h/x?api_key=***",
        ),
    ],
)
def test_the_top_level_handler_turns_faults_into_one_line(exc, code, message, capsys, monkeypatch):
    monkeypatch.delenv("MEDMAX_DEBUG", raising=False)
    assert errors.run(faulty_app(exc), ["boom"]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "SEKRET123" not in err


def test_debug_env_gives_the_traceback(monkeypatch):
    monkeypatch.setenv("MEDMAX_DEBUG", "1")
    with pytest.raises(MemoryError):
        errors.run(faulty_app(MemoryError()), ["boom"])
