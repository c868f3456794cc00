"""Record streams: JSONL and tar round trips, auto-detection, error policy, broken pipes."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import numpy as np
import orjson
import pytest
from PIL import Image

from medmax_cli.records import RecordError
from medmax_cli.streams import (
    ErrorPolicy,
    RecordWriter,
    StreamError,
    detect_format,
    in_shard,
    parse_jsonl,
    parse_shard,
    read_records,
)


def png_bytes(seed: int, size=(12, 9), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 255, size=(size[1], size[0], channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def qa(i: int, **extra) -> dict:
    return {
        "id": f"q{i}",
        "kind": "qa",
        "question": f"Is this organ normal? №{i} – µm",
        "answer": "yes",
        **extra,
    }


def write(records, fmt, media) -> bytes:
    out = io.BytesIO()
    writer = RecordWriter(out, fmt=fmt, media=media)
    for record in records:
        writer.write(record)
    writer.close()
    return out.getvalue()


def read(data: bytes, media, **kwargs) -> list[dict]:
    return list(read_records(io.BytesIO(data), name="in", media=media, **kwargs))


@pytest.mark.parametrize("fmt", ["jsonl", "tar"])
def test_round_trip_with_images_and_unicode(fmt, media, tmp_path):
    refs = [media.put(png_bytes(i)) for i in range(3)]
    records = [qa(0), qa(1, images=[refs[0]]), qa(2, images=[refs[1], refs[2]], meta={"note": "Größe 5 µm"})]
    data = write(records, fmt, media)
    assert detect_format(io.BufferedReader(io.BytesIO(data))) == fmt
    # Read into a different store: tar carries the images inline, so they arrive there.
    from medmax_cli.media import MediaStore

    other = MediaStore(tmp_path / "other")
    back = read(data, other)
    assert back == records
    if fmt == "tar":
        for ref in refs:
            assert other.read_bytes(ref) == media.read_bytes(ref)
        names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
        assert names == ["q0.json", "q1.json", "q1.0.png", "q2.json", "q2.0.png", "q2.1.png"]
        assert write(records, fmt, media) == data  # fixed mtime: byte-reproducible


def test_gzipped_jsonl_is_detected(media):
    import gzip

    data = gzip.compress(write([qa(1), qa(2)], "jsonl", media))
    assert [r["id"] for r in read(data, media)] == ["q1", "q2"]


def test_malformed_line_names_line_number(media):
    data = b'{"id":"a","kind":"qa","question":"?","answer":"no"}\n\n{not json}\n'
    with pytest.raises(RecordError) as info:
        read(data, media)
    assert str(info.value).startswith("in:3: malformed JSON")


def test_skip_writes_reject_and_counts(media):
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="test")
    data = b'{"id":"a","kind":"qa","question":"?","answer":"no"}\n{oops\n{"id":"b.c","kind":"qa"}\n'
    assert [r["id"] for r in read(data, media, policy=policy)] == ["a"]
    entries = [orjson.loads(line) for line in rejects.getvalue().splitlines()]
    assert [e["where"] for e in entries] == ["in:2", "in:3"]
    assert entries[0]["raw"] == "{oops"
    assert "no dots" in entries[1]["reason"] and entries[1]["record_id"] == "b.c"
    assert (
        sum(policy.report.dropped.values()) == 2 and policy.report.counts["in"] == 3
    )  # rejected lines were read too
    assert "rejected 2" in policy.report.summary()


def test_truncated_tar_is_a_stream_error(media):
    refs = [media.put(png_bytes(i, size=(64, 64))) for i in range(4)]
    data = write([qa(i, images=[refs[i]]) for i in range(4)], "tar", media)
    seen = []
    with pytest.raises(StreamError, match="truncated"):
        for record in read_records(io.BytesIO(data[: len(data) // 2]), name="cut.tar", media=media):
            seen.append(record["id"])
    assert seen and len(seen) < 4


def test_tar_image_member_without_entry_is_rejected(media):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, payload in (("x.json", orjson.dumps(qa(9, id="x"))), ("x.0.png", png_bytes(1))):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    with pytest.raises(RecordError, match=r"no matching images\[0\]"):
        read(buffer.getvalue(), media)


def test_shard_assignment_is_a_partition():
    ids = [f"r{i}" for i in range(500)]
    shards = [[i for i in ids if in_shard(i, (k, 4))] for k in range(4)]
    assert sorted(sum(shards, [])) == sorted(ids)
    assert all(len(s) > 60 for s in shards)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_cli_cat_converts_and_head_exits_quietly(tmp_path, medmax):
    source = tmp_path / "big.jsonl"
    with open(source, "wb") as handle:
        for i in range(20_000):
            handle.write(orjson.dumps(qa(i)) + b"\n")
    env = {"MEDMAX_MEDIA": str(tmp_path / "media")}
    as_tar = medmax("cat", str(source), "--format", "tar", "-o", str(tmp_path / "big.tar"), env=env)
    assert b"in 20000, out 20000" in as_tar.stderr
    # `medmax cat big.tar | head -1`: the writer meets a closed pipe and must exit 0, quietly.
    cat = subprocess.Popen(
        [sys.executable, "-m", "medmax_cli", "cat", str(tmp_path / "big.tar")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**__import__("os").environ, **env},
    )
    first = cat.stdout.readline()
    if orjson.loads(first) == {"medmax_stream": {"version": 1}}:  # the stream header of a pipe
        first = cat.stdout.readline()
    cat.stdout.close()
    _, err = cat.communicate(timeout=120)
    assert orjson.loads(first)["id"] == "q0"
    assert cat.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"Error" not in err


def test_cli_reports_bad_record_with_file_and_line(tmp_path, medmax):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(orjson.dumps(qa(1)) + b"\n" + b'{"id": "x", "kind": "qa"}\n')
    result = medmax("cat", str(bad), check=False)
    assert result.returncode == 1
    assert f"{bad}:2: record 'x': a qa record needs a string 'question'".encode() in result.stderr
    skipped = medmax("cat", str(bad), "--on-error", "skip", "--rejects", str(tmp_path / "rej.jsonl"))
    assert len(parse_jsonl(skipped.stdout)) == 1
    assert b"rejected 1" in skipped.stderr
    assert orjson.loads((tmp_path / "rej.jsonl").read_bytes())["where"] == f"{bad}:2"
    # An output file is never left half-written when the run fails.
    out = tmp_path / "out.jsonl"
    assert medmax("cat", str(bad), "-o", str(out), check=False).returncode == 1
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_cli_help_lists_commands(medmax):
    result = medmax("--help")
    assert b"validate" in result.stdout and b"cat" in result.stdout
    assert medmax("--version").stdout.startswith(b"medmax ")


def test_hashing_reader_streams_a_pipe_and_hashes_what_it_read():
    """Through HashingReader a record is read as soon as its line arrives (a slow producer is not
    held back for a full chunk), and the digest is the sha256 of the bytes, as sha256sum gives it."""
    import hashlib
    import os
    import threading

    from medmax_cli.streams import HashingReader, read_records

    first = b'{"id": "a", "kind": "figure", "caption": "x"}\n'
    rest = b'{"id": "b", "kind": "figure", "caption": "y"}\n'
    r, w = os.pipe()
    with os.fdopen(r, "rb") as source, os.fdopen(w, "wb", buffering=0) as sink:
        sink.write(first)
        stream = HashingReader(source)
        records = read_records(stream, name="pipe")
        got: list = []
        reader = threading.Thread(target=lambda: got.append(next(records)), daemon=True)
        reader.start()
        reader.join(timeout=10)
        assert got and got[0]["id"] == "a"  # the writer is still open: nothing but that line was there
        sink.write(rest)
        sink.close()
        assert [x["id"] for x in records] == ["b"]
    assert stream.hexdigest() == hashlib.sha256(first + rest).hexdigest()
