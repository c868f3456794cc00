"""Issue 24 class 10: every option a command has can be set in --config; a malformed config exits 2
naming --config; --heartbeat refuses non-finite values; `stats merge` names a malformed piece's
file and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medmax_cli.cli import app
from medmax_cli.config import ConfigFileError, _config_key, read_config

REPO = Path(__file__).resolve().parents[1]
GROUP = typer.main.get_command(app)


def invoke(argv, env=None, input=None):
    return CliRunner().invoke(app, [str(a) for a in argv], env=env, input=input)


def sample_value(param):
    """A value the option accepts: its default, else one of its type."""
    descriptor = param.type_descriptor
    many = descriptor.is_list or param.nargs == -1
    if descriptor.is_tuple and param.default is None:
        return ["x"] * param.nargs
    if param.default is not None and not callable(param.default):
        value = param.default
        value = list(value) if isinstance(value, tuple) else value
        return str(value) if isinstance(value, Path) else value
    kind = descriptor.annotation
    kind = kind.__args__[0] if many and getattr(kind, "__args__", None) else kind
    value = {int: 1, float: 0.5, bool: False}.get(kind, "x")
    return [value] if many else value


def tables(group=GROUP):
    out = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            out[name] = tables(command)
        else:
            out[name] = {
                _config_key(p): sample_value(p) for p in command.params if p.name and p.name != "help"
            }
    return out


def test_every_option_of_every_command_can_be_set(tmp_path):
    import tomllib

    def dump(table, prefix=""):
        lines, subs = [], []
        for key, value in table.items():
            if isinstance(value, dict):
                subs.append((f"{prefix}{key}", value))
            else:
                lines.append(f"{json.dumps(key)} = {json.dumps(value)}")
        text = (f"[{prefix[:-1]}]\n" if prefix else "") + "\n".join(lines) + "\n"
        for name, sub in subs:
            text += dump(sub, name + ".")
        return text

    data = tables()
    config = tmp_path / "all.toml"
    config.write_text(dump(data))
    tomllib.loads(config.read_text())
    mapped = read_config(config, GROUP)
    n_options = sum(len(v) for v in data.values() if not isinstance(next(iter(v.values()), None), dict))
    assert n_options > 100
    assert "mm_max_reject_rate" in mapped["pack"] and "mm_heartbeat" in mapped["pack"]
    assert "mm_stats" in mapped["finetune"] and "mm_log_level" in mapped["fetch"]["pmc"]


def docs_example() -> str:
    text = (REPO / "docs" / "observe.md").read_text()
    section = text[text.index("## Config file and `--print-config`") :]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


def test_the_docs_example_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(docs_example())
    res = invoke(
        ["--config", "run.toml", "pack", "--print-config", "-o", "shards/"], env={"MEDMAX_MODEL": "tiny"}
    )
    assert res.exit_code == 0, res.output
    assert "seq-len = 4096  # config file" in res.stdout
    assert "max-reject-rate = 0.01  # config file" in res.stdout
    res = invoke(["--config", "run.toml", "fetch", "pmc", "--print-config"])
    assert res.exit_code == 0, res.output
    assert "page-size = 500  # config file" in res.stdout


def test_print_config_itself_can_be_set(tmp_path):
    (tmp_path / "c.toml").write_text("[cat]\nprint-config = true\nformat = 'tar'\n")
    res = invoke(["--config", tmp_path / "c.toml", "cat"])
    assert res.exit_code == 0 and 'format = "tar"  # config file' in res.stdout
    assert "print-config" not in res.stdout


def test_common_options_from_config_take_effect(tmp_path):
    """max-reject-rate set in the config is the limit the stage applies."""
    (tmp_path / "c.toml").write_text("[cat]\nmax-reject-rate = 0.0\non-error = 'skip'\n")
    rejects = tmp_path / "r.jsonl"
    lines = json.dumps({"id": "a", "task": "vqa"}) + "\nnot json\n"
    res = invoke(["--config", tmp_path / "c.toml", "cat", "--rejects", rejects, "-q"], input=lines)
    assert res.exit_code == 1, res.output  # one reject of two: above 0.0


@pytest.mark.parametrize(
    "content,why",
    [
        (b"\xff\xfe[cat]\n", "not UTF-8"),
        (b"[cat]\nheartbeat = 1" + b"0" * 40 + b"\n", "beyond 64 bits"),
        (b"x = " + b"[" * 50000 + b"]" * 50000 + b"\n", "nested too deeply"),
        (b"[cat]\nheartbeat = inf\n", "finite"),
        (b"[cat]\nheartbeat = nan\n", "finite"),
        (b"[cat]\nno-such-key = 1\n", "unknown key"),
        (b"[no-such-command]\n", "unknown section"),
        (b"cat = 3\n", "must be a section"),
        (b"[cat]\nquiet = 'yes'\n", "true or false"),
        (b"[cat]\nformat = ['jsonl']\n", "a list"),
        (b"[cat]\nmax-reject-rate = 7\n", "less than or equal"),
        (b"[cat\n", "not valid TOML"),
    ],
)
def test_malformed_config_exits_2_naming_config(tmp_path, content, why):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    res = invoke(["--config", bad, "cat", "-q"], input="")
    assert res.exit_code == 2, res.output
    assert "--config" in res.output and str(bad) in res.output and why in res.output


def test_config_that_is_not_a_file(tmp_path):
    res = invoke(["--config", tmp_path, "cat", "-q"], input="")
    assert res.exit_code == 2 and "--config" in res.output
    with pytest.raises(ConfigFileError):
        read_config(tmp_path / "missing.toml", GROUP)


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "-inf"])
def test_heartbeat_refuses_non_finite(value):
    res = invoke(["cat", f"--heartbeat={value}", "-q"], input="")
    assert res.exit_code == 2, res.output


def test_heartbeat_env_refuses_non_finite():
    res = invoke(["cat", "-q"], input="", env={"MEDMAX_HEARTBEAT": "inf"})
    assert res.exit_code == 2 and "MEDMAX_HEARTBEAT" in res.output


def piece(**over):
    base = {
        "medmax_stats": 1,
        "stage": "cat",
        "command": "medmax cat",
        "status": "ok",
        "shard": "0/1",
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:01+00:00",
        "seconds": 1.0,
        "counts": {"in": 2, "out": 2},
        "rejected": {},
        "settings": {},
    }
    return {**base, **over}


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"counts": {"in": "2"}}, "counts.in"),
        ({"counts": {"in": 2**70}}, "counts.in"),
        ({"counts": {"in": -1}}, "counts.in"),
        ({"counts": [1]}, "counts"),
        ({"rejected": {"x": 1.5}}, "rejected.x"),
        ({"seconds": "fast"}, "seconds"),
        ({"shard": "x/y"}, "shard"),
        ({"shard": "3/2"}, "shard"),
        ({"started": 5}, "started"),
        ({"settings": []}, "settings"),
        ({"command": None}, "command"),
    ],
)
def test_stats_merge_names_file_and_field(tmp_path, bad, field):
    path = tmp_path / "piece.json"
    path.write_text(json.dumps(piece(**bad)))
    res = invoke(["stats", "merge", path])
    assert res.exit_code == 1, res.output
    assert str(path) in res.output and f"field {field!r}" in res.output


def test_stats_merge_piece_not_an_object(tmp_path):
    path = tmp_path / "piece.json"
    path.write_text("[1, 2]")
    res = invoke(["stats", "merge", path])
    assert res.exit_code == 1 and str(path) in res.output and "not a JSON object" in res.output


def test_stats_merge_good_piece(tmp_path):
    path = tmp_path / "piece.json"
    path.write_text(json.dumps(piece()))
    res = invoke(["stats", "merge", path])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"] == {"in": 2, "out": 2}
