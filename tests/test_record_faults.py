"""Issue 24 class 5: one record never ends a run. Records with fields of the wrong type (whatever the
exception the stage code would raise), integers beyond 64 bits and ids too long for a USTAR name,
built at test time, go through --on-error: skip rejects them with a reason, fail names them."""

from __future__ import annotations

import io

import orjson
import pytest

from medmax_cli.records import INT_MAX, INT_MIN, RecordError, loads_record, validate
from medmax_cli.streams import ErrorPolicy, RecordWriter, RunReport, map_records, read_records

GOOD = {"id": "ok", "kind": "figure", "caption": "a chest x-ray"}
HOSTILE = [
    {"id": "n1", "kind": "figure", "caption": "x", "images": None},
    {"id": "a1", "kind": "figure", "caption": "x", "article": "a string, not an object"},
    {"id": "m1", "kind": "figure", "caption": "x", "meta": [1, 2]},
    {"id": "i1", "task": "vqa", "turns": [{"role": "user", "content": [{"text": "q"}]}], "images": None},
    {"id": "t1", "task": "vqa", "turns": [5]},
    {"id": "t2", "task": "vqa", "turns": [{"role": "user", "content": "not a list"}]},
    {"id": "t3", "task": "vqa", "turns": [{"role": "user", "content": [{"text": 5}]}]},
    {"id": "p1", "task": "vqa", "turns": [{"role": "user", "content": [{"text": "q"}]}], "prediction": 7},
    {"id": "g1", "kind": "figure", "images": [{"tokens": "abc", "vq": "v"}]},
    {"id": "g2", "kind": "figure", "images": [{"sha256": 5}]},
    {"id": "q1", "kind": "qa", "question": "q", "answer": "a", "options": "A,B"},
]


def jsonl(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


@pytest.mark.parametrize("record", HOSTILE, ids=[r["id"] for r in HOSTILE])
def test_validate_raises_only_record_errors(record):
    with pytest.raises(RecordError) as info:
        validate(record)
    assert info.value.record_id == record["id"]


def test_skip_rejects_every_hostile_record_and_keeps_the_good_ones():
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, RunReport("t"))
    data = jsonl([GOOD, *HOSTILE, {**GOOD, "id": "ok2"}])
    out = list(read_records(io.BytesIO(data), name="in.jsonl", policy=policy))
    assert [r["id"] for r in out] == ["ok", "ok2"]
    lines = [orjson.loads(line) for line in rejects.getvalue().splitlines()]
    assert [e["record_id"] for e in lines] == [r["id"] for r in HOSTILE]
    assert all(e["where"].startswith("in.jsonl:") and e["reason"] for e in lines)
    assert sum(policy.report.dropped.values()) == len(HOSTILE)


def test_fail_names_file_line_record_and_reason():
    data = jsonl([GOOD, HOSTILE[1]])
    with pytest.raises(RecordError) as info:
        list(read_records(io.BytesIO(data), name="in.jsonl"))
    assert str(info.value).startswith("in.jsonl:2: record 'a1': field 'article' must be an object")


@pytest.mark.parametrize("exc", [TypeError("x"), AttributeError("y"), KeyError("z"), IndexError("w")])
def test_a_stage_function_raising_any_fault_rejects_only_that_record(exc):
    def fn(record):
        if record["id"] == "bad":
            raise exc
        return [record]

    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, RunReport("t"))
    out = list(map_records([{"id": "a"}, {"id": "bad"}, {"id": "b"}], fn, policy))
    assert [r["id"] for r in out] == ["a", "b"]
    entry = orjson.loads(rejects.getvalue())
    assert entry["record_id"] == "bad" and type(exc).__name__ in entry["reason"]
    with pytest.raises(RecordError, match=rf"record 'bad': cannot process the record \({type(exc).__name__}"):
        list(map_records([{"id": "bad"}], fn, ErrorPolicy("fail")))


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**40])
def test_integers_beyond_64_bits_are_refused_not_rounded(number):
    line = b'{"id":"big","kind":"figure","meta":{"n":%d}}' % number
    assert isinstance(orjson.loads(line)["meta"]["n"], float)  # what orjson alone does: rounds
    with pytest.raises(RecordError, match="beyond 64 bits") as info:
        loads_record(line)
    assert info.value.record_id == "big"
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, RunReport("t"))
    assert list(read_records(io.BytesIO(line + b"\n" + jsonl([GOOD])), policy=policy)) == [GOOD]
    assert b"beyond 64 bits" in rejects.getvalue()


