"""Issue 24 class 6 (tar part): a tar sample has a cap on its total size, not only per member, and the
empty tar a writer of no records leaves reads back as zero records (plain and gzipped)."""

from __future__ import annotations

import gzip
import io
import tarfile

import orjson
import pytest

from medmax_cli.records import RecordError
from medmax_cli.streams import ErrorPolicy, RecordWriter, RunReport, read_records


def member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def sample_tar(extra_members: int, member_size: int) -> bytes:
    """Sample 'big' (a json and many extra members, each under the member cap) between two small ones."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        member(archive, "a.json", orjson.dumps({"id": "a", "kind": "figure"}))
        member(archive, "big.json", orjson.dumps({"id": "big", "kind": "figure"}))
        for i in range(extra_members):
            member(archive, f"big.x{i}.bin", b"\1" * member_size)
        member(archive, "z.json", orjson.dumps({"id": "z", "kind": "figure"}))
    return out.getvalue()


def test_a_sample_over_the_total_size_cap_is_rejected_with_a_reason(monkeypatch, media):
    monkeypatch.setenv("MEDMAX_MAX_MEMBER_BYTES", "4096")
    monkeypatch.setenv("MEDMAX_MAX_SAMPLE_BYTES", "20000")
    data = sample_tar(extra_members=10, member_size=4000)  # each member fits; the sample does not
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, RunReport("t"))
    out = list(read_records(io.BytesIO(data), name="in.tar", media=media, policy=policy))
    assert [r["id"] for r in out] == ["a", "z"]
    entry = orjson.loads(rejects.getvalue())
    assert entry["where"] == "in.tar:big" and entry["record_id"] == "big"
    assert "more than 20000 bytes" in entry["reason"] and "MEDMAX_MAX_SAMPLE_BYTES" in entry["reason"]
    with pytest.raises(
        RecordError, match="in.tar:big: record 'big': tar sample over the size limit: big holds more than"
    ):
        list(read_records(io.BytesIO(data), name="in.tar", media=media))


def test_many_empty_members_count_against_the_sample_cap(monkeypatch, media):
    monkeypatch.setenv("MEDMAX_MAX_SAMPLE_BYTES", "8192")  # 16 members' headers
    data = sample_tar(extra_members=40, member_size=0)
    policy = ErrorPolicy("skip", io.BytesIO(), RunReport("t"))
    assert [r["id"] for r in read_records(io.BytesIO(data), media=media, policy=policy)] == ["a", "z"]


def test_a_sample_under_the_cap_is_read(monkeypatch, media):
    monkeypatch.setenv("MEDMAX_MAX_SAMPLE_BYTES", "1M")
    data = sample_tar(extra_members=3, member_size=1000)
    assert [r["id"] for r in read_records(io.BytesIO(data), media=media)] == ["a", "big", "z"]


def empty_tar(media) -> bytes:
    out = io.BytesIO()
    RecordWriter(out, fmt="tar", media=media).close()
    return out.getvalue()


def test_the_empty_tar_a_writer_leaves_reads_back_as_zero_records(media):
    data = empty_tar(media)
    assert data and not data.strip(b"\0")
    assert list(read_records(io.BytesIO(data), media=media)) == []
    assert list(read_records(io.BytesIO(gzip.compress(data)), media=media)) == []


def test_cat_of_an_empty_input_to_tar_reads_back_as_zero_records(tmp_path, medmax):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    medmax("cat", str(empty), "--format", "tar", "-o", str(tmp_path / "e.tar"), "-q")
    back = medmax("cat", str(tmp_path / "e.tar"), "-o", str(tmp_path / "back.jsonl"), check=False)
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "back.jsonl").read_bytes() == b""
