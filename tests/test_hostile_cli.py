"""Hostile-input sweep: every command, through the entry `python -m medmax_cli <cmd>` runs (in this
process; a sample of each kind also in a real subprocess), on bad input made here: garbage bytes, an empty file, JSON of the wrong types, a missing model directory,
an output path that cannot be created. Each must fail with exit status != 0, no Python traceback,
and a message naming the offending file. (Empty input is fine for a stream stage: zero records in,
zero out, exit 0; it only must not trace back.)

Environment faults (an unwritable output) go through the one top-level error handler (errors.py) that
turns OSError and friends into `medmax <cmd>: cannot ...: <path>: <reason>`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Garbage: not UTF-8, NULs, a stray newline or two.
GARBAGE = bytes(range(256)) * 3 + b"\n\xff\xfe\x00{\n" + bytes(range(255, -1, -1))
WRONG_TYPES = (
    json.dumps({"id": 5, "kind": ["figure"], "images": "x.png", "turns": 3, "caption": {"a": 1}})
    + "\n"
    + json.dumps([1, 2, 3])
    + "\n"
).encode()


@dataclass
class Case:
    """One command line: `args` with {tmp}, {model}, {input} placeholders; what must be named."""

    name: str
    args: list[str]
    input: bytes | None = None  # written to {input} (the file name is in `input_name`)
    input_name: str = "input.jsonl"
    names: str = "{input}"  # this (formatted) must appear in stderr
    empty_ok: bool = False  # exit 0 is a right answer (empty input)
    setup: list[tuple[str, bytes]] = field(default_factory=list)  # extra files (relative, bytes)
    real_shards: bool = False  # {input} is a valid shard directory (finetune)


def _stream(
    cmd: list[str],
    model: bool = False,
    out: bool = True,
    only: tuple[str, ...] | None = None,
) -> list[Case]:
    """The standard cases of a stage that reads records from a file argument (`only` these kinds;
    the model-loading commands run fewer: each start costs seconds of torch import)."""
    extra = ["--model", "{model}"] if model else []
    extra += ["--device", "cpu"] if cmd[0] in ("tokenize-images", "detokenize", "generate", "pack") else []
    output = ["-o", "{tmp}/out.jsonl"] if out else []
    if cmd[0] == "pack":
        output = ["-o", "{tmp}/shards"]
    key = " ".join(cmd)
    cases = [
        Case(f"{key}: garbage", [*cmd, "{input}", *extra, *output], GARBAGE),
        Case(f"{key}: empty", [*cmd, "{input}", *extra, *output], b"", empty_ok=True),
        Case(f"{key}: wrong types", [*cmd, "{input}", *extra, *output], WRONG_TYPES),
        Case(f"{key}: missing input", [*cmd, "{tmp}/absent.jsonl", *extra, *output], names="absent.jsonl"),
    ]
    if model:
        cases.append(
            Case(
                f"{key}: missing model",
                [*cmd, "{input}", "--model", "{tmp}/no-model", *extra[2:], *output],
                WRONG_TYPES,
                names="no-model",
            )
        )
    if out:
        target = "{tmp}/a-file/shards" if cmd[0] == "pack" else "{tmp}/a-file/out.jsonl"
        good = json.dumps(
            {"id": "ok", "kind": "figure", "source": "pmc", "license": "cc-by", "caption": "A chest X-ray."}
        ).encode()
        cases.append(
            Case(
                f"{key}: unwritable output",
                [*cmd, "{input}", *extra, "-o", target],
                good + b"\n",
                names="a-file",
                setup=[("a-file", b"a regular file, not a directory\n")],
            )
        )
    return [c for c in cases if only is None or c.name.split(": ", 1)[1] in only]


def _finetune() -> list[Case]:
    run = ["-o", "{tmp}/run", "--max-steps", "1"]
    return [
        Case(
            "finetune: garbage manifest",
            ["finetune", "{input}", *run],
            GARBAGE,
            "manifest.json",
            names="manifest.json",
        ),
        Case(
            "finetune: empty manifest",
            ["finetune", "{input}", *run],
            b"",
            "manifest.json",
            names="manifest.json",
        ),
        Case(
            "finetune: wrong-type manifest",
            ["finetune", "{input}", *run],
            json.dumps(
                {"format": "medmax-packed-shards", "shards": "shard-000000.tar", "seq_len": "x"}
            ).encode(),
            "manifest.json",
            names="manifest.json",
        ),
        Case("finetune: missing shards", ["finetune", "{tmp}/no-shards", *run], names="no-shards"),
        Case(
            "finetune: missing model",
            ["finetune", "{input}", "--model", "{tmp}/no-model", *run],
            names="no-model",
            real_shards=True,
        ),
    ]


def _fetch() -> list[Case]:
    out = ["-o", "{tmp}/out.jsonl"]
    return [
        Case("fetch jsonl: garbage", ["fetch", "jsonl", "{input}", "--root", "{tmp}", *out], GARBAGE),
        Case("fetch jsonl: wrong types", ["fetch", "jsonl", "{input}", "--root", "{tmp}", *out], WRONG_TYPES),
        Case(
            "fetch jats: garbage",
            ["fetch", "jats", "{input}", *out],
            GARBAGE,
            "article.xml",
            names="article.xml",
        ),
        Case(
            "fetch jats: empty", ["fetch", "jats", "{input}", *out], b"", "article.xml", names="article.xml"
        ),
        Case(
            "fetch vqa-rad: garbage",
            ["fetch", "vqa-rad", "{input}", "--images", "{tmp}", *out],
            GARBAGE,
            "VQA_RAD Dataset Public.json",
            names="VQA_RAD Dataset Public.json",
        ),
        Case(
            "fetch vqa-rad: wrong types",
            ["fetch", "vqa-rad", "{input}", "--images", "{tmp}", *out],
            json.dumps({"qid": 1}).encode(),
            "VQA_RAD Dataset Public.json",
            names="VQA_RAD Dataset Public.json",
        ),
    ]


CASES: list[Case] = [
    *_stream(["cat"]),
    *[c for c in _stream(["validate"], out=False)],
    *_stream(["synthesize"]),
    *_stream(["score"]),
    *_stream(["tokenize-images"], model=True, only=("garbage", "wrong types", "missing model")),
    *_stream(["detokenize"], model=True, only=("garbage", "missing model")),
    *_stream(
        ["pack"],
        model=True,
        only=("garbage", "empty", "wrong types", "missing model", "unwritable output"),
    ),
    *_stream(["generate", "--max-new-tokens", "2"], model=True, only=("wrong types", "missing model")),
    *_finetune(),
    *_fetch(),
    Case(
        "init-model: unwritable output",
        ["init-model", "--tiny", "-o", "{tmp}/a-file/model"],
        names="a-file",
        setup=[("a-file", b"x\n")],
    ),
]


def _write_shards(out: Path) -> None:
    """A valid one-row shard directory, so the case gets past reading its data."""
    import numpy as np

    from medmax_cli.pack.manifest import PackStats, build_manifest, write_manifest
    from medmax_cli.pack.shards import PackedRow, ShardWriter

    stats = PackStats(16)
    with ShardWriter(out) as writer:
        row = PackedRow(
            np.array([0, 9000, 9001, 2], np.int32),
            np.array([-100, -100, 9001, 2], np.int32),
            np.array([0, 4], np.int32),
            {"ids": ["a"]},
        )
        writer.write(row)
        stats.add_row(row)
    write_manifest(out, build_manifest(settings={"seq_len": 16}, model={}, stats=stats, shards=writer.shards))


def _prepare(case: Case, tmp_path: Path, tiny_model_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The case's files under tmp_path; its command line and placeholder values."""
    for rel, data in case.setup:
        (tmp_path / rel).write_bytes(data)
    input_path = tmp_path / case.input_name
    if case.real_shards:
        input_path = tmp_path / "shards"
        _write_shards(input_path)
    if case.input is not None:
        if case.input_name == "manifest.json":  # finetune reads a shard directory
            input_path = tmp_path / "shards"
            input_path.mkdir()
            (input_path / "manifest.json").write_bytes(case.input)
        else:
            input_path.write_bytes(case.input)
    fill = {"tmp": str(tmp_path), "model": str(tiny_model_dir), "input": str(input_path)}
    return [a.format(**fill) for a in case.args], fill


