"""Reasons are classes with details: the run summary and `--stats` count rejects and skips by a
short fixed class (bounded by the rules, not the rows); the rejects file keeps the specifics (the
missing file, the folder searched, the row); skips by a user's filter are counted apart."""

from __future__ import annotations

import io
from pathlib import Path

import orjson

from fakes.jats_articles import png
from medmax_cli.records import RecordError, reason_class
from medmax_cli.streams import ErrorPolicy, RunReport, parse_jsonl


def slake_layout(root: Path, n: int) -> Path:
    """SLAKE 1.0's train.json rows (BoKelvin/SLAKE), English and Chinese, with no imgs/ folder."""
    rows = []
    for i in range(n):
        row = {"img_id": i, "img_name": f"xmlab{i}/source.jpg", "question": f"Which organ {i}?", "answer": "Lung",
               "q_lang": "en", "location": "Chest", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa",
               "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 2 * i}  # fmt: skip
        rows += [row, {**row, "q_lang": "zh", "question": "哪个器官?", "qid": 2 * i + 1}]
    (root / "train.json").write_bytes(orjson.dumps(rows))
    return root


def test_missing_images_give_one_class_and_full_details(tmp_path, medmax):
    slake_layout(tmp_path, 30)
    stats = tmp_path / "stats.json"
    rejects = tmp_path / "rejects.jsonl"
    env = {"MEDMAX_MEDIA": str(tmp_path / "m")}
    args = ("fetch", "slake", str(tmp_path), "--on-error", "skip", "--rejects", str(rejects))
    run = medmax(*args, "--stats", str(stats), env=env, check=False)
    data = orjson.loads(stats.read_bytes())
    assert data["rejected"] == {"image not found": 30}  # one key, not one per row
    assert data["skipped"] == {"language not selected": 30}  # a user's filter: apart from rejects
    assert data["rejected_total"] == 30 and data["skipped_total"] == 30
    assert data["counts"]["in"] == 60 == data["rejected_total"] + data["skipped_total"]
    summary = run.stderr.decode()
    assert (
        "rejected 30 (image not found: 30)" in summary and "skipped 30 (language not selected: 30)" in summary
    )
    entries = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    missing = [e for e in entries if e["class"] == "image not found"]
    assert len(missing) == 30 and not any(e.get("skipped") for e in missing)
    first = missing[0]
    assert (
        "xmlab0/source.jpg" in first["reason"] and str(tmp_path) in first["reason"]
    )  # file + folder searched
    assert first["where"].endswith("train.json[0]")  # the row
    skipped = [e for e in entries if e.get("skipped")]
    assert len(skipped) == 30 and skipped[0]["reason"].startswith("language zh not selected")


def test_stage_summary_and_stats_are_bounded_by_rules(tmp_path):
    report = RunReport("fetch")
    policy = ErrorPolicy("skip", io.BytesIO(), report=report)
    for i in range(500):
        policy.reject(RecordError(f"train.json[{i}] image: cannot read 'x{i}.jpg' (No such file)"))
        policy.reject(RecordError(f"whatever {i}", cls="image not found"))
        policy.skip("split not selected", f"split test not selected (--split train): row {i}")
    assert len(report.dropped) == 2 and len(report.skipped) == 1
    assert report.dropped["image not found"] == 500
    assert report.as_dict()["skipped"] == {"split not selected": 500}


def test_reason_class_drops_values():
    assert reason_class("testset.json[12] image: file not found") == "testset.json image"
    assert reason_class("answer 'Lung' is not 'A'-'D' (row 3)") == "answer is not -"
    assert reason_class("duplicate id 'x': an id may occur once per stream") == "duplicate id"
    assert RecordError("x", cls="image not found").cls == "image not found"


def test_merge_stats_adds_skipped_and_contamination():
    from medmax_cli.observe import merge_stats

    def piece(shard, n):
        return {"medmax_stats": 1, "command": "synthesize", "stage": "synthesize", "status": "ok",
                "shard": f"{shard}/2", "counts": {"in": n}, "rejected": {"contaminated": n},
                "skipped": {"task not selected": 1}, "settings": {},
                "contamination": [{"eval_source": "vqa-rad", "match": "exact_image", "count": n}]}  # fmt: skip

    from medmax_cli.observe import STATS_FORMAT

    pieces = [(f"s{i}", {**piece(i, 3 + i), "medmax_stats": STATS_FORMAT}) for i in range(2)]
    merged = merge_stats(pieces)
    assert merged["skipped"] == {"task not selected": 2}
    assert merged["contamination"] == [{"eval_source": "vqa-rad", "match": "exact_image", "count": 7}]


def test_image_file_too_large_is_a_class(tmp_path, media):
    from medmax_cli.media import MAX_IMAGE_BYTES, MediaError

    big = tmp_path / "huge.png"
    with open(big, "wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)  # sparse: nothing is written, nothing need be read
    try:
        media.import_file(big, what="row 1 image")
    except MediaError as exc:
        assert exc.cls == "image too large" and "huge.png" in str(exc)
    else:
        raise AssertionError("an oversized image was read")
    (tmp_path / "ok.png").write_bytes(png(1))
    assert media.import_file(tmp_path / "ok.png")["width"] == 24


def test_language_option_selects_and_counts(tmp_path, medmax):
    slake_layout(tmp_path, 2)
    for i in range(2):
        image = tmp_path / "imgs" / f"xmlab{i}" / "source.jpg"
        image.parent.mkdir(parents=True)
        image.write_bytes(png(i, fmt="JPEG"))
    env = {"MEDMAX_MEDIA": str(tmp_path / "m")}
    zh = medmax("fetch", "slake", str(tmp_path), "--language", "zh", env=env)
    assert [line["question"] for line in parse_jsonl(zh.stdout)] == ["哪个器官?"] * 2
    assert "skipped 2 (language not selected: 2)" in zh.stderr.decode()
    every = medmax("fetch", "slake", str(tmp_path), "--language", "all", env=env)
    assert len(parse_jsonl(every.stdout)) == 4 and "skipped" not in every.stderr.decode()
