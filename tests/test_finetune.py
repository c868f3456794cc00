"""`medmax finetune` on the tiny model: the real command, resume, 2 processes, adapter and merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medmax_cli.train.config import ConfigError, build_config, read_config_file

N_ROWS = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process references run on one thread, like the subprocesses (OMP_NUM_THREADS=1) they are
    compared with: a different thread count changes float reduction order, which Adam amplifies."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tiny_model_dir, tmp_path_factory) -> Path:
    """Packed shards in `medmax pack`'s format: rows of 2-3 samples, some answers are image blocks."""
    from medmax_cli.pack.manifest import PackStats, build_manifest, write_manifest
    from medmax_cli.pack.shards import PackedRow, ShardWriter
    from medmax_cli.text.vocab import ChameleonVocab

    vocab = ChameleonVocab.from_model_dir(tiny_model_dir)
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("shards")
    stats = PackStats(96)
    with ShardWriter(out, max_count=3) as writer:
        for r in range(N_ROWS):
            ids, labels, bounds = [], [], [0]
            for s in range(int(rng.integers(2, 4))):
                prompt = [vocab.bos, *rng.integers(9000, 9100, int(rng.integers(3, 8))), vocab.sep]
                if s == 0 and r % 2 == 0:  # an image answer: codes are ordinary targets
                    codes = vocab.image_code_to_id[rng.integers(0, vocab.n_codes, 8)]
                    answer = [vocab.boi, *codes, vocab.eoi, vocab.eos]
                else:
                    answer = [*rng.integers(9000, 9020, int(rng.integers(2, 6))), vocab.eos]
                ids += prompt + answer
                labels += [-100] * len(prompt) + answer
                bounds.append(len(ids))
            row = PackedRow(
                np.array(ids, np.int32),
                np.array(labels, np.int32),
                np.array(bounds, np.int32),
                {"ids": [f"r{r}s{i}" for i in range(len(bounds) - 1)]},
            )
            writer.write(row)
            stats.add_row(row)
    manifest = build_manifest(
        settings={"seq_len": 96}, model={"dir": str(tiny_model_dir)}, stats=stats, shards=writer.shards
    )
    write_manifest(out, manifest)
    return out


def _cfg(shards, run, **kw):
    base = dict(shards=str(shards), output=str(run), lr=5e-3, max_steps=4, warmup_ratio=0.25)
    return build_config(None, {**base, **kw})


def _train(cfg, model_dir):
    from medmax_cli.train.recipe import train

    return train(cfg, str(model_dir), show_progress=False)


def _metrics(run):
    from medmax_cli.train.metrics import read_metrics

    return read_metrics(run)


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def _assert_same_adapter(a, b, atol):
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


EXTRA = {"lora_modules_to_save": "lm_head"}  # a fully trained module in the adapter must resume too


@pytest.fixture(scope="module")
def uninterrupted(shards, tiny_model_dir, tmp_path_factory) -> Path:
    """The reference: 4 steps in one go."""
    whole = tmp_path_factory.mktemp("whole")
    _train(_cfg(shards, whole, **EXTRA), tiny_model_dir)
    return whole


def test_stop_and_resume_matches_uninterrupted(shards, tiny_model_dir, uninterrupted, tmp_path):
    parts = tmp_path / "parts"
    first = _train(_cfg(shards, parts, stop_after=2, **EXTRA), tiny_model_dir)
    assert first["steps"] == 2 and not first["finished"] and not (parts / "adapter").exists()
    # the second half recomputes half the layers in backward: same numbers
    second = _train(
        _cfg(shards, parts, resume=True, grad_checkpointing=True, grad_checkpointing_fraction=0.5, **EXTRA),
        tiny_model_dir,
    )
    assert second["finished"]
    a, b = _metrics(uninterrupted), _metrics(parts)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-6)
    _assert_same_adapter(uninterrupted / "adapter", parts / "adapter", atol=1e-6)
    with pytest.raises(ConfigError, match="lr"):  # resuming with another schedule is refused
        _train(_cfg(shards, parts, resume=True, lr=1e-3, **EXTRA), tiny_model_dir)


