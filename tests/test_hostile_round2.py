"""Round two of the hostile sweep (issue 24): each merged class probed one command or field to the side.

Every input is built here at test time; every case ran the real command and failed before its fix.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import orjson
import pytest

from medmax_cli.records import RecordError
from medmax_cli.report.lineage import reason_class
from medmax_cli.streams import ErrorPolicy, RunReport, parse_jsonl

SECRET = "PHI-Jane-Doe-1970"


# ------------------------------------------------------------------ class 5: >64-bit integers


def test_parse_jsonl_refuses_integers_beyond_64_bits():
    """The documented helper for reading a stage's stdout rounded 2**70 to a float."""
    data = b'{"medmax_stream":{"version":1}}\n{"id":"a","n":1180591620717411303424}\n'
    with pytest.raises(RecordError, match="beyond 64 bits"):
        parse_jsonl(data)
    assert parse_jsonl(b'{"id":"a","n":18446744073709551615}\n') == [{"id": "a", "n": 2**64 - 1}]


# ------------------------------------------------------------------ class 3: reasons carry no content


def test_reject_buckets_and_report_classes_leave_out_the_value():
    """A reason such as "field 'answer' must be a string, got list ['<text>']" put the record's text
    (credentialed or not) into --stats files, the summary line and the report's reasons table."""
    reason = f"field 'answer' must be a string, got list [{SECRET!r}]"
    report = RunReport("t")
    report.drop(reason)
    (key,) = report.dropped
    assert SECRET not in key and key.startswith("field")
    assert SECRET not in reason_class(reason) and reason_class(reason).startswith("field")


def test_stats_file_of_a_skip_run_holds_no_record_text(medmax, tmp_path):
    record = {"id": "r1", "kind": "qa", "credential": True, "question": "q", "answer": [SECRET]}
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(record) + b"\n" + orjson.dumps({"id": "ok", "kind": "figure"}) + b"\n")
    stats = tmp_path / "stats.json"
    result = medmax(
        "cat", str(src), "-o", str(tmp_path / "out.jsonl"), "--on-error", "skip",
        "--rejects", str(tmp_path / "rej.jsonl"), "--stats", str(stats),
    )  # fmt: skip
    assert SECRET not in stats.read_text()
    assert SECRET not in result.stderr.decode()
    assert json.loads(stats.read_text())["rejected_total"] == 1
    policy = ErrorPolicy("skip")
    policy.reject(RecordError(f"x, got str {SECRET!r}"), {})
    assert SECRET not in "".join(policy.report.dropped)


# ------------------------------------------------------------------ class 10: stats merge pieces


def _stats_piece(medmax, tmp_path: Path) -> dict:
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps({"id": "a", "kind": "figure"}) + b"\n")
    stats = tmp_path / "piece.json"
    medmax("cat", str(src), "-o", str(tmp_path / "o.jsonl"), "--stats", str(stats), "-q")
    return json.loads(stats.read_text())


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"settings": None}, None),  # null settings: merged (was: internal error TypeError)
        ({"started": "2026-01-01T00:00:00"}, "'started'"),  # naive time: was a TypeError on subtraction
        ({"counts": {"in": 2**62 + 1}}, "'counts.in'"),  # the sum of three overflows 64 bits
    ],
)
def test_stats_merge_names_the_field_of_a_bad_piece(medmax, tmp_path, change, expect):
    piece = {**_stats_piece(medmax, tmp_path), **change}
    paths = []
    for i in range(3):
        path = tmp_path / f"p{i}.json"
        path.write_text(json.dumps(piece))
        paths.append(str(path))
    result = medmax("stats", "merge", *paths, "-o", str(tmp_path / "m.json"), check=False)
    err = result.stderr.decode()
    assert "internal error" not in err and "Traceback" not in err
    if expect is None:
        assert result.returncode == 0, err
        assert json.loads((tmp_path / "m.json").read_text())["counts"]["in"] == 3
    else:
        assert result.returncode == 1, err
        assert expect in err


# ------------------------------------------------------------------ class 9 and 5: score --compare


def _scores(n: int = 4, score: object = 1.0) -> list[dict]:
    return [
        {"id": f"i{k}", "eval_task": "vqa_rad_closed", "score": score, "status": "scored"} for k in range(n)
    ]


def _marked(rows: list[dict]) -> bytes:
    body = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    return b'{"medmax_stream":{"version":1}}\n' + body + b'{"medmax_end":{"records":%d}}\n' % len(rows)


