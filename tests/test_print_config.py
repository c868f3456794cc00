"""`--print-config` prints the values that will run, for every command (issue 25 item 4): defaults
resolved, environment and config file applied, the model the environment selects; never
`(unset)` for something that has a default."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from medmax_cli.cli import app

GROUP = typer.main.get_command(app)


def commands(group=GROUP, path=()):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def required_args(command) -> list[str]:
    args: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        if param.param_type_name == "argument":
            args.append("x")
        else:
            args += [param.opts[0], "x"]
    return args


def print_config(argv, env=None):
    res = CliRunner().invoke(app, argv, env=env)
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.fixture(autouse=True)
def clean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("MEDMAX_MODEL", "MEDMAX_MEDIA", "MEDMAX_HEARTBEAT", "MEDMAX_LOG", "MEDMAX_STATS_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "path,command", list(commands()), ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_command_prints_resolved_settings(path, command):
    out = print_config([*path, *required_args(command), "--print-config"])
    assert out.startswith(f"[{'.'.join(path)}]\n")
    assert "(unset)" not in out
    for line in out.splitlines()[1:]:
        # a value line, or a comment saying what decides the value: never a bare "default" for None
        assert re.match(r"^[a-z0-9-]+ = .+  # .+$", line) or re.match(
            r"^# [a-z0-9-]+ = \.\.\.  # .+$", line
        ), line
        assert not re.match(r"^# .* = \.\.\.  # default$", line), line
    if any(p.name == "on_error" for p in command.params):  # stage options shown with their values
        assert "\nheartbeat = 30.0  # default\n" in out
        assert '\nlog-level = "warning"  # default\n' in out


def test_finetune_shows_the_recipe_not_unset():
    out = print_config(["finetune", "shards", "-o", "run", "--print-config", "--lora-r", "8"])
    assert "lora-r = 8  # flag" in out
    assert "lora-alpha = 16  # default (the MedMax recipe)" in out
    assert 'lora-targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"' in out
    assert "epochs = 3" in out and 'attn = "auto"' in out
    assert "# max-steps = ...  # none: epochs x steps per epoch" in out


def test_environment_and_model_applied(tmp_path):
    env = {"MEDMAX_MODEL": "models/anole-7b", "MEDMAX_MEDIA": "/data/media", "MEDMAX_HEARTBEAT": "5"}
    out = print_config(["pack", "-o", "s", "--print-config"], env=env)
    assert 'model = "models/anole-7b"  # environment MEDMAX_MODEL' in out
    assert 'media-dir = "/data/media"  # environment MEDMAX_MEDIA' in out
    assert "heartbeat = 5.0  # environment MEDMAX_HEARTBEAT" in out
    (tmp_path / "medmax.toml").write_text('model = "models/x"\n')
    out = print_config(["tokenize-images", "--print-config"], env={"MEDMAX_MODEL": ""})
    assert re.search(r'model = "models/x"  # .*medmax\.toml', out)
    (tmp_path / "medmax.toml").unlink()
    out = print_config(["generate", "--print-config"], env={"MEDMAX_MODEL": ""})
    assert "# model = ...  # none chosen: the command exits 2" in out and "--model tiny" in out


def test_other_hidden_defaults_resolved():
    assert 'contact = "' in print_config(["fetch", "pmc", "--print-config"])
    out = print_config(["fetch", "pmc", "--print-config"], env={"MEDMAX_CONTACT": "me@example.org"})
    assert 'contact = "me@example.org"  # environment MEDMAX_CONTACT' in out
    assert re.search(r'^llm-cache = ".+/medmax/llm"', print_config(["synthesize", "--print-config"]), re.M)
    out = print_config(["score", "--print-config", "--judge-url", "http://127.0.0.1:9/v1"])
    assert 'judge-cache = ".medmax-cache/judge"  # default with a judge' in out


def test_generate_shows_preset_values():
    out = print_config(["generate", "--print-config", "--preset", "medmax-eval"])
    assert "temperature = 0.0  # preset medmax-eval" in out
    out = print_config(["generate", "--print-config"])
    assert "# temperature = ...  # per preset: anole 1.0, medmax-eval 0.0" in out
    assert "top-p = 0.9  # default (both presets)" in out


@pytest.mark.parametrize("path", [("pack", "-o", "s"), ("finetune", "shards", "-o", "run"), ("generate",)])
def test_printed_config_reads_back(tmp_path, path):
    """What --print-config prints is a config file --config accepts, and it prints the same again."""
    first = print_config([*path, "--print-config"], env={"MEDMAX_MODEL": "tiny"})
    saved = tmp_path / "printed.toml"
    saved.write_text(first)
    again = print_config(["--config", str(saved), *path, "--print-config"], env={"MEDMAX_MODEL": "tiny"})
    strip = lambda text: [re.sub(r"  # .*$", "", line) for line in text.splitlines()]  # noqa: E731
    assert strip(again) == strip(first)