def test_integers_at_the_64_bit_limits_and_long_digit_strings_are_kept_exactly():
    record = {"id": "edge", "kind": "figure", "meta": {"hi": INT_MAX, "lo": INT_MIN, "s": "1" * 40}}
    out = list(read_records(io.BytesIO(jsonl([record]))))
    assert out == [record] and type(out[0]["meta"]["hi"]) is int


def test_a_record_with_a_huge_integer_is_rejected_by_the_writer(media):
    rejects = io.BytesIO()
    out = io.BytesIO()
    writer = RecordWriter(out, media=media, policy=ErrorPolicy("skip", rejects, RunReport("t")))
    writer.write({"id": "huge", "kind": "figure", "meta": {"n": 2**70}})
    writer.write(GOOD)
    writer.close()
    assert out.getvalue() == jsonl([GOOD])
    assert b"64-bit" in rejects.getvalue()


@pytest.mark.parametrize("length", [101, 120, 300])
def test_long_ids_get_a_pax_header_in_the_tar_writer_and_read_back(length, media):
    record = {"id": "x" * length, "kind": "figure", "caption": "c"}
    out = io.BytesIO()
    writer = RecordWriter(out, fmt="tar", media=media)
    writer.write(record)
    writer.write(GOOD)
    writer.close()
    back = list(read_records(io.BytesIO(out.getvalue()), media=media))
    assert back == [record, GOOD]


def test_the_cli_skips_hostile_records_and_fails_naming_them(tmp_path, medmax):
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl([GOOD, *HOSTILE]) + b'{"id":"big","kind":"figure","meta":{"n":%d}}\n' % 2**65)
    rej = tmp_path / "rej.jsonl"
    out = tmp_path / "out.tar"
    long_id = {**GOOD, "id": "L" * 120}
    (tmp_path / "long.jsonl").write_bytes(jsonl([long_id]))
    result = medmax(
        "cat",
        str(src),
        str(tmp_path / "long.jsonl"),
        "--format",
        "tar",
        "-o",
        str(out),
        "--on-error",
        "skip",
        "--rejects",
        str(rej),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(rej.read_bytes().splitlines()) == len(HOSTILE) + 1
    back = medmax("cat", str(out), "-o", str(tmp_path / "back.jsonl"))
    assert back.returncode == 0
    assert [orjson.loads(x)["id"] for x in (tmp_path / "back.jsonl").read_bytes().splitlines()] == [
        "ok",
        "L" * 120,
    ]
    failed = medmax("cat", str(src), "-o", str(tmp_path / "f.jsonl"), check=False)
    assert failed.returncode == 1
    assert b"in.jsonl:2: record 'n1': field 'images' must be a list" in failed.stderr
    assert b"Traceback" not in failed.stderr


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b'{"kind": "figure"}'])
def test_a_tar_member_that_is_not_a_record_is_rejected_also_unchecked(payload, media):
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in (("bad.json", payload), ("ok.json", orjson.dumps(GOOD))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    for check in (True, False):  # pack reads with check=False and validates later
        rejects = io.BytesIO()
        policy = ErrorPolicy("skip", rejects, RunReport("t"))
        got = list(read_records(io.BytesIO(out.getvalue()), media=media, policy=policy, check=check))
        assert got == [GOOD]
        assert orjson.loads(rejects.getvalue())["where"] == "<stdin>:bad"


def test_a_fault_escaping_a_stage_loop_is_a_named_record_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    import typer

    from medmax_cli.cliutil import StageIO

    monkeypatch.setenv("MEDMAX_MEDIA", str(tmp_path / "media"))
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl([GOOD, {**GOOD, "id": "second"}]))
    out = tmp_path / "o.jsonl"
    with pytest.raises(typer.Exit) as info:
        with StageIO("t", input=str(src), output=str(out), quiet=True) as stage:
            for record in stage.records:
                if record["id"] == "second":
                    record["caption"].missing  # noqa: B018 - a stage's fault on this record's shape
                stage.write(record)
    assert info.value.exit_code == 1
    err = capsys.readouterr().err
    assert "after input record 2: record 'second': cannot process the record (AttributeError" in err
    assert not out.exists()
