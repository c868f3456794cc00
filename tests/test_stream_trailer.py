"""Issue 24 class 9: a stream cut upstream is not a finished run. A medmax JSONL writer on a pipe
brackets its records with a header and a counted trailer; a reader that saw the header refuses a
stream without the trailer (or with a count that does not match), and pack then writes no manifest.
Plain JSONL (no header) is read as before."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import orjson
import pytest

from medmax_cli.streams import (
    STREAM_HEADER,
    RecordWriter,
    StreamError,
    parse_jsonl,
    read_records,
    stream_trailer,
)


def rec(i: int) -> dict:
    return {"id": f"r{i}", "kind": "qa", "question": f"q{i}?", "answer": "yes"}


def marked(n: int) -> bytes:
    out = io.BytesIO()
    writer = RecordWriter(out, markers=True)
    for i in range(n):
        writer.write(rec(i))
    writer.close()
    return out.getvalue()


def ids(data: bytes) -> list[str]:
    return [r["id"] for r in read_records(io.BytesIO(data), name="in")]


def test_a_marked_stream_reads_back_without_its_markers():
    data = marked(3)
    lines = data.splitlines(keepends=True)
    assert lines[0] == STREAM_HEADER and lines[-1] == stream_trailer(3)
    assert ids(data) == ["r0", "r1", "r2"]
    assert parse_jsonl(data) == [rec(0), rec(1), rec(2)]


@pytest.mark.parametrize("kept", [1, 2, 3])
def test_a_stream_cut_between_two_records_is_a_stream_error(kept):
    lines = marked(3).splitlines(keepends=True)
    cut = b"".join(lines[: 1 + kept])  # header and `kept` records: the writer was killed there
    with pytest.raises(StreamError, match=f"in: stream cut upstream after {kept} records"):
        ids(cut)


def test_a_stream_cut_inside_a_record_is_a_stream_error_also_when_skipping():
    from medmax_cli.streams import ErrorPolicy, RunReport

    data = marked(3)
    policy = ErrorPolicy("skip", io.BytesIO(), RunReport("t"))
    with pytest.raises(StreamError, match="stream cut upstream after 3 records"):
        list(read_records(io.BytesIO(data[: len(data) - len(stream_trailer(3)) - 7]), policy=policy))


def test_a_trailer_that_does_not_match_the_records_is_a_stream_error():
    lines = marked(3).splitlines(keepends=True)
    with pytest.raises(StreamError, match="trailer counts 3 records, but 2 arrived"):
        ids(b"".join(lines[:2] + lines[3:]))  # a record lost on the way
    with pytest.raises(StreamError, match="without a stream header"):
        ids(b"".join(lines[1:]))  # the start is missing


def test_plain_jsonl_and_streams_one_after_the_other():
    plain = b"".join(orjson.dumps(rec(i)) + b"\n" for i in range(2))
    assert ids(plain) == ["r0", "r1"]  # hand-written JSONL needs no markers
    two = marked(2) + b"".join(orjson.dumps(rec(i)) + b"\n" for i in (5, 6)) + marked(0)
    assert ids(two) == ["r0", "r1", "r5", "r6"]
    second = RecordWriter(io.BytesIO(), markers=True)
    second.write(rec(9))
    second.close()
    assert ids(marked(2) + second.stream.getvalue()) == ["r0", "r1", "r9"]
    cut_then_next = marked(2).splitlines(keepends=True)[:2]
    with pytest.raises(StreamError, match="stream cut upstream after 1 records"):
        ids(b"".join(cut_then_next) + marked(2))


def test_writers_mark_pipes_only(tmp_path, medmax):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(rec(i)) + b"\n" for i in range(3)))
    piped = medmax("cat", str(src), "-q").stdout  # stdout is a pipe here
    assert piped.startswith(STREAM_HEADER) and piped.endswith(stream_trailer(3))
    medmax("cat", str(src), "-q", "-o", str(tmp_path / "out.jsonl"))
    assert (tmp_path / "out.jsonl").read_bytes() == src.read_bytes()  # a file: no markers
    assert medmax("cat", str(src), "-q", "--plain").stdout == src.read_bytes()
    off = medmax("cat", str(src), "-q", env={"MEDMAX_STREAM_MARKERS": "0"}).stdout
    assert off == src.read_bytes()
    assert medmax("cat", "-q", "--plain", input=piped).stdout == src.read_bytes()


def test_a_stage_that_fails_leaves_no_trailer(tmp_path, medmax):
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(rec(0)) + b"\n" + b'{"id": "bad", "kind": "qa"}\n')
    failed = medmax("cat", str(src), "-q", check=False)
    assert failed.returncode == 1 and failed.stdout.startswith(STREAM_HEADER)
    downstream = medmax("cat", "-q", "-o", str(tmp_path / "o.jsonl"), input=failed.stdout, check=False)
    assert downstream.returncode == 1 and b"stream cut upstream after 1 records" in downstream.stderr
    assert not (tmp_path / "o.jsonl").exists()


def instances(n: int) -> bytes:
    def one(i):
        turns = [
            {"role": "user", "content": [{"text": f"question {i}?"}]},
            {"role": "assistant", "content": [{"text": f"answer {i}."}]},
        ]
        return {"id": f"i{i}", "task": "vqa", "turns": turns}

    return b"".join(orjson.dumps(one(i)) + b"\n" for i in range(n))


def test_pack_refuses_to_finish_on_a_stream_killed_upstream(tmp_path, medmax, tiny_model_dir):
    src = tmp_path / "instances.jsonl"
    src.write_bytes(instances(200))
    env = {**os.environ, "MEDMAX_MEDIA": str(tmp_path / "media")}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "medmax_cli", "cat", str(src), "-q"], stdout=subprocess.PIPE, env=env
    )
    got = [upstream.stdout.readline() for _ in range(1 + 20)]  # header and 20 records
    upstream.send_signal(signal.SIGKILL)  # killed between two records
    upstream.wait()
    upstream.stdout.close()
    assert got[0] == STREAM_HEADER
    out = tmp_path / "shards"
    model = ("--model", str(tiny_model_dir))
    cut = medmax("pack", "-o", str(out), *model, "--seq-len", "64", input=b"".join(got), check=False)
    assert cut.returncode == 1, cut.stderr
    assert b"stream cut upstream after 20 records" in cut.stderr
    assert not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tar") or ".tmp" in p.name]
    whole = medmax("cat", str(src), "-q").stdout  # the same stream, finished
    done = medmax("pack", "-o", str(out), *model, "--seq-len", "64", input=whole)
    assert orjson.loads((out / "manifest.json").read_bytes())["samples"] == 200, done.stderr
