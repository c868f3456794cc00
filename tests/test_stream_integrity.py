"""Hostile streams and records, built at test time: cut tars, truncated gzip, link members, size
bombs, records that cannot be written, duplicate ids, wrong schema types, 300-level nesting."""

from __future__ import annotations

import gzip
import io
import tarfile

import orjson
import pytest

from medmax_cli.records import RecordError, validate
from medmax_cli.streams import ErrorPolicy, RecordWriter, StreamError, parse_jsonl, read_records
from test_streams import png_bytes, qa


def tar_of(records, media, *, close=True) -> bytes:
    out = io.BytesIO()
    writer = RecordWriter(out, fmt="tar", media=media)
    for record in records:
        writer.write(record)
    if close:
        writer.close()
    return out.getvalue()


def read(data: bytes, media, **kw) -> list[dict]:
    return list(read_records(io.BytesIO(data), name="in.tar", media=media, **kw))


def with_image(i: int, media) -> dict:
    return qa(i, images=[media.put(png_bytes(i))])


def test_a_tar_cut_at_a_member_boundary_is_an_error(media):
    records = [with_image(i, media) for i in range(3)]
    whole = tar_of(records, media)
    assert [r["id"] for r in read(whole, media)] == ["q0", "q1", "q2"]
    killed = tar_of(records, media, close=False)  # what a killed --format tar writer leaves
    assert len(killed) % 512 == 0
    with pytest.raises(StreamError, match=r"in.tar: tar stream cut off after member group 'q2'"):
        read(killed, media)
    # cut inside a header block, and two archives glued together: also refused
    with pytest.raises(StreamError, match="cut off"):
        read(killed + whole[:100], media)
    with pytest.raises(StreamError, match="cut off"):
        read(whole + whole, media)


def test_truncated_gzip_is_a_clear_stream_error(tmp_path, medmax):
    lines = b"".join(orjson.dumps(qa(i)) + b"\n" for i in range(2000))
    packed = gzip.compress(lines)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) - 40])
    with pytest.raises(StreamError, match=r"cut.jsonl.gz: truncated or corrupt compressed stream"):
        list(read_records(open(path, "rb"), name=str(path)))
    result = medmax("cat", str(path), "-o", str(tmp_path / "out.jsonl"), check=False)
    assert result.returncode == 1
    assert b"truncated or corrupt compressed stream" in result.stderr and b"Aborted" not in result.stderr
    assert b"Traceback" not in result.stderr and not (tmp_path / "out.jsonl").exists()


def test_link_members_are_rejected_with_a_reason(media):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in (("a.json", orjson.dumps(qa(0, id="a", images=[{"url": "x"}]))),):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a.0.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        hard = tarfile.TarInfo("b.json")
        hard.type, hard.linkname = tarfile.LNKTYPE, "a.json"
        archive.addfile(hard)
        good = orjson.dumps(qa(2, id="c"))
        info = tarfile.TarInfo("c.json")
        info.size = len(good)
        archive.addfile(info, io.BytesIO(good))
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects)
    assert [r["id"] for r in read(buffer.getvalue(), media, policy=policy)] == ["c"]
    reasons = [orjson.loads(x)["reason"] for x in rejects.getvalue().splitlines()]
    assert "a.0.png is a symbolic link to '/etc/passwd'" in reasons[0]
    assert "b.json is a hard link" in reasons[1]
    with pytest.raises(RecordError, match="symbolic link"):
        read(buffer.getvalue(), media)


