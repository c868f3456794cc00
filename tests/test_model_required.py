"""No silent random model: a command that needs a model and has none chosen exits 2 saying how to
choose one, and every output made with a random model says so (issue 25 item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medmax_cli.cli import app
from medmax_cli.model.load import model_is_random

NO_MODEL = {"MEDMAX_MODEL": ""}  # CliRunner sets "" ... resolve treats it as unset


def invoke(args, *, env=None, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env, input=input)


def vqa(rid: str = "q1") -> dict:
    return {
        "id": rid,
        "task": "vqa",
        "source": "test",
        "license": "CC0",
        "images": [],
        "turns": [
            {"role": "user", "content": [{"text": "Is this a liver?"}]},
            {"role": "assistant", "content": [{"text": "yes"}]},
        ],
    }


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """A working directory without medmax.toml, an empty cache, and no MEDMAX_MODEL."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDMAX_MODEL", raising=False)
    monkeypatch.setenv("MEDMAX_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(vqa()) + "\n")
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ["tokenize-images", "in.jsonl"],
        ["detokenize", "in.jsonl"],
        ["pack", "in.jsonl", "-o", "shards"],
        ["generate", "in.jsonl"],
    ],
    ids=lambda a: a[0],
)
def test_no_model_exits_2_saying_how_to_choose(nowhere, args):
    res = invoke(args, env=NO_MODEL)
    assert res.exit_code == 2, res.output
    assert "no model chosen" in res.output and "--model tiny" in res.output and "MEDMAX_MODEL" in res.output
    assert not (nowhere / "cache" / "tiny-model-v1").exists()  # nothing built behind the user's back
    assert not (nowhere / "shards").exists()


def test_finetune_without_a_model_exits_2(nowhere, tiny_model_dir):
    """Shards whose manifest records no model, and no --model: exit 2 (not 1, not a random model)."""
    from medmax_cli.train.data import MODEL_DIR_KEYS

    shards = nowhere / "shards"
    res = invoke(["pack", "in.jsonl", "-o", shards, "--model", tiny_model_dir, "--seq-len", "64", "-q"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((shards / "manifest.json").read_text())
    for key in MODEL_DIR_KEYS:
        manifest["model"].pop(key, None)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    res = invoke(["finetune", shards, "-o", nowhere / "run"], env=NO_MODEL)
    assert res.exit_code == 2, res.output
    assert "--model tiny" in res.output


def test_medmax_toml_chooses_the_model(nowhere, tiny_model_dir):
    (nowhere / "medmax.toml").write_text(f'model = "{tiny_model_dir}"\n')
    res = invoke(["tokenize-images", "in.jsonl", "-q"], env=NO_MODEL)
    assert res.exit_code == 0, res.output


def test_random_marker(tiny_model_dir, tmp_path):
    assert model_is_random(tiny_model_dir)
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text("{}")
    assert not model_is_random(real)  # a Hugging Face conversion has no medmax_model.json
    (real / "medmax_model.json").write_text(json.dumps({"random_weights": False}))
    assert not model_is_random(real)


def test_pack_manifest_says_model_random(nowhere, tiny_model_dir):
    res = invoke(["pack", "in.jsonl", "-o", "shards", "--model", tiny_model_dir, "--seq-len", "64", "-q"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((nowhere / "shards" / "manifest.json").read_text())
    assert manifest["model_random"] is True


def test_pack_with_tiny_keyword_marks_random(nowhere):
    """`--model tiny` is the explicit way to the demo model; the manifest still says it is random."""
    res = invoke(
        ["pack", "in.jsonl", "-o", "shards", "--model", "tiny", "--seq-len", "64", "-q"], env=NO_MODEL
    )
    assert res.exit_code == 0, res.output
    assert json.loads((nowhere / "shards" / "manifest.json").read_text())["model_random"] is True


def test_generate_predictions_say_model_random(nowhere, tiny_model_dir):
    res = invoke(
        ["generate", "in.jsonl", "--model", tiny_model_dir, "--max-new-tokens", "2", "--device", "cpu", "-q"]
    )
    assert res.exit_code == 0, res.output
    preds = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert preds and all(p["generation"]["settings"]["model_random"] is True for p in preds)


def test_finetune_run_config_says_model_random(tmp_path, tiny_model_dir):
    from medmax_cli.train import checkpoint
    from medmax_cli.train.config import TrainConfig

    checkpoint.save_config(tmp_path / "run", TrainConfig(), str(tiny_model_dir))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_random"] is True and saved["model"] == str(tiny_model_dir)
    real = Path(tmp_path / "real")
    real.mkdir()
    (real / "config.json").write_text("{}")
    checkpoint.save_config(tmp_path / "run2", TrainConfig(), str(real))
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["model_random"] is False
