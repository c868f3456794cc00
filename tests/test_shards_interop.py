"""pack's shards load in `webdataset` and in Hugging Face `datasets`' webdataset loader (issue 25
item 6): our own writer (byte-identical shards) and reader (exact resume) keep the format."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medmax_cli.cli import app


def vqa(i: int) -> dict:
    return {
        "id": f"q{i}",
        "task": "vqa",
        "source": "test",
        "license": "CC0",
        "images": [],
        "turns": [
            {"role": "user", "content": [{"text": f"Question number {i}?"}]},
            {"role": "assistant", "content": [{"text": "yes" if i % 2 else "no"}]},
        ],
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("interop") / "shards"
    src = out.parent / "in.jsonl"
    src.write_text("".join(json.dumps(vqa(i)) + "\n" for i in range(12)))
    res = CliRunner().invoke(
        app,
        [
            "pack",
            str(src),
            "-o",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--seq-len",
            "64",
            "--max-count",
            "2",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    return out, manifest


def test_webdataset_reads_every_row(shards):
    wds = pytest.importorskip("webdataset")
    out, manifest = shards
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    rows = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(rows) == manifest["rows"] and len(urls) > 1
    for row in rows:
        ids = np.load(io.BytesIO(row["input_ids.npy"]))
        labels = np.load(io.BytesIO(row["labels.npy"]))
        assert ids.shape == labels.shape and ids.dtype == np.int32
        assert json.loads(row["json"])["ids"]


def test_hf_datasets_webdataset_loader_reads_every_row(shards):
    datasets = pytest.importorskip(
        "datasets", reason="Hugging Face datasets is not installed (pip install datasets)"
    )
    out, manifest = shards
    files = [str(out / s["name"]) for s in manifest["shards"]]
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train", streaming=True)
    rows = list(ds)
    assert len(rows) == manifest["rows"]
    tokens = 0
    for row in rows:
        ids, labels = np.asarray(row["input_ids.npy"]), np.asarray(row["labels.npy"])
        assert ids.shape == labels.shape
        tokens += ids.size
    assert tokens == manifest["tokens"]