def _check(case: Case, args: list[str], fill: dict[str, str], returncode: int, stderr: bytes) -> None:
    err = stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, f"medmax {' '.join(args)}: traceback:\n{err[-3000:]}"
    if case.empty_ok and returncode == 0:
        return
    assert returncode != 0, f"medmax {' '.join(args)} exited 0 on bad input:\n{err[-2000:]}"
    named = case.names.format(**fill) if "{" in case.names else case.names
    assert named in err, f"medmax {' '.join(args)}: stderr does not name {named!r}:\n{err[-2000:]}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_cleanly_naming_the_file(
    case: Case, tmp_path: Path, tiny_model_dir: Path, medmax_inproc
):
    """In this process (the same top-level handler as `python -m medmax_cli`, without the start-up)."""
    args, fill = _prepare(case, tmp_path, tiny_model_dir)
    env = {"OMP_NUM_THREADS": "1", "MEDMAX_MEDIA": str(tmp_path / "media")}
    result = medmax_inproc(*args, env=env, cwd=tmp_path, check=False)
    _check(case, args, fill, result.returncode, result.stderr)


# One case of each kind of command (stream stage, model stage, trainer, fetcher, model builder)
# through the real entry point with stdin /dev/null, so that what the interpreter adds (start-up,
# __main__, shutdown) is covered too.
AS_A_USER = [
    "cat: garbage",
    "pack: missing model",
    "finetune: wrong-type manifest",
    "fetch jats: garbage",
    "init-model: unwritable output",
]


@pytest.mark.parametrize("name", AS_A_USER)
def test_bad_input_fails_cleanly_as_a_user_runs_it(name: str, tmp_path: Path, tiny_model_dir: Path):
    (case,) = [c for c in CASES if c.name == name]
    args, fill = _prepare(case, tmp_path, tiny_model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDMAX_MEDIA": str(tmp_path / "media")}
    result = subprocess.run(
        [sys.executable, "-m", "medmax_cli", *args],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    _check(case, args, fill, result.returncode, result.stderr)
