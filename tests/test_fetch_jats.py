"""JATS parsing and `fetch jats` / `fetch jsonl` over local files, packages and the sample corpus."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import orjson
import pytest

from conftest import SAMPLE
from fakes.jats_articles import EXPECTED_GOOD, article, corpus, png
from medmax_cli.fetch.jats import JatsError, candidate_names, normalise_license, parse_jats, safe_href
from medmax_cli.fetch.local import fetch_jats, fetch_jsonl
from medmax_cli.records import validate
from medmax_cli.streams import ErrorPolicy, parse_jsonl


def write_corpus(root: Path) -> Path:
    for pmcid, (xml, files) in corpus().items():
        folder = root / pmcid
        folder.mkdir(parents=True)
        (folder / f"{pmcid}.xml").write_bytes(xml)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    (root / "evil.png").write_bytes(png(9))  # what ../evil.png would reach
    return root


def rejects_of(buffer: io.BytesIO) -> list[dict]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines()]


def test_mentions_offsets_anchors_and_sentences():
    article = parse_jats(corpus()["PMC100001"][0])
    assert article.title == "Größe und Form" and article.journal == "Jöurnal of Tests"
    assert article.license == "cc-by" and article.year == 2020 and article.doi == "10.1/PMC100001"
    f1, f2 = article.figures  # F2 lives in <floats-group>
    assert f2.figure_id == "F2" and f2.caption == "MRI: T2 weighted"
    assert [m.anchor for m in f1.mentions] == ["Figures 1 and 2"]  # rid="F1 F2" cites both
    assert [m.anchor for m in f2.mentions] == ["Figures 1 and 2", "3E"]
    for m in f1.mentions + f2.mentions:
        assert m.paragraph[m.start : m.end] == m.anchor
        assert m.anchor in m.sentence and m.sentence in m.paragraph
    assert f2.mentions[1].sentence == "The detail in panel 3E shows it."  # not cut at "Fig."
    assert "µm" in f1.mentions[0].paragraph and "Table S1" in f1.mentions[0].paragraph
    assert f1.mentions[0].section == "Introduction"


def test_fig_group_video_missing_caption_and_licences():
    article = parse_jats(corpus()["PMC100002"][0])
    by_id = {f.figure_id: f for f in article.figures}
    assert by_id["F3a"].caption == "Group caption."  # falls back to the fig-group caption
    assert by_id["F3a"].mentions[0].anchor == "Figure 3"  # cited through the group id
    assert by_id["V1"].is_video and not by_id["V1"].hrefs
    assert by_id["F4"].caption == "" and by_id["F6"].hrefs == []
    assert article.license == "cc-by-nc"
    assert parse_jats(corpus()["PMC100003"][0]).retracted
    assert parse_jats(corpus()["PMC100004"][0]).license == "cc0"
    assert normalise_license("CC BY-NC-ND") == "cc-by-nc-nd"
    assert normalise_license("CC0") == "cc0"
    assert normalise_license(None, "all rights reserved") == "other"


def test_parser_refuses_entities_and_bad_hrefs(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xml = (
        f'<?xml version="1.0"?><!DOCTYPE article [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<article><front><article-meta><title-group><article-title>&x;</article-title>"
        "</title-group></article-meta></front></article>"
    ).encode()
    try:
        article = parse_jats(xml)
        assert "TOPSECRET" not in article.title
    except JatsError:
        pass
    with pytest.raises(JatsError):
        parse_jats(b"<article><unclosed></article>")
    for bad in ("../x.png", "/etc/passwd", "http://evil/x.png", "a/../../x"):
        with pytest.raises(JatsError):
            safe_href(bad)
    assert candidate_names("fig1")[:2] == ["fig1.jpg", "fig1.jpeg"]
    assert candidate_names("fig1.png") == ["fig1.png"]


def test_fetch_jats_folder_counts_every_skip(tmp_path, media):
    root = write_corpus(tmp_path / "in")
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="fetch")
    records = list(fetch_jats([root], media=media, policy=policy))
    assert [r["id"] for r in records] == EXPECTED_GOOD
    for record in records:
        validate(record)
        assert media.path_of(record["images"][0]).is_file()
    got = {r["record_id"]: r["reason"] for r in rejects_of(rejects)}
    assert got["PMC100002-V1"].startswith("video")
    assert got["PMC100002-F6"].startswith("no image file")
    assert "escapes the article folder" in got["PMC100002-F5"]
    assert got["PMC100003"].startswith("retracted article")
    assert len(got) == 4
    assert policy.report.counts["figures"] == len(EXPECTED_GOOD)


def test_fetch_jats_license_filter_and_package(tmp_path, media):
    package = tmp_path / "bulk.tar.gz"
    with tarfile.open(package, "w:gz") as archive:
        for pmcid, (xml, files) in corpus().items():
            for name, data in {f"{pmcid}.nxml": xml, **files}.items():
                info = tarfile.TarInfo(f"{pmcid}/{name}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    policy = ErrorPolicy("skip", io.BytesIO(), stage="fetch")
    records = list(fetch_jats([package], media=media, policy=policy, licenses=frozenset({"cc-by", "cc0"})))
    assert [r["id"] for r in records] == ["PMC100001-F1", "PMC100001-F2", "PMC100004-F1"]
    assert {r["license"] for r in records} == {"cc-by", "cc0"}
    assert policy.report.skipped["license not selected"] == 6 and not policy.report.dropped  # its 6 figures
    report = policy.report  # in = out + rejected + skipped, over figures
    assert report.counts["in"] == len(records) + sum(report.dropped.values()) + sum(report.skipped.values())


def test_fetch_jats_fail_mode_stops_on_unsafe_href(tmp_path, media):
    root = write_corpus(tmp_path / "in")
    with pytest.raises(Exception, match="escapes the article folder"):
        list(fetch_jats([root / "PMC100002"], media=media, policy=ErrorPolicy("fail", stage="fetch")))


def test_fetch_jsonl_imports_images_and_refuses_escapes(tmp_path, media):
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(png(1))
    (tmp_path / "outside.png").write_bytes(png(2))
    rows = [
        {
            "id": "q1",
            "kind": "qa",
            "source": "t",
            "license": "cc0",
            "question": "?",
            "answer": "yes",
            "images": [{"path": "img/a.png"}],
            "meta": {},
        },
        {
            "id": "q2",
            "kind": "qa",
            "source": "t",
            "license": "cc0",
            "question": "?",
            "answer": "no",
            "images": [{"path": "../outside.png"}],
            "meta": {},
        },
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    rejects = io.BytesIO()
    out = list(fetch_jsonl(path, root=root, media=media, policy=ErrorPolicy("skip", rejects, stage="fetch")))
    assert [r["id"] for r in out] == ["q1"]
    assert out[0]["images"][0]["path"].endswith(".png") and len(out[0]["images"][0]["sha256"]) == 64
    assert "'..' may not leave" in rejects_of(rejects)[0]["reason"]


def test_command_on_sample_corpus_is_deterministic(medmax, tmp_path):
    env = {"MEDMAX_MEDIA": str(tmp_path / "media")}
    first = medmax("fetch", "jats", str(SAMPLE / "jats"), "-q", env=env).stdout
    second = medmax("fetch", "jats", str(SAMPLE / "jats"), "-q", env=env).stdout
    assert first == second
    records = parse_jsonl(first)
    assert len(records) >= 5 and all(r["kind"] == "figure" for r in records)
    qa = medmax("fetch", "jsonl", str(SAMPLE / "vqa.jsonl"), "--root", str(SAMPLE), "-q", env=env).stdout
    assert all(line["images"][0]["sha256"] for line in parse_jsonl(qa))
    bad = medmax("fetch", "jats", str(tmp_path / "nope"), check=False, env=env)
    assert bad.returncode == 2 and b"no such file" in bad.stderr


def test_synced_cloud_folder_metadata_overrides_the_xml(tmp_path, media):
    xml, files = corpus()["PMC100001"]
    folder = tmp_path / "PMC100001.3"
    folder.mkdir()
    (folder / "PMC100001.3.xml").write_bytes(xml)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "PMC100001.3.json").write_bytes(
        orjson.dumps(
            {"pmcid": "PMC100001", "version": 3, "license_code": "CC BY-NC-ND", "is_retracted": False}
        )
    )
    records = list(fetch_jats([tmp_path], media=media, policy=ErrorPolicy("fail", stage="fetch")))
    assert [r["id"] for r in records] == ["PMC100001_3-F1", "PMC100001_3-F2"]
    assert {r["license"] for r in records} == {"cc-by-nc-nd"} and records[0]["article"]["version"] == 3


def test_shards_partition_the_inputs(tmp_path, media):
    root = write_corpus(tmp_path / "in")
    parts = [
        [
            r["id"]
            for r in fetch_jats([root], media=media, policy=ErrorPolicy("skip", stage="f"), shard=(i, 3))
        ]
        for i in range(3)
    ]
    assert sorted(sum(parts, [])) == sorted(EXPECTED_GOOD)


SECRET = b"TOPSECRET-NOT-AN-IMAGE-0123456789"
LINKED = article(
    "PMC300001",
    """<sec><title>L</title><p>See <xref ref-type="fig" rid="F1">Figure 1</xref>.</p>
    <fig id="F1"><label>Figure 1</label><caption><p>Linked.</p></caption><graphic xlink:href="fig1"/></fig>
    <fig id="F2"><label>Figure 2</label><caption><p>Inside.</p></caption><graphic xlink:href="fig2"/></fig></sec>""",
)


def test_fetch_jats_never_follows_links_out_of_the_article_folder(tmp_path, media, medmax):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(SECRET)
    (outside / "other.xml").write_bytes(LINKED.replace(b"PMC300001", b"PMC300009"))
    folder = tmp_path / "in" / "PMC300001"
    folder.mkdir(parents=True)
    (folder / "PMC300001.xml").write_bytes(LINKED)
    (folder / "fig1.jpg").symlink_to(outside / "secret.jpg")  # a figure that links out
    (folder / "fig2.jpg").write_bytes(png(5, fmt="JPEG"))
    (tmp_path / "in" / "linked.xml").symlink_to(outside / "other.xml")  # an article that links out
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="fetch")
    records = list(fetch_jats([tmp_path / "in"], media=media, policy=policy))
    assert [r["id"] for r in records] == ["PMC300001-F2"]
    got = rejects_of(rejects)
    reasons = {r["record_id"] or r["where"]: r["reason"] for r in got}
    assert "links outside" in reasons["PMC300001-F1"]
    assert "link that leads outside" in reasons[str(tmp_path / "in" / "linked.xml")]
    assert b"TOPSECRET" not in rejects.getvalue()
    assert not any(p.read_bytes() == SECRET for p in media.root.rglob("*") if p.is_file())
    result = medmax("fetch", "jats", str(folder), check=False, env={"MEDMAX_MEDIA": str(tmp_path / "m")})
    assert result.returncode == 1 and b"links outside" in result.stderr
    assert b"TOPSECRET" not in result.stderr + result.stdout and b"Traceback" not in result.stderr


def test_fetch_jats_caps_a_package_s_uncompressed_size(tmp_path, media):
    package = tmp_path / "PMC300001.tar.gz"
    with tarfile.open(package, "w:gz") as archive:
        for name, data in {
            "PMC300001.nxml": LINKED,
            "fig2.jpg": png(5, fmt="JPEG"),
            "big.bin": bytes(50_000),
        }.items():
            info = tarfile.TarInfo(f"PMC300001/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    policy = ErrorPolicy("skip", io.BytesIO(), stage="fetch")
    records = list(fetch_jats([package], media=media, policy=policy, max_package_bytes=40_000))
    assert records == [] and policy.report.dropped["package refused"] == 1
    with pytest.raises(
        Exception, match=r"package refused: over 40000 bytes uncompressed \(at member 'PMC300001/big.bin'\)"
    ):
        list(fetch_jats([package], media=media, policy=ErrorPolicy(), max_package_bytes=40_000))
    fine = list(fetch_jats([package], media=media, policy=ErrorPolicy("skip", io.BytesIO())))
    assert [r["id"] for r in fine] == ["PMC300001-F2"]