def test_killed_command_resumes_to_the_same_result(
    shards, tiny_model_dir, uninterrupted, tmp_path, medmax_inproc
):
    """SIGKILL the real command right after its first checkpoint, then --resume: same weights."""
    import os
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    flags = "--max-steps 4 --lr 5e-3 --warmup-ratio 0.25 --lora-modules-to-save lm_head -q".split()
    cmd = [sys.executable, "-m", "medmax_cli", "finetune", str(shards), "-o", str(run), *flags]
    proc = subprocess.Popen(
        [*cmd, "--save-every", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    latest = run / "checkpoints" / "latest"
    try:
        deadline = time.monotonic() + 120
        while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert latest.is_file(), proc.stderr.read().decode()
    # the resumed run needs no process of its own (same thread count as the kill: one)
    medmax_inproc(*cmd[3:], "--resume", env={"OMP_NUM_THREADS": "1"})
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4]
    _assert_same_adapter(uninterrupted / "adapter", run / "adapter", atol=1e-6)
    assert latest.read_text().strip() == "step-4" and not list((run / "checkpoints").glob(".tmp-*"))


def test_command_two_fsdp_processes_match_one_with_grad_accum_and_merge(
    medmax, shards, tiny_model_dir, tmp_path
):
    """The real command through the launcher: 2 gloo processes with FSDP2 (the multi-GPU default,
    which also runs on CPU) equal 1 process accumulating 2 micro-batches; outputs load back."""
    one, run = tmp_path / "one", tmp_path / "run"
    # --no-shuffle: the reader reads each rank's rows shard by shard, so a shuffled global batch
    # depends on the number of processes; in file order, step s holds the same rows either way
    _train(_cfg(shards, one, max_steps=3, grad_accum=2, shuffle=False), tiny_model_dir)
    flags = "--gpus 2 --strategy fsdp --max-steps 3 --save-every 2 --lr 5e-3 --warmup-ratio 0.25 --no-shuffle"
    result = medmax(
        "finetune", str(shards), "-o", str(run), *flags.split(), "--merge", env={"OMP_NUM_THREADS": "1"}
    )  # --model comes from the shards' manifest
    assert b"finished (3/3 steps)" in result.stderr and result.stdout == b""
    a, b = _metrics(one), _metrics(run)
    assert [r["step"] for r in b] == [1, 2, 3]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens"} <= b[0].keys()
    assert [r["supervised_tokens"] for r in a] == [r["supervised_tokens"] for r in b]
    # --loss-weighting sample (the default) with ranks holding different sample counts: the divisor
    # is the global sample count of the step, so the update equals one process's (checked below)
    from medmax_cli.pack.reader import PackedShards

    per_row = [len(r.boundaries) - 1 for r in PackedShards(shards).iter_rows(shuffle=False)]
    assert any(per_row[2 * s] != per_row[2 * s + 1] for s in range(3))  # rank 0 vs rank 1, same step
    assert [r["samples"] for r in b] == [per_row[2 * s] + per_row[2 * s + 1] for s in range(3)]
    assert [r["samples"] for r in a] == [r["samples"] for r in b] and b[0]["loss_weighting"] == "sample"
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in a], [r["grad_norm"] for r in b], rtol=1e-4)
    _assert_same_adapter(one / "adapter", run / "adapter", atol=1e-5)
    assert (run / "loss.png").stat().st_size > 0 and any((run / "tb").iterdir())
    saved = json.loads((run / "config.json").read_text())
    assert saved["lora_r"] == 16 and saved["model"] == str(tiny_model_dir) and saved["gpus"] == 2
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-3"
    assert (run / "checkpoints" / "step-2" / "trainer_state.json").is_file()

    from peft import PeftModel
    from transformers import ChameleonForConditionalGeneration

    ids = torch.tensor([[0, 9001, 9002, 8710, 9003, 9004]])
    base = ChameleonForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(run / "adapter")).eval()(input_ids=ids).logits
        merged = (
            ChameleonForConditionalGeneration.from_pretrained(run / "merged").eval()(input_ids=ids).logits
        )
    torch.testing.assert_close(tuned, merged, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(tuned, before, atol=1e-4)  # training changed the model
    assert (run / "merged" / "tokenizer.json").is_file()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(shards, tiny_model_dir, tmp_path, monkeypatch):
    from medmax_cli.train import recipe

    real = recipe.PackedCausalLM.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        loss, n = real(self, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), n

    monkeypatch.setattr(recipe.PackedCausalLM, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(recipe.NonFiniteLoss, match=r"step 3: loss nan.*step-2"):
        _train(_cfg(shards, run, save_every=2), tiny_model_dir)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert [r["step"] for r in _metrics(run)] == [1, 2]


def test_config_precedence_and_unknown_keys(tmp_path, medmax_inproc, shards):
    f = tmp_path / "ft.toml"
    f.write_text("lr = 3e-4\nlora-r = 8\nmax_steps = 10\n")
    cfg = build_config(read_config_file(f), {"lr": 1e-5, "epochs": None})
    assert (cfg.lr, cfg.lora_r, cfg.max_steps, cfg.epochs, cfg.lora_alpha) == (1e-5, 8, 10, 3, 16)
    with pytest.raises(ConfigError, match="unknown config key 'lerning_rate'"):
        build_config({"lerning_rate": 1.0})
    with pytest.raises(ConfigError, match="lora_r must be int"):
        build_config({"lora_r": "big"})
    f.write_text('{"lr": 1e-4, "bogus": 1}')
    bad = f.rename(tmp_path / "ft.json")
    result = medmax_inproc(
        "finetune", str(shards), "-o", str(tmp_path / "r"), "--config", str(bad), check=False
    )
    assert result.returncode == 2 and b"unknown config key 'bogus'" in result.stderr
    result = medmax_inproc(
        "finetune", str(shards), "-o", str(tmp_path / "r"), "--full", "--merge", check=False
    )
    assert result.returncode == 2 and b"--merge" in result.stderr


def test_launcher_reads_slurm_and_builds_torchrun_command():
    from medmax_cli.train.launcher import first_host, needs_launch, slurm_settings, torchrun_command

    assert first_host("gpu[03-05,09],cpu1") == "gpu03" and first_host("node7") == "node7"
    env = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "a100-[12-15]"}
    assert slurm_settings(env) == {"nodes": 4, "node_rank": 2, "master_addr": "a100-12"}
    assert slurm_settings({}) == {}
    cfg = build_config(None, {**slurm_settings(env), "gpus": 8, "master_port": 29600})
    cmd = torchrun_command(cfg, ["finetune", "shards"])
    joined = " ".join(cmd)
    assert "-m torch.distributed.run --nproc-per-node 8 --nnodes 4 --node-rank 2" in joined
    assert "--master-addr a100-12 --master-port 29600 -m medmax_cli finetune shards" in joined
    assert needs_launch(cfg, env={}) and not needs_launch(cfg, env={"LOCAL_RANK": "0", "WORLD_SIZE": "32"})
    assert "--standalone" in torchrun_command(build_config(None, {"gpus": 2}), ["finetune"])


def test_batches_resume_by_step_and_pad_to_block_multiples(shards):
    from medmax_cli.pack.reader import PackedShards
    from medmax_cli.train.data import TrainData, supervised_tokens

    data = TrainData(
        PackedShards(shards),
        1,
        2,
        micro_batch=1,
        grad_accum=2,
        seed=3,
        shuffle=True,
        pad_id=1,
        pad_multiple=32,
    )
    assert data.steps_per_epoch == 2  # 8 rows / 2 ranks / 2 rows per step
    it = data.batches(0)
    first = [next(it) for _ in range(5)]  # crosses into epochs 1 and 2
    resumed = next(data.batches(3))
    for a, b in zip(first[3], resumed, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for step in first:
        for mb in step:
            width = mb["input_ids"].shape[1]
            assert width % 32 == 0 or width == 96
            assert supervised_tokens(mb) > 0
    assert data.position(3) == {"epoch": 1, "row": 2}
