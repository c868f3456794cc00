"""A stage reading stdin on a terminal says at once, on stderr, that it waits for records on stdin
and how to give them (issue 25 item 5). A real pseudo-terminal (pty) stands in for the user's."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

import pytest

RECORD = (
    b'{"id": "a", "task": "vqa", "source": "s", "license": "CC0", "images": [], "turns": ['
    b'{"role": "user", "content": [{"text": "q"}]}, {"role": "assistant", "content": [{"text": "a"}]}]}'
)


def read_until(fd: int, needle: bytes, limit: float = 60.0) -> bytes:
    """Bytes from fd until `needle` shows up (or EOF / the generous limit, a failure either way)."""
    seen = b""
    while needle not in seen:
        ready, _, _ = select.select([fd], [], [], limit)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.parametrize("argv", [["cat"], ["validate"], ["generate", "--device", "cpu"]])
def test_terminal_stdin_is_announced(argv, tmp_path, request):
    if argv[0] == "generate":  # the notice comes before the model loads, not after
        argv = [*argv, "--model", str(request.getfixturevalue("tiny_model_dir"))]
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medmax_cli", *argv, "--media-dir", str(tmp_path / "m")],
        stdin=secondary,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    os.close(secondary)
    try:
        said = read_until(proc.stderr.fileno(), b"Ctrl-D")
        assert b"waiting for records on stdin" in said, said
        assert b"FILE" in said and b"| medmax" in said
        # one Ctrl-D ends the input, though the stage peeked at the first bytes to detect the format
        os.write(primary, RECORD + b"\n" if argv == ["cat"] else b"")
        os.write(primary, b"\x04")
        assert proc.wait(timeout=60) == 0
        assert b"out 1" in read_until(proc.stderr.fileno(), b"out 1") or argv != ["cat"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)


def test_no_notice_on_a_pipe(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "medmax_cli", "cat"], input=b"", capture_output=True, cwd=tmp_path, timeout=60
    )
    assert res.returncode == 0 and b"waiting for records" not in res.stderr
