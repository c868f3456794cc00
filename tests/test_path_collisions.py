"""Class 1 of issue 24: a command whose outputs would destroy its inputs (or each other) exits 2
before reading a byte, on every command, and leaves every file as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medmax_cli.cli import app
from medmax_cli.paths import CommandPaths, PathCollision, check, check_command

REC = b'{"id":"a","kind":"instance","text":"x"}\n'


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_bytes(REC)
    return tmp_path


def _refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["cat", "in.jsonl", "-o", "X", "--rejects", "X"],
        ["cat", "in.jsonl", "-o", "X", "--stats", "X"],
        ["cat", "in.jsonl", "-o", "o.jsonl", "--rejects", "X", "--stats", "X"],
        ["cat", "in.jsonl", "-o", "in.jsonl"],
        [
            "cat",
            "in.jsonl",
            "-o",
            "o.jsonl",
            "--on-error",
            "skip",
            "--rejects",
            "in.jsonl",
            "--rejects-append",
        ],
        ["cat", "in.jsonl", "-o", "o.jsonl", "--stats", "in.jsonl"],
        ["validate", "in.jsonl", "--stats", "in.jsonl"],
        ["stats", "merge", "in.jsonl", "-o", "in.jsonl"],
        ["fetch", "jsonl", "in.jsonl", "--root", ".", "-o", "in.jsonl"],
        ["synthesize", "in.jsonl", "-o", "o.jsonl", "--exclude", "o.jsonl"],
        ["score", "in.jsonl", "--summary", "in.jsonl"],
        ["score", "in.jsonl", "-o", "s.jsonl", "--summary", "s.jsonl"],
        ["tokenize-images", "in.jsonl", "-o", "o.jsonl", "--rejects", "o.jsonl"],
        ["generate", "in.jsonl", "-o", "in.jsonl"],
        ["detokenize", "in.jsonl", "--rejects", "in.jsonl"],
        ["finetune", "d", "-o", "d"],
        ["report", "in.jsonl", "-o", "in.jsonl"],
    ],
)
def test_every_command_refuses_an_output_that_is_an_input_or_another_output(work, args):
    result = invoke(*args)
    _refused(result)
    assert (work / "in.jsonl").read_bytes() == REC
    assert not (work / "X").exists() and not (work / "o.jsonl").exists()


def test_links_are_the_file_they_point_to(work):
    (work / "link.jsonl").symlink_to("in.jsonl")
    os.link(work / "in.jsonl", work / "hard.jsonl")
    _refused(invoke("cat", "link.jsonl", "-o", "hard.jsonl"), "hard.jsonl", "link.jsonl")
    _refused(invoke("cat", "in.jsonl", "-o", "sub/../link.jsonl"))
    (work / "dangling").symlink_to("target.jsonl")  # an output through a link to a file not made yet
    _refused(invoke("cat", "in.jsonl", "-o", "dangling", "--rejects", "target.jsonl"))
    assert (work / "in.jsonl").read_bytes() == REC


def test_pack_refuses_an_input_inside_the_folder_it_clears(work):
    shards = work / "shards"
    shards.mkdir()
    (shards / "shard-000000.tar").write_bytes(b"tar")
    _refused(invoke("pack", "shards/shard-000000.tar", "-o", "shards/"), "shard-000000.tar", "clears")
    _refused(invoke("pack", "in.jsonl", "-o", "shards", "--stats", "shards/manifest.json"))
    _refused(invoke("pack", "in.jsonl", "-o", "in.jsonl"))
    assert (shards / "shard-000000.tar").read_bytes() == b"tar"


def test_finetune_refuses_shards_inside_the_run_folder_it_writes(work):
    (work / "run" / "checkpoints").mkdir(parents=True)
    _refused(invoke("finetune", "run/checkpoints", "-o", "run"))


def test_a_file_a_folder_does_not_own_is_allowed(tmp_path):
    """Rejects beside the shards, or an input in a subfolder pack never touches, are fine."""
    (tmp_path / "shards" / "raw").mkdir(parents=True)
    (tmp_path / "shards" / "raw" / "in.jsonl").write_bytes(REC)
    check_command(
        "medmax pack",
        {
            "input": str(tmp_path / "shards" / "raw" / "in.jsonl"),
            "output": str(tmp_path / "shards"),
            "rejects": str(tmp_path / "shards" / "rejects.jsonl"),
        },
        stats=tmp_path / "shards" / "stats.json",
    )


def test_devices_may_be_shared():
    check(CommandPaths(outputs=[("-o", "/dev/null"), ("--rejects", "/dev/null")]))


def test_the_config_file_is_an_input(work):
    (work / "c.toml").write_text("[cat]\n")
    _refused(invoke("--config", "c.toml", "cat", "in.jsonl", "-o", "c.toml"), "--config")
    assert (work / "c.toml").read_text() == "[cat]\n"


def test_two_stage_outputs_in_library_use(tmp_path):
    from medmax_cli.paths import check_stage

    with pytest.raises(PathCollision):
        check_stage(input="-", output=str(tmp_path / "x"), rejects=tmp_path / "x", stats=None)


def _run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run(
        [sys.executable, "-m", "medmax_cli", *args], cwd=cwd, env=env, capture_output=True, **kw
    )


def test_stdout_appended_to_the_input_and_stdin_from_the_output(tmp_path):
    """`medmax cat IN >> IN` and `medmax cat < IN -o IN` are the same fault through the shell."""
    (tmp_path / "in.jsonl").write_bytes(REC)
    with open(tmp_path / "in.jsonl", "ab") as out:
        result = subprocess.run(
            [sys.executable, "-m", "medmax_cli", "cat", "in.jsonl"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
            stdout=out,
            stderr=subprocess.PIPE,
        )
    assert result.returncode == 2 and b"stdout" in result.stderr
    with open(tmp_path / "in.jsonl", "rb") as inp:
        result = _run(["cat", "-", "-o", "in.jsonl"], tmp_path, stdin=inp)
    assert result.returncode == 2 and b"stdin" in result.stderr
    assert (tmp_path / "in.jsonl").read_bytes() == REC


def test_medmax_stats_dir_is_not_written_on_a_refusal(work):
    stats_dir = work / "stats"
    result = invoke("cat", "in.jsonl", "-o", "in.jsonl", env={"MEDMAX_STATS_DIR": str(stats_dir)})
    _refused(result)
    assert not stats_dir.exists() or not any(stats_dir.iterdir())


def test_the_default_rejects_file_is_checked_too(work):
    """`--on-error skip` without --rejects picks medmax-STAGE-rejects.jsonl: it may be the input."""
    (work / "medmax-cat-rejects.jsonl").write_bytes(REC)
    _refused(invoke("cat", "medmax-cat-rejects.jsonl", "-o", "o.jsonl", "--on-error", "skip"), "--rejects")
    assert (work / "medmax-cat-rejects.jsonl").read_bytes() == REC


def test_fetch_state_file_is_an_output(work):
    _refused(invoke("fetch", "pmc", "--ids", "in.jsonl", "--state", "s.json", "-o", "s.json"), "--state")
    _refused(invoke("fetch", "pmc", "--ids", "in.jsonl", "--state", "in.jsonl", "-o", "o.jsonl"), "--state")


def test_finetune_resume_may_read_the_config_it_saved(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    params = {"shards": str(tmp_path / "s"), "output": str(run), "config": str(run / "config.json")}
    with pytest.raises(PathCollision):
        check_command("medmax finetune", {**params, "resume": False})
    check_command("medmax finetune", {**params, "resume": True})