def test_size_caps_on_lines_and_members(media, monkeypatch):
    monkeypatch.setenv("MEDMAX_MAX_LINE_BYTES", "2K")
    monkeypatch.setenv("MEDMAX_MAX_MEMBER_BYTES", "100")
    bomb = orjson.dumps(qa(1, meta={"pad": "x" * 50_000}))
    data = gzip.compress(orjson.dumps(qa(0)) + b"\n" + bomb + b"\n" + orjson.dumps(qa(2)) + b"\n")
    rejects = io.BytesIO()
    out = list(read_records(io.BytesIO(data), name="in", policy=ErrorPolicy("skip", rejects)))
    assert [r["id"] for r in out] == ["q0", "q2"]
    reject = orjson.loads(rejects.getvalue())
    assert reject["where"] == "in:2" and "longer than the 2048-byte limit" in reject["reason"]
    assert len(reject["raw"]) <= 200
    big_image = tar_of([with_image(5, media)], media)  # its PNG member is over 100 bytes
    with pytest.raises(RecordError, match=r"q5.0.png is \d+ bytes, over the 100-byte limit"):
        read(big_image, media)
    monkeypatch.setenv("MEDMAX_MAX_LINE_BYTES", "lots")
    with pytest.raises(StreamError, match="not a byte count"):
        read(big_image, media)


def test_write_errors_obey_the_error_policy_and_leave_no_half_sample(media, tmp_path, medmax):
    missing = qa(1, images=[{"sha256": "0" * 64, "path": "00/gone.png"}])
    records = [with_image(0, media), missing, with_image(2, media)]
    out = io.BytesIO()
    rejects = io.BytesIO()
    writer = RecordWriter(out, fmt="tar", media=media, policy=ErrorPolicy("skip", rejects))
    for record in records:
        writer.write(record)
    writer.close()
    assert [r["id"] for r in read(out.getvalue(), media)] == ["q0", "q2"]
    assert orjson.loads(rejects.getvalue())["record_id"] == "q1"
    names = tarfile.open(fileobj=io.BytesIO(out.getvalue())).getnames()
    assert not any(n.startswith("q1.") for n in names)
    # the CLI: skip -> rejects file and a complete tar; fail -> exit 1 and no output file
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    env = {"MEDMAX_MEDIA": str(media.root)}
    skip = medmax(
        "cat",
        "--format",
        "tar",
        "--on-error",
        "skip",
        "--rejects",
        str(tmp_path / "r.jsonl"),
        input=data,
        env=env,
    )
    assert [r["id"] for r in read(skip.stdout, media)] == ["q0", "q2"]
    fail = medmax("cat", "--format", "tar", "-o", str(tmp_path / "o.tar"), input=data, env=env, check=False)
    assert fail.returncode == 1 and b"00/gone.png" in fail.stderr and not (tmp_path / "o.tar").exists()
    piped = medmax("cat", "--format", "tar", input=data, env=env, check=False)  # stdout: cut stream
    with pytest.raises(StreamError, match="cut off"):
        read(piped.stdout, media)


def test_duplicate_ids_are_record_errors_on_read_and_write(media, tmp_path, medmax):
    data = b"".join(orjson.dumps(qa(i % 2)) + b"\n" for i in range(3))
    with pytest.raises(RecordError, match=r"in:3: record 'q0': duplicate id 'q0'"):
        list(read_records(io.BytesIO(data), name="in"))
    writer = RecordWriter(io.BytesIO())
    writer.write(qa(0))
    with pytest.raises(RecordError, match="duplicate id 'q0'"):
        writer.write(qa(0))
    # cat of two files holding the same id: the writer sees it across inputs
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(orjson.dumps(qa(0)) + b"\n")
    b.write_bytes(orjson.dumps(qa(0)) + b"\n" + orjson.dumps(qa(1)) + b"\n")
    result = medmax("cat", str(a), str(b), "--on-error", "skip", "--rejects", str(tmp_path / "r.jsonl"))
    assert [x["id"] for x in parse_jsonl(result.stdout)] == ["q0", "q1"]
    assert b"duplicate id 'q0'" in (tmp_path / "r.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"license": 3}, "field 'license' must be a string"),
        ({"source": ["pmc"]}, "field 'source' must be a string"),
        ({"question_type": "essay"}, "field 'question_type' must be one of"),
        ({"images": [{"path": 7}]}, "images[0].path must be a non-empty string"),
        ({"images": [{"path": "a.png", "tokens": [1, 2.5], "vq": "v"}]}, "images[0].tokens must be"),
        ({"images": [{"path": "a.png", "tokens": [1, True], "vq": "v"}]}, "images[0].tokens must be"),
        ({"images": [{"path": "a.png", "tokens": [1, 2**40], "vq": "v"}]}, "images[0].tokens must be"),
        ({"images": [{"path": "a.png", "tokens": [-1], "vq": "v"}]}, "images[0].tokens must be"),
        ({"kind": "instance", "tokens": [0, 2**63]}, "field 'tokens' must be"),
    ],
)
def test_schema_types_are_enforced(patch, reason):
    with pytest.raises(RecordError) as info:
        validate({**qa(0), **patch})
    assert reason in str(info.value)


def deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"x": value}
    return value


def test_a_300_level_meta_is_a_record_error_not_a_writer_crash(media, tmp_path, medmax):
    bad = qa(1, meta=deep(300))
    validate(qa(2, meta=deep(40)))  # deep but sane passes
    with pytest.raises(RecordError, match="deeper than 255 levels"):
        validate(bad)
    # orjson writes at most 254 levels: build the line by hand
    line = b'{"id":"q1","kind":"qa","question":"?","answer":"a","meta":' + b'{"x":' * 300 + b"{}" + b"}" * 301
    data = orjson.dumps(qa(0)) + b"\n" + line + b"\n" + orjson.dumps(qa(2)) + b"\n"
    for fmt in ("jsonl", "tar"):
        result = medmax(
            "cat",
            "--format",
            fmt,
            "--on-error",
            "skip",
            "--rejects",
            str(tmp_path / f"r-{fmt}.jsonl"),
            input=data,
        )
        assert b"Traceback" not in result.stderr
        reject = orjson.loads((tmp_path / f"r-{fmt}.jsonl").read_bytes())
        assert reject["record_id"] == "q1" and "deeper than 255 levels" in reject["reason"]
    # a writer handed such a record directly rejects it through the policy (it cannot be serialised)
    rejects = io.BytesIO()
    writer = RecordWriter(io.BytesIO(), policy=ErrorPolicy("skip", rejects))
    writer.write(orjson.loads(line))
    assert b"cannot be written as JSON" in rejects.getvalue()


def test_duplicate_ids_from_fetch_and_synthesize_are_record_errors(tmp_path, medmax):
    import shutil

    from conftest import REPO

    sample = REPO / "examples" / "sample" / "jats"
    for copy in ("a", "b"):  # the same article twice (a mirror synced into two folders)
        (tmp_path / copy).mkdir()
        for name in ("PMC9000001.xml", "PMC9000001_F1.png", "PMC9000001_F2.png"):
            shutil.copy(sample / name, tmp_path / copy / name)
    env = {"MEDMAX_MEDIA": str(tmp_path / "media")}
    args = ["fetch", "jats", str(tmp_path / "a"), str(tmp_path / "b"), "-q"]
    failed = medmax(*args, env=env, check=False)
    assert failed.returncode == 1 and b"duplicate id 'PMC9000001-F1'" in failed.stderr
    rejects = tmp_path / "r.jsonl"
    skipped = medmax(*args, "--on-error", "skip", "--rejects", str(rejects), env=env)
    ids = [x["id"] for x in parse_jsonl(skipped.stdout)]
    assert ids and len(ids) == len(set(ids)) and len(rejects.read_bytes().splitlines()) == len(ids)
    # synthesize reads the doubled stream: the second copy of each figure is rejected, not doubled
    doubled = skipped.stdout + skipped.stdout
    out = medmax(
        "synthesize",
        "--tasks",
        "captioning",
        "-q",
        "--on-error",
        "skip",
        "--rejects",
        str(rejects),
        input=doubled,
        env=env,
    )
    instances = [x["id"] for x in parse_jsonl(out.stdout)]
    assert len(instances) == len(set(instances)) == len(ids)
