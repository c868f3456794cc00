"""Bounded local inputs: every local file a reader imports (dataset files, `fetch jsonl` records and
--root images, image files named by rows) must be a regular file, and its size is checked before
it is read. A FIFO is refused without blocking; a 3 GB file named .png is not read."""

from __future__ import annotations

import io
import os
from pathlib import Path

import orjson
import pytest

from fakes.jats_articles import png
from medmax_cli.fetch import datasets
from medmax_cli.media import MediaError, open_local_file, read_local_file
from medmax_cli.streams import ErrorPolicy, parse_jsonl

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def vqa_rad(root: Path, image_name: str) -> Path:
    """The OSF release file with one row (VQA-RAD's 14 keys, as published)."""
    row = {"qid": "0", "image_name": image_name, "image_case_url": "", "image_organ": "HEAD", "answer": "yes",
           "answer_type": "CLOSED", "question_type": "PRES", "question": "Is there a bleed?",
           "phrase_type": "freeform", "qid_linked_id": "0", "question_rephrase": "NULL",
           "question_relation": "NULL", "question_frame": "NULL", "evaluation": "given"}  # fmt: skip
    (root / "VQA_RAD Image Folder").mkdir(parents=True, exist_ok=True)
    (root / "VQA_RAD Dataset Public.json").write_bytes(orjson.dumps([row]))
    return root


def test_fifo_image_is_refused_not_waited_on(tmp_path, media):
    root = vqa_rad(tmp_path, "synpic1.jpg")
    os.mkfifo(root / "VQA_RAD Image Folder" / "synpic1.jpg")  # nobody ever writes to it
    policy = ErrorPolicy("skip", io.BytesIO())
    assert list(datasets.read_vqa_rad(root, media=media, policy=policy)) == []
    assert policy.report.dropped == {"not a regular file": 1}
    entry = orjson.loads(policy.rejects.getvalue())
    assert "synpic1.jpg is a pipe" in entry["reason"]


def test_huge_file_named_png_is_not_read(tmp_path, media):
    root = vqa_rad(tmp_path, "synpic1.jpg")
    with open(root / "VQA_RAD Image Folder" / "synpic1.jpg", "wb") as handle:
        handle.truncate(3 * 1024**3)  # a sparse 3 GB file: reading it whole would take 3 GB of memory
    policy = ErrorPolicy("skip", io.BytesIO())
    assert list(datasets.read_vqa_rad(root, media=media, policy=policy)) == []
    assert policy.report.dropped == {"image too large": 1}
    assert "3221225472 bytes" in orjson.loads(policy.rejects.getvalue())["reason"]


def test_fifo_dataset_file_and_size_limit(tmp_path, media, monkeypatch):
    os.mkfifo(tmp_path / "train.json")  # SLAKE's train.json as a pipe
    policy = ErrorPolicy("skip", io.BytesIO())
    assert list(datasets.read_slake(tmp_path, media=media, policy=policy)) == []
    assert policy.report.dropped == {"not a regular file": 1} and policy.report.counts["in"] == 1
    os.remove(tmp_path / "train.json")
    (tmp_path / "train.json").write_bytes(b"[" + b" " * 500 + b"]")
    monkeypatch.setenv("MEDMAX_MAX_INPUT_BYTES", "100")
    policy = ErrorPolicy("skip", io.BytesIO())
    assert list(datasets.read_slake(tmp_path, media=media, policy=policy)) == []
    assert policy.report.dropped == {"file too large": 1}
    assert "train.json" in orjson.loads(policy.rejects.getvalue())["where"]


def test_fetch_jsonl_refuses_fifo_records_and_images(tmp_path, medmax):
    env = {"MEDMAX_MEDIA": str(tmp_path / "m")}
    os.mkfifo(tmp_path / "records.jsonl")
    piped = medmax("fetch", "jsonl", str(tmp_path / "records.jsonl"), "--root", str(tmp_path), env=env,
                   check=False, timeout=60)  # fmt: skip
    assert piped.returncode == 2 and b"not a regular file" in piped.stderr
    os.mkfifo(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(png(1))
    record = {"id": "r1", "kind": "figure", "source": "x", "license": "cc0", "caption": "c"}
    lines = [{**record, "images": [{"path": "a.png"}]}, {**record, "id": "r2", "images": [{"path": "b.png"}]}]
    (tmp_path / "ok.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    run = medmax("fetch", "jsonl", str(tmp_path / "ok.jsonl"), "--root", str(tmp_path), "--on-error", "skip",
                 env=env, cwd=tmp_path, timeout=60)  # fmt: skip
    assert [line["id"] for line in parse_jsonl(run.stdout)] == ["r2"]
    assert b"not a regular file: 1" in run.stderr


def test_helper_refuses_folders_and_names_the_file(tmp_path):
    with pytest.raises(MediaError, match="is a folder") as info:
        open_local_file(tmp_path, limit=None)
    assert info.value.cls == "not a regular file"
    (tmp_path / "x.bin").write_bytes(b"12345")
    assert read_local_file(tmp_path / "x.bin", limit=5) == b"12345"
    with pytest.raises(MediaError, match=r"x\.bin is 5 bytes, over the 4-byte limit"):
        read_local_file(tmp_path / "x.bin", limit=4)
