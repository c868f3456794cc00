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
