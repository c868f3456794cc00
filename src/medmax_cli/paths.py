"""Before a stage reads a byte: refuse outputs that would destroy an input or each other.

Every command's paths are resolved once, by the same rule, before it runs (`check_command`,
called for every command by the CLI wrapper in cliutil, and by `StageIO` for its own paths):

- an output that *is* an input (`-o IN`, `--rejects IN --rejects-append`, `--stats IN`, or stdout
  redirected into the input with `>> IN`) would replace or grow the data it reads;
- two outputs that are one file (`-o X --rejects X`, `-o X --stats X`) would leave only the one
  renamed last;
- an input (or another output) inside an output folder, under a name that the folder's stage
  clears or writes (`pack shards/shard-000000.tar -o shards/`), would be removed before it is read.

Sameness is decided as the kernel sees it: an existing file by (st_dev, st_ino), so symbolic links
and hard links to one file are one file; a path that does not exist yet by its `realpath`.
What is not a regular file or folder (`/dev/null`, a FIFO, a terminal) is written in place and
may be shared. A collision is a usage error: exit 2, before any input is read or output opened.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class PathCollision(ValueError):
    """Two of a command's paths are one file, or an input would be cleared by an output."""


# Parameter names that hold input paths (files or folders), whatever the command.
INPUT_PARAMS = (
    "input",
    "inputs",
    "path",
    "paths",
    "files",
    "shards",
    "ids",
    "exclude",
    "expect",
    "compare",
    "root",
    "images",
    "config",
    "root_config",
    "model",
    "adapter",
    "vq_decoder",
    "clip_model",
)
# Parameter names that hold output files.
OUTPUT_FILE_PARAMS = ("output", "rejects", "summary", "state_path")

# Output folders: command -> parameter -> the names (glob patterns) the stage writes or clears in it.
# "*" means the folder is the stage's alone.
OUTPUT_FOLDERS: dict[str, dict[str, tuple[str, ...]]] = {
    "medmax pack": {
        "output": ("shard-*.tar", ".shard-*.tmp", "manifest.json", ".manifest.json.*", ".lock"),
    },
    "medmax finetune": {
        "output": (
            "config.json",
            "metrics.jsonl",
            "loss.png",
            "tb",
            "checkpoints",
            "adapter",
            "model",
            "merged",
            ".lock",
            ".*.tmp",
            ".*.tmp.*",
        ),
    },
    "medmax report": {"output": ("index.html", "img", ".index.html.*")},
    "medmax score": {"report": ("summary.json", "table.md", "scores.png")},
    "medmax init-model": {"out": ("*",)},
}


@dataclass
class CommandPaths:
    """A command's paths by role, each as (how the user named it, path)."""

    inputs: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    folders: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)


def _flag(name: str) -> str:
    short = {
        "root_config": "--config",
        "input": "input",
        "inputs": "input",
        "path": "input",
        "paths": "input",
        "files": "input",
    }
    return short.get(name) or ("-o" if name in ("output", "out") else "--" + name.replace("_", "-"))


def _values(value: Any) -> list[str]:
    if value is None or value is False or value is True:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def command_paths(
    command: str, params: Mapping[str, Any], *, stats: Path | str | None = None
) -> CommandPaths:
    """Sort a command's resolved parameters into inputs, output files and output folders."""
    found = CommandPaths()
    folders = OUTPUT_FOLDERS.get(command, {})
    if command == "medmax finetune" and params.get("resume"):  # --resume keeps RUN/config.json
        folders = {k: tuple(p for p in v if p != "config.json") for k, v in folders.items()}
    for name, value in params.items():
        if name in folders:
            found.folders += [(_flag(name), v, folders[name]) for v in _values(value) if v != "-"]
        elif name in INPUT_PARAMS:
            found.inputs += [(_flag(name), v) for v in _values(value)]
        elif name in OUTPUT_FILE_PARAMS:
            found.outputs += [(_flag(name), v) for v in _values(value)]
    if stats is not None:
        found.outputs.append(("--stats", str(stats)))
    return found


def check_command(command: str, params: Mapping[str, Any], *, stats: Path | str | None = None) -> None:
    """Raise PathCollision when the command's paths collide (see the module docstring)."""
    check(command_paths(command, params, stats=stats))


