"""`medmax env` (issue 25 item 8): versions and the resolved model for a bug report."""

from __future__ import annotations

import json
from importlib import metadata

from typer.testing import CliRunner

from medmax_cli import __version__
from medmax_cli.cli import app


def test_env_lists_versions_and_model(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["env"], env={"MEDMAX_MODEL": str(tiny_model_dir)})
    assert res.exit_code == 0, res.output
    for name, version in [
        ("medmax", __version__),
        ("torch", metadata.version("torch")),
        ("transformers", metadata.version("transformers")),
        ("peft", metadata.version("peft")),
    ]:
        assert f"- {name}: {version}\n" in res.stdout
    assert "- Python: " in res.stdout and "- CUDA: " in res.stdout
    assert f"- model: {tiny_model_dir} (from environment MEDMAX_MODEL; random weights)" in res.stdout


def test_env_json_and_no_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["env", "--json"], env={"MEDMAX_MODEL": ""})
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["model"]["value"] is None and "--model tiny" in info["model"]["note"]
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text("{}")
    info = json.loads(CliRunner().invoke(app, ["env", "--json", "--model", str(real)]).stdout)
    assert info["model"]["random"] is False and info["model"]["source"] == "flag"


# --------------------------------------------------------------------------- inspect: a packed row by label


def qa(i: int) -> dict:
    return {
        "id": f"q{i}",
        "task": "vqa",
        "source": "test",
        "license": "CC0",
        "images": [],
        "turns": [
            {"role": "user", "content": [{"text": f"Is organ {i} a liver?"}]},
            {"role": "assistant", "content": [{"text": "yes it is"}]},
        ],
    }


def packed(tmp_path, tiny_model_dir, train_on="assistant"):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(qa(i)) + "\n" for i in range(3)))
    out = tmp_path / f"shards-{train_on}"
    args = ["pack", str(src), "-o", str(out), "--model", str(tiny_model_dir), "--seq-len", "128"]
    res = CliRunner().invoke(app, [*args, "--train-on", train_on, "-q"])
    assert res.exit_code == 0, res.output
    return out


def test_inspect_shows_each_token_by_its_label(tmp_path, tiny_model_dir):
    shards = packed(tmp_path, tiny_model_dir)
    res = CliRunner().invoke(app, ["inspect", str(shards), "--row", "0"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("row 0: ") and "--train-on assistant" in lines[0]
    assert ".     1  <s>" in lines and "+     1  </s>" in lines
    assert any(
        line.startswith(".") and "Is organ 0 a liver?" in line for line in lines
    )  # the question: masked
    assert any(line.startswith("+") and "yes it is" in line for line in lines)  # the answer: trained
    view = json.loads(CliRunner().invoke(app, ["inspect", str(shards), "--json"]).stdout)
    from medmax_cli.pack.reader import PackedShards

    row = next(PackedShards(shards).iter_rows(shuffle=False))
    trained_ids = [t for s in view["samples"] for r in s["runs"] if r["trained"] for t in r["ids"]]
    assert trained_ids == row.labels[row.labels != -100].tolist()  # the view is the labels, exactly
    assert [s["id"] for s in view["samples"]] == row.meta["ids"]


def test_inspect_follows_train_on(tmp_path, tiny_model_dir):
    shards = packed(tmp_path, tiny_model_dir, train_on="all")
    view = json.loads(CliRunner().invoke(app, ["inspect", str(shards), "--json"]).stdout)
    question = [r for r in view["samples"][0]["runs"] if "Is organ" in r["text"]]
    assert question and all(r["trained"] for r in question)


def test_inspect_row_out_of_range_and_not_shards(tmp_path, tiny_model_dir):
    shards = packed(tmp_path, tiny_model_dir)
    res = CliRunner().invoke(app, ["inspect", str(shards), "--row", "99"])
    assert res.exit_code == 2 and "out of range" in res.output
    res = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 2 and "manifest.json" in res.output
