"""Class 2 of issue 24: a finetune run folder is locked while written, a finished run is never
replaced without --overwrite (or continued without --resume), and a torn last metrics line is
dropped on resume with a warning naming the file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medmax_cli.cli import app
from medmax_cli.train.metrics import METRICS_FILE, MetricsError, MetricsLog, read_metrics
from medmax_cli.train.runfolder import RunFolderBusy, RunFolderError, lock_run, prepare_run

TRAIN = ["-q", "--lr", "5e-3", "--max-steps", "3", "--warmup-ratio", "0", "--lora-r", "4", "--log-to", "none"]


def finetune(*args: str):
    return CliRunner().invoke(app, ["finetune", *args])


@pytest.fixture
def fake_shards(tmp_path) -> Path:
    """Enough for the command to reach its run folder checks (they come before any shard is read)."""
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    return shards


def _old_run(run: Path) -> None:
    (run / "checkpoints" / "step-3").mkdir(parents=True)
    (run / "config.json").write_text('{"old": true}')
    (run / METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n')
    (run / "notes.txt").write_text("mine")


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(fake_shards, tmp_path):
    run = tmp_path / "run"
    _old_run(run)
    result = finetune(str(fake_shards), "-o", str(run), *TRAIN)
    assert result.exit_code == 2, result.output
    assert "--resume" in result.output and "--overwrite" in result.output
    assert (run / "config.json").read_text() == '{"old": true}'
    assert (run / METRICS_FILE).read_text() == '{"step": 1, "loss": 2.0}\n'
    result = finetune(str(fake_shards), "-o", str(run), "--resume", "--overwrite", *TRAIN)
    assert result.exit_code == 2 and "choose one" in result.output


def test_overwrite_removes_only_what_a_run_writes(tmp_path):
    run = tmp_path / "run"
    _old_run(run)
    (run / ".adapter.tmp").mkdir()
    prepare_run(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    prepare_run(tmp_path / "new", resume=False, overwrite=False)  # a new folder is fine


def test_a_folder_another_run_is_writing_is_refused(fake_shards, tmp_path):
    run = tmp_path / "run"
    with lock_run(run):
        result = finetune(str(fake_shards), "-o", str(run), *TRAIN)
        assert result.exit_code == 1, result.output
        assert "being written by another finetune run" in result.output
        with pytest.raises(RunFolderBusy):
            with lock_run(run):
                pass
    with lock_run(run):  # released when its holder lets go
        pass
    assert issubclass(RunFolderBusy, RunFolderError)


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("medmax_cli.train.metrics")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # an earlier -q run in this process may have raised the level
    try:
        assert [r["step"] for r in read_metrics(run)] == [1, 2]
        MetricsLog(run, start_step=2, loggers="none").close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any(str(run / METRICS_FILE) in message and "torn" in message for message in seen)
    assert (run / METRICS_FILE).read_text().splitlines() == [
        json.dumps({"step": 1, "loss": 2.0}),
        json.dumps({"step": 2, "loss": 1.5}),
    ]


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(MetricsError, match=r"metrics.jsonl: line 2"):
        read_metrics(tmp_path)


def _write_shards(out: Path, model_dir: Path) -> None:
    """Two shards of 96-token rows in `medmax pack`'s format (as tests/test_resume_data.py)."""
    from medmax_cli.pack.manifest import PackStats, build_manifest, write_manifest
    from medmax_cli.pack.shards import PackedRow, ShardWriter
    from medmax_cli.text.vocab import ChameleonVocab

    vocab = ChameleonVocab.from_model_dir(model_dir)
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    stats = PackStats(96)
    with ShardWriter(out, max_count=2) as writer:
        for r in range(4):
            prompt = [vocab.bos, *rng.integers(9000, 9100, 6).tolist(), vocab.sep]
            answer = [*rng.integers(9000, 9020, 4).tolist(), vocab.eos]
            ids = prompt + answer
            row = PackedRow(
                np.array(ids, np.int32),
                np.array([-100] * len(prompt) + answer, np.int32),
                np.array([0, len(ids)], np.int32),
                {"ids": [f"r{r}"]},
            )
            writer.write(row)
            stats.add_row(row)
    write_manifest(
        out,
        build_manifest(
            settings={"seq_len": 96}, model={"dir": str(model_dir)}, stats=stats, shards=writer.shards
        ),
    )


def test_second_run_refused_then_resumed_over_a_torn_line_then_overwritten(tmp_path, tiny_model_dir):
    import torch

    torch.set_num_threads(1)
    shards, run = tmp_path / "shards", tmp_path / "run"
    _write_shards(shards, tiny_model_dir)
    base = [str(shards), "-o", str(run), "--model", str(tiny_model_dir), *TRAIN]
    result = finetune(*base, "--stop-after", "2")
    assert result.exit_code == 0, result.output
    adapter = (run / "checkpoints" / "latest").read_text()
    assert finetune(*base).exit_code == 2  # a second plain run: refused, nothing touched
    assert (run / "checkpoints" / "latest").read_text() == adapter
    assert [r["step"] for r in read_metrics(run)] == [1, 2]

    with open(run / METRICS_FILE, "a") as handle:  # a crash mid-write of a later line
        handle.write('{"step": 3, "lo')
    result = finetune(*base, "--resume")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]

    result = finetune(*base, "--overwrite", "--stop-after", "1")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(run)] == [1]
    assert json.loads((run / "config.json").read_text())["stop_after"] == 1


def test_the_lock_survives_the_torchrun_exec_and_workers_skip_it(tmp_path, monkeypatch):
    """--gpus N: the lock is taken inheritable before exec, and the workers see that it is held."""
    import os

    from medmax_cli.train.runfolder import LOCK_ENV, lock_held_by_launcher

    monkeypatch.delenv(LOCK_ENV, raising=False)
    run = tmp_path / "run"
    with lock_run(run, inheritable=True) as fd:
        assert os.get_inheritable(fd)
        assert lock_held_by_launcher(run) and not lock_held_by_launcher(tmp_path / "other")
    monkeypatch.delenv(LOCK_ENV, raising=False)
