"""`finetune --resume` after the shards were re-packed: refused with both data fingerprints, unless
--resume-new-data. The tiny model, a handful of 96-token rows: seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medmax_cli.train.config import ConfigError, build_config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_shards(out: Path, model_dir: Path, seed: int, n_rows: int = 6) -> None:
    """Shards in `medmax pack`'s format (a previous pack in `out` is replaced, as pack does)."""
    from medmax_cli.pack.manifest import PackStats, build_manifest, write_manifest
    from medmax_cli.pack.shards import PackedRow, ShardWriter, clear_outputs
    from medmax_cli.text.vocab import ChameleonVocab

    vocab = ChameleonVocab.from_model_dir(model_dir)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    clear_outputs(out)
    stats = PackStats(96)
    with ShardWriter(out, max_count=2) as writer:
        for r in range(n_rows):
            prompt = [vocab.bos, *rng.integers(9000, 9100, 6).tolist(), vocab.sep]
            answer = [*rng.integers(9000, 9020, 4).tolist(), vocab.eos]
            ids = prompt + answer
            row = PackedRow(
                np.array(ids, np.int32),
                np.array([-100] * len(prompt) + answer, np.int32),
                np.array([0, len(ids)], np.int32),
                {"ids": [f"s{seed}r{r}"]},
            )
            writer.write(row)
            stats.add_row(row)
    write_manifest(
        out,
        build_manifest(
            settings={"seq_len": 96}, model={"dir": str(model_dir)}, stats=stats, shards=writer.shards
        ),
    )


def _cfg(shards, run, **kw):
    base = dict(shards=str(shards), output=str(run), lr=5e-3, max_steps=3, warmup_ratio=0.0, lora_r=4)
    return build_config(None, {**base, **kw})


def _train(cfg, model_dir):
    from medmax_cli.train.recipe import train

    return train(cfg, str(model_dir), show_progress=False)


def _state(run):
    from medmax_cli.train.checkpoint import STATE_FILE, latest_dir

    return json.loads((latest_dir(run) / STATE_FILE).read_text())


def test_resume_on_repacked_shards_is_refused_unless_asked(tmp_path, tiny_model_dir, medmax):
    shards, run = tmp_path / "shards", tmp_path / "run"
    write_shards(shards, tiny_model_dir, seed=0)
    _train(_cfg(shards, run, stop_after=1), tiny_model_dir)
    first = _state(run)["data"]
    assert first["shards"] == str(shards) and first["fingerprint"].startswith("sha256:")

    write_shards(shards, tiny_model_dir, seed=0)  # re-packed, same rows: same bytes, same fingerprint
    _train(_cfg(shards, run, stop_after=2, resume=True), tiny_model_dir)
    assert _state(run)["step"] == 2 and _state(run)["data"] == first

    write_shards(shards, tiny_model_dir, seed=1)  # re-packed from other data, same directory
    with pytest.raises(ConfigError) as caught:
        _train(_cfg(shards, run, resume=True), tiny_model_dir)
    message = str(caught.value)
    assert first["fingerprint"] in message and "--resume-new-data" in message
    assert _state(run)["step"] == 2  # nothing trained, nothing saved

    result = medmax("finetune", str(shards), "-o", str(run), "--resume", "-q", "--lr", "5e-3",
                    "--max-steps", "3", "--warmup-ratio", "0", "--lora-r", "4", check=False)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err
    assert first["fingerprint"] in err and "re-packed" in err

    summary = _train(_cfg(shards, run, resume=True, resume_new_data=True), tiny_model_dir)
    assert summary["finished"] and _state(run)["step"] == 3
    assert _state(run)["data"]["fingerprint"] not in (first["fingerprint"],)  # now the new data's


def test_resume_new_data_needs_resume():
    with pytest.raises(ConfigError, match="--resume-new-data goes with --resume"):
        build_config(None, {"shards": "s", "output": "o", "resume_new_data": True})