# --------------------------------------------------------------------------- identity


def _std_stat(fd_name: str) -> os.stat_result | None:
    """fstat of stdin/stdout when it is a regular file (a shell redirection), else None."""
    stream = getattr(sys, fd_name, None)
    try:
        fd = stream.fileno()  # type: ignore[union-attr]
        result = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    return result if stat.S_ISREG(result.st_mode) else None


@dataclass(frozen=True)
class _Resolved:
    label: str
    shown: str
    key: tuple[Any, ...] | None  # None: shared freely (a device, a FIFO, a terminal)
    real: str  # realpath ("" for stdin/stdout)
    is_dir: bool = False


def _resolve(label: str, value: str, *, std: str | None) -> _Resolved:
    if value == "-":
        st = _std_stat(std) if std else None
        shown = "stdin" if std == "stdin" else "stdout"
        return _Resolved(label, shown, ("ino", st.st_dev, st.st_ino) if st else None, "")
    real = os.path.realpath(value)
    try:
        st = os.stat(value)
    except (OSError, ValueError):
        try:  # `new/../IN`: the folders a writer makes on the way lead to an existing file
            st = os.stat(real)
        except (OSError, ValueError):
            return _Resolved(label, value, ("path", real), real)
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return _Resolved(label, value, ("ino", st.st_dev, st.st_ino), real, stat.S_ISDIR(st.st_mode))
    return _Resolved(label, value, None, real)


def _where(item: _Resolved) -> str:
    return f"{item.label} {item.shown}" if item.label != "input" else f"input {item.shown}"


def _owned_within(folder: _Resolved, patterns: tuple[str, ...], item: _Resolved) -> bool:
    """Whether `item` is the folder itself or lies under a name the folder's stage writes or clears."""
    if not item.real or not folder.real:
        return False
    if item.key is not None and item.key == folder.key:
        return True
    base = folder.real.rstrip(os.sep) + os.sep
    if not item.real.startswith(base):
        return False
    first = item.real[len(base) :].split(os.sep, 1)[0]
    return any(fnmatch.fnmatchcase(first, p) for p in patterns)


def check(paths: CommandPaths) -> None:
    """Raise PathCollision naming both paths of the first collision found."""
    for label, value in paths.outputs:
        if value == "-" and label in ("--rejects", "--stats"):  # would make a file named "-"
            raise PathCollision(f"{label} -: stdout carries the records and stderr the log; give a file")
    inputs = [_resolve(label, v, std="stdin") for label, v in paths.inputs]
    outputs = [_resolve(label, v, std="stdout") for label, v in paths.outputs]
    folders = [(_resolve(label, v, std=None), pats) for label, v, pats in paths.folders]

    for i, out in enumerate(outputs):
        if out.key is None:
            continue
        for inp in inputs:
            if inp.key == out.key:
                raise PathCollision(
                    f"{_where(out)} is the {_where(inp)}: writing it would destroy what is read "
                    "(write to another file)"
                )
        for other in outputs[:i]:
            if other.key == out.key:
                raise PathCollision(
                    f"{_where(out)} and {_where(other)} are one file: one would overwrite the other"
                )
    for folder, patterns in folders:
        for inp in inputs:
            if _owned_within(folder, patterns, inp):
                raise PathCollision(
                    f"{_where(inp)} is inside the output folder {_where(folder)}, which this command "
                    "clears or rewrites: it would be removed before it is read (write to another folder)"
                )
        for out in outputs:
            if out.key is not None and _owned_within(folder, patterns, out):
                raise PathCollision(
                    f"{_where(out)} is a file the output folder {_where(folder)} is written with: "
                    "one would overwrite the other"
                )
        for out in outputs:
            if out.key is not None and out.key == folder.key:
                raise PathCollision(f"{_where(out)} is the output folder {_where(folder)}")


def check_stage(
    *, input: str | None, output: str | None, rejects: Path | str | None, stats: Path | str | None
) -> None:
    """The same check for a StageIO's own paths (library use, and the default rejects file)."""
    paths = CommandPaths(
        inputs=[("input", input)] if input is not None else [],
        outputs=[
            (label, str(v))
            for label, v in (("-o", output), ("--rejects", rejects), ("--stats", stats))
            if v is not None
        ],
    )
    check(paths)
