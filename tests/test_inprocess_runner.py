"""The in-process runner of conftest (`medmax_inproc`) gives what the real command gives, and leaves
nothing behind: the faster suite may use it only because both hold."""

from __future__ import annotations

import logging
import os
import re
import sys

import pytest

from conftest import SAMPLE, run_medmax, run_medmax_inprocess

GOOD = b'{"id":"a","source":"x","license":"cc0","kind":"qa","question":"q?","answer":"yes","images":[]}\n'


def _same(result) -> tuple[int, bytes, bytes]:
    """Exit status and output, with the run time and the log clock (the only things that may differ) blanked."""
    err = re.sub(rb"\d+\.\d+ s\b", b"T s", result.stderr)
    return result.returncode, result.stdout, re.sub(rb"(?m)^\d\d:\d\d:\d\d ", b"HH:MM:SS ", err)


CASES = {
    "records through": (["cat"], GOOD, {}),
    "a bad record (exit 1)": (["cat"], b"not json\n" + GOOD, {}),
    "bad usage (exit 2)": (["cat", "--on-error", "maybe"], b"", {}),
    "no such command": (["nosuch"], None, {}),
    "a bad log level": (["--log-level", "loud", "cat"], b"", {}),
    "help text (wrapped as on a pipe)": (["cat", "--help"], None, {}),
    "version": (["--version"], None, {}),
    "unwritable output": (["cat", "-o", "{tmp}/a-file/out.jsonl"], GOOD, {}),
    "unwritable output, MEDMAX_DEBUG traceback": (
        ["cat", "-o", "{tmp}/a-file/out.jsonl"],
        GOOD,
        {"MEDMAX_DEBUG": "1"},
    ),
    "a warning through logging": (["synthesize", "--seed", "0"], "FETCHED", {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_inprocess_equals_subprocess(name, tmp_path):
    args, data, env = CASES[name]
    (tmp_path / "a-file").write_text("a regular file, not a directory\n")
    args = [a.format(tmp=tmp_path) for a in args]
    # the subprocess writes to a pipe, which carries the end-of-stream markers; the in-process
    # capture is not a pipe: compare the records themselves (markers have their own tests)
    env = {**env, "MEDMAX_MEDIA": str(tmp_path / "m"), "MEDMAX_STREAM_MARKERS": "0"}
    if data == "FETCHED":  # figures of the sample articles: synthesize warns about visual_chat
        data = run_medmax_inprocess("fetch", "jats", str(SAMPLE / "jats"), env=env).stdout
    real = run_medmax(*args, input=data, env=env, cwd=tmp_path, check=False)
    here = run_medmax_inprocess(*args, input=data, env=env, cwd=tmp_path, check=False)
    if "traceback" in name:  # the frames differ (runpy vs this runner); status and last line do not
        assert real.returncode == here.returncode == 1
        assert b"Traceback" in real.stderr and b"Traceback" in here.stderr
        assert real.stderr.splitlines()[-1] == here.stderr.splitlines()[-1]
        return
    assert _same(here) == _same(real)
    if "warning" in name:
        assert b" medmax WARNING medmax_cli." in here.stderr


def test_inprocess_call_restores_the_process(tmp_path):
    """Environment, working directory, argv, standard streams, logging, torch threads and random
    state are as they were, whatever the command changed."""
    import random

    torch = pytest.importorskip("torch")
    before_env, before_cwd, before_argv = dict(os.environ), os.getcwd(), list(sys.argv)
    streams = (sys.stdin, sys.stdout, sys.stderr)
    logger = logging.getLogger("medmax_cli")
    log_state = (list(logger.handlers), logger.level, logger.propagate)
    threads = torch.get_num_threads()
    random.seed(7)
    expect_random = random.random()
    random.seed(7)
    torch.manual_seed(7)
    expect_torch = torch.rand(1)
    torch.manual_seed(7)

    result = run_medmax_inprocess(
        "-v", "cat", input=GOOD, env={"I25C_PROBE": "1", "OMP_NUM_THREADS": "1"}, cwd=tmp_path
    )
    assert result.stdout == GOOD

    assert dict(os.environ) == before_env and os.getcwd() == before_cwd and sys.argv == before_argv
    assert (sys.stdin, sys.stdout, sys.stderr) == streams
    assert (list(logger.handlers), logger.level, logger.propagate) == log_state
    assert torch.get_num_threads() == threads
    assert random.random() == expect_random and torch.equal(torch.rand(1), expect_torch)


def test_inprocess_check_raises_like_the_subprocess_runner():
    with pytest.raises(AssertionError, match=r"medmax cat exited 1"):
        run_medmax_inprocess("cat", input=b"not json\n")


@pytest.fixture(scope="module")
def built_once():
    return object()


def test_tests_of_a_module_fixture_share_an_xdist_group(request, built_once):
    from conftest import _fixture_group

    assert _fixture_group(request.node) == request.node.nodeid.split("::")[0]


def test_other_tests_are_spread_one_by_one(request, tmp_path):
    from conftest import _fixture_group

    assert _fixture_group(request.node) is None