def test_compare_reads_a_gzipped_marked_stream(medmax, tmp_path):
    """`score - | tee s.jsonl | gzip` kept: --compare refused the gzip as 'malformed JSON'."""
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _scores()))
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(_marked(_scores())))
    result = medmax("score", "--compare", str(plain), str(packed), check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["tasks"]["vqa_rad_closed"]["n_paired"] == 4


@pytest.mark.parametrize(
    ("tail", "expect"),
    [
        (b"[1, 2]\n", "a record must be a JSON object"),  # was: internal error TypeError
        (b'{"id":"x","eval_task":"vqa_rad_closed","score":1180591620717411303424}\n', "beyond 64 bits"),
        (b'{"id":"x","eval_task":"vqa_rad_closed","score":true}\n', "'score' is not a number"),
        (b'{"id":"x","eval_task":"vqa_rad_closed","score":"0.5"}\n', "'score' is not a number"),
    ],
)
def test_compare_names_a_bad_line(medmax, tmp_path, tail, expect):
    good = tmp_path / "a.jsonl"
    good.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _scores()))
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(good.read_bytes() + tail)
    result = medmax("score", "--compare", str(good), str(bad), check=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert expect in err and "internal error" not in err


def test_compare_refuses_a_cut_stream(medmax, tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in _scores()))
    cut = tmp_path / "b.jsonl"
    cut.write_bytes(_marked(_scores()).rsplit(b"\n", 2)[0] + b"\n")  # the trailer is gone
    result = medmax("score", "--compare", str(good), str(cut), check=False)
    assert result.returncode == 1
    assert "stream cut upstream" in result.stderr.decode()


# ------------------------------------------------------------------ class 10: --config values


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("[pack]\nseq-len = true\n", "takes a value, not true"),  # was: seq-len = 1
        ("[cat]\noutput = false\n", "takes a value, not false"),  # was: a file named "False"
        ("[pack]\nseq-len = 100\nseq_len = 200\n", "given twice"),  # was: 200, silently
    ],
)
def test_config_refuses_a_value_it_would_rewrite(medmax, tmp_path, text, expect):
    config = tmp_path / "c.toml"
    config.write_text(text)
    result = medmax("--config", str(config), "pack", "-o", str(tmp_path / "s"), "--print-config", check=False)
    if "[cat]" in text:
        result = medmax("--config", str(config), "cat", "--print-config", check=False)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "--config" in err and expect in err


# ------------------------------------------------------------------ class 9: the report is a terminal stage


def test_report_notes_a_tee_d_stream_that_was_cut(tmp_path):
    """`generate | tee predictions.jsonl | ...` killed mid-run left a marked file without its trailer:
    the report showed its figures as a finished run's."""
    from medmax_cli.report.collect import iter_jsonl

    rows = [{"id": f"p{k}", "prediction": [{"text": "yes"}]} for k in range(3)]
    cut = tmp_path / "predictions.jsonl"
    cut.write_bytes(_marked(rows).rsplit(b"\n", 2)[0] + b"\n")
    notes: list[str] = []
    assert [r["id"] for r in iter_jsonl(cut, notes)] == ["p0", "p1", "p2"]
    list(iter_jsonl(cut, notes))  # read twice (as report sections do): one note
    assert len(notes) == 1 and "cut upstream after 3 records" in notes[0]
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(_marked(rows))
    clean: list[str] = []
    assert len(list(iter_jsonl(whole, clean))) == 3 and clean == []
    short = tmp_path / "short.jsonl"
    short.write_bytes(_marked(rows).replace(b'"records":3', b'"records":5'))
    list(iter_jsonl(short, clean))
    assert clean and "trailer counts 5" in clean[0]


# ------------------------------------------------------------------ class 6: one reject bucket per rule


def test_tar_refusals_count_under_one_bucket_not_one_per_sample(medmax, tmp_path):
    """'tar sample <id> holds more than ...' made one --stats key per rejected sample."""
    import tarfile

    src = tmp_path / "in.tar"
    with tarfile.open(src, "w", format=tarfile.USTAR_FORMAT) as archive:
        for k in range(3):
            for member, data in ((f"s{k}.json", orjson.dumps({"id": f"s{k}", "kind": "figure"})),
                                 (f"s{k}.0.png", b"x" * 3000)):  # fmt: skip
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    stats = tmp_path / "stats.json"
    medmax(
        "cat", str(src), "-o", str(tmp_path / "o.jsonl"), "--on-error", "skip", "--rejects",
        str(tmp_path / "r.jsonl"), "--stats", str(stats), "--max-reject-rate", "1",
        env={"MEDMAX_MAX_SAMPLE_BYTES": "2000"},
    )  # fmt: skip
    rejected = json.loads(stats.read_text())["rejected"]
    assert sum(rejected.values()) == 3 and len(rejected) == 1, rejected
    assert not any("s0" in key for key in rejected)


# ------------------------------------------------------------------ issue 25 item 2: the model chooser's file


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"model = \n", "not valid TOML"),
        (b"\xff\xfe", "not UTF-8"),
        (b"model = 5\n", "'model' must be a string"),
    ],
)
@pytest.mark.parametrize("command", ["pack", "tokenize-images", "detokenize"])
def test_a_broken_medmax_toml_is_bad_usage_not_an_internal_error(medmax, tmp_path, content, expect, command):
    (tmp_path / "medmax.toml").write_bytes(content)
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps({"id": "a", "kind": "figure"}) + b"\n")
    extra = ["-o", str(tmp_path / "out")]
    result = medmax(command, str(src), *extra, cwd=tmp_path, env={"MEDMAX_MODEL": ""}, check=False)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "medmax.toml" in err and expect in err and "internal error" not in err


