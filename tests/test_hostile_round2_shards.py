"""Round two, packed shards: a tampered or foreign row is a named error for `medmax inspect` and the
training reader (was: TypeError, IndexError, OverflowError, a zip() ValueError as 'internal error'),
and an id outside the vocabulary is shown as such (was: decoded to an empty string)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import orjson
import pytest

from medmax_cli.pack.reader import PackedShards, checked_row


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _good_members(n: int = 6) -> dict[str, bytes]:
    ids = np.array([0, 5, 6, 7, 8, 2][:n], dtype=np.int32)
    labels = np.array([-100, -100, -100, 7, 8, 2][:n], dtype=np.int32)
    return {
        "input_ids.npy": _npy(ids),
        "labels.npy": _npy(labels),
        "boundaries.npy": _npy(np.array([0, n], dtype=np.int64)),
        "json": orjson.dumps({"samples": [{"id": "a"}]}),
    }


def test_a_good_row_reads_back():
    row = checked_row(_good_members(), "s: row 0", seq_len=8)
    assert row.input_ids.tolist() == [0, 5, 6, 7, 8, 2]


@pytest.mark.parametrize(
    ("member", "value", "expect"),
    [
        ("input_ids.npy", _npy(np.zeros(6, np.float32)), "1-D integer array"),
        ("input_ids.npy", _npy(np.zeros((1, 6), np.int32)), "1-D integer array"),
        ("input_ids.npy", _npy(np.array([{"a": 1}] * 6, dtype=object)), "not a numpy array file"),
        ("input_ids.npy", b"garbage", "not a numpy array file"),
        ("input_ids.npy", _npy(np.array([0, 5, -7, 7, 8, 2], np.int32)), "negative token id"),
        ("labels.npy", _npy(np.zeros(3, np.int32)), "3 labels for 6 input ids"),
        ("labels.npy", _npy(np.array([-5, 0, 0, 0, 0, 0], np.int32)), "negative label"),
        ("boundaries.npy", _npy(np.array([[5, 2], [9, 3]], np.int64)), "1-D integer array"),
        ("boundaries.npy", _npy(np.array([0, 4, 2, 6], np.int64)), "boundaries must rise"),
        ("boundaries.npy", _npy(np.array([0, 9], np.int64)), "boundaries must rise"),
        ("json", b"{not json", "is not JSON"),
        ("json", b"[1, 2]", "must be a JSON object"),
    ],
)
def test_a_bad_member_is_named(member, value, expect):
    members = {**_good_members(), member: value}
    with pytest.raises(ValueError, match=expect) as info:
        checked_row(members, "shard-000000.tar: row 0", seq_len=8)
    assert "shard-000000.tar: row 0" in str(info.value)


def test_a_row_longer_than_seq_len_is_named():
    with pytest.raises(ValueError, match="more than the manifest's seq_len 4"):
        checked_row(_good_members(), "s: row 0", seq_len=4)


@pytest.fixture
def shards(medmax, tiny_model_dir, tmp_path) -> Path:
    """A real pack output of two instances, made at test time."""
    media = tmp_path / "media"
    lines = []
    for k, (q, a) in enumerate([("Is it the liver?", "yes"), ("Which organ?", "the spleen")]):
        lines.append(
            {
                "id": f"q{k}",
                "task": "vqa",
                "source": "t",
                "turns": [
                    {"role": "user", "content": [{"text": q}]},
                    {"role": "assistant", "content": [{"text": a}]},
                ],
            }
        )
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    out = tmp_path / "shards"
    medmax(
        "pack", str(src), "-o", str(out), "--model", str(tiny_model_dir), "--seq-len", "128",
        "--media-dir", str(media), "-q",
    )  # fmt: skip
    return out


def _rewrite(shard_dir: Path, member_suffix: str, change) -> None:
    """Replace one member of the first row, then fix the manifest's checksum (a careful tamperer)."""
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    path = shard_dir / manifest["shards"][0]["name"]
    with tarfile.open(path) as archive:
        members = [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            if name.startswith("row-000000000.") and name.endswith(member_suffix):
                data = change(data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    manifest["shards"][0].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))


def _ids_with(data: bytes, position: int, value: int) -> bytes:
    ids = np.load(io.BytesIO(data)).astype(np.int64)
    ids[position] = value
    return _npy(ids.astype(np.int32))


def test_inspect_names_a_tampered_row(medmax, shards):
    _rewrite(shards, "labels.npy", lambda data: _npy(np.zeros(3, np.int32)))
    result = medmax("inspect", str(shards), "--row", "0", check=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "row 0: 3 labels for" in err and "internal error" not in err
    with pytest.raises(ValueError, match="3 labels for"):
        list(PackedShards(shards).iter_rows(shuffle=False))


def test_inspect_shows_an_id_outside_the_vocabulary(medmax, shards):
    _rewrite(shards, "input_ids.npy", lambda data: _ids_with(data, 2, 10**6))
    result = medmax("inspect", str(shards), "--row", "0", "--json", check=False)
    assert result.returncode == 0, result.stderr.decode()
    view = json.loads(result.stdout)
    outside = [r for s in view["samples"] for r in s["runs"] if r["kind"] == "outside"]
    assert outside and outside[0]["ids"] == [10**6]
    assert "outside the vocabulary" in outside[0]["text"]