# ------------------------------------------------------------------ class 3: scored lines keep the flag


def test_scored_lines_of_credentialed_items_say_so(medmax, tmp_path):
    """A scored line holds the item's output and gold text; it dropped `credential: true`."""
    rows = []
    for k, credential in enumerate((True, False)):
        rows.append(
            {
                "id": f"q{k}",
                "task": "vqa",
                "credential": credential,
                "answer": "yes",
                "question_type": "closed",
                "turns": [
                    {"role": "user", "content": [{"text": "Is it?"}]},
                    {"role": "assistant", "content": [{"text": "yes"}]},
                ],
                "prediction": [{"text": f"{SECRET} yes"}],
            }
        )
    src = tmp_path / "pred.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    lines = {r["id"]: r for r in parse_jsonl(medmax("score", str(src), "-q").stdout)}
    assert lines["q0"]["credential"] is True
    assert "credential" not in lines["q1"]


def test_read_time_rejects_count_as_read_and_dash_is_not_a_rejects_file(medmax, tmp_path):
    """in = out + rejected: a line refused while reading was read (lead, after h1's sweep); and
    `--rejects -` / `--stats -` are refused instead of writing a file named '-'."""
    import orjson

    src = tmp_path / "in.jsonl"
    good = b'{"id": "a", "source": "t", "license": "cc0", "kind": "qa", "question": "q?", "answer": "yes", "images": []}'
    src.write_bytes(good + b'\nnot json\n[1, 2]\n{"no": "id"}\n')
    stats = tmp_path / "s.json"
    run = medmax("cat", str(src), "--on-error", "skip", "--rejects", str(tmp_path / "r.jsonl"),
                 "--stats", str(stats))  # fmt: skip
    data = orjson.loads(stats.read_bytes())
    assert data["counts"]["in"] == 4 and data["counts"]["out"] == 1 and data["rejected_total"] == 3, data
    assert run.returncode == 0
    for flag in ("--rejects", "--stats"):
        bad = medmax("cat", str(src), flag, "-", check=False, cwd=tmp_path)
        assert bad.returncode == 2 and f"{flag} -".encode() in bad.stderr
        assert not (tmp_path / "-").exists()


def test_validate_stats_count_what_it_found(medmax, tmp_path):
    """`validate --stats` wrote empty counts and `rejected_total: 0` whatever it found (h1)."""
    import orjson

    good = b'{"id": "a", "source": "t", "license": "cc0", "kind": "qa", "question": "q?", "answer": "yes", "images": []}'
    src = tmp_path / "in.jsonl"
    src.write_bytes(good + b"\nnot json\n" + good + b"\n")
    stats = tmp_path / "s.json"
    run = medmax("validate", str(src), "--stats", str(stats), check=False)
    assert run.returncode == 1
    data = orjson.loads(stats.read_bytes())
    assert data["counts"]["in"] == 3 and data["counts"]["out"] == 1 and data["rejected_total"] == 2, data


def test_pmc_base_urls_keep_their_query_where_it_belongs():
    """A mirror or signed base URL (`--pmc-cloud-url https://m/x?sig=...`) keeps its query after the
    path is joined, as --llm-url does (issue 24 class 4, one step to the side)."""
    from medmax_cli.fetch.pmc import _with_slash, s3_to_https

    base = "https://mirror.example/pmc?sig=abc"
    assert s3_to_https("s3://pmc-oa-opendata/PMC1.1/PMC1.1.xml?md5=00", base) == (
        "https://mirror.example/pmc/PMC1.1/PMC1.1.xml?sig=abc"
    )
    assert _with_slash(base) == "https://mirror.example/pmc/?sig=abc"
    assert s3_to_https("s3://pmc-oa-opendata/K.json", "http://127.0.0.1:9/") == "http://127.0.0.1:9/K.json"


def test_only_a_digit_run_that_can_be_a_number_gets_the_exact_parse():
    """The exact 64-bit check re-parses a line only where a 19+ digit run can be a JSON number; a
    hex digest's run of zeros inside a string cost every such line a second, stdlib parse."""
    from medmax_cli.records import RecordError, _long_number, loads_record

    big = "99999999999999999999"  # beyond 64 bits (2**64 - 1 is 18446744073709551615)
    for text in (f'{{"a": {big}}}', f'{{"a":-{big}}}', f"[1,{big}]", big):
        assert _long_number(text.encode())
        with pytest.raises(RecordError, match="beyond 64 bits"):
            loads_record(text)
    digest = '{"sha256": "' + "0" * 40 + 'abc", "path": "ab/' + "0" * 30 + '.png"}'
    assert not _long_number(digest.encode()) and loads_record(digest)["path"].startswith("ab/")
    assert _long_number(('{"s": "' + "0" * 30 + f'x", "n": {big}}}').encode())
