"""The bundled sample corpus (examples/sample): reproducible, well-formed, varied enough.

The corpus is what `make demo` and the offline tests run on, so it must stay small, valid JATS
with the awkward cases a parser meets, and valid qa records whose images exist.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from lxml import etree
from PIL import Image

from medmax_cli.records import validate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample"
XLINK = "{http://www.w3.org/1999/xlink}href"


def _make_sample():
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "examples" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_sample"] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["make_sample"]
    return module


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def articles():
    return {p.stem: etree.parse(str(p)) for p in sorted((SAMPLE / "jats").glob("*.xml"))}


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / name).read_text(encoding="utf-8").splitlines() if line]


def test_generator_reproduces_the_committed_files(tmp_path):
    _make_sample().build(tmp_path)
    assert _files(tmp_path) == _files(SAMPLE)


def test_small():
    files = _files(SAMPLE)
    assert sum(len(b) for b in files.values()) < 1_000_000
    images = [n for n in files if n.endswith((".png", ".jpg"))]
    assert 10 <= len(images) <= 14
    assert all(len(files[n]) < 20_000 for n in images)
    assert (SAMPLE / "LICENSE.md").read_text().count("CC0") >= 1


def test_jats_metadata(articles):
    assert len(articles) == 5
    for pmcid, doc in articles.items():
        meta = doc.find("front/article-meta")
        assert meta.findtext("article-id[@pub-id-type='pmc']") == pmcid
        assert meta.findtext("article-id[@pub-id-type='doi']").startswith("10.")
        assert meta.findtext("title-group/article-title")
        assert doc.findtext("front/journal-meta/journal-title-group/journal-title")
        assert meta.findtext("pub-date/year").isdigit()
        assert meta.find("permissions/license").get(XLINK) == "https://creativecommons.org/licenses/by/4.0/"
        assert meta.findtext("abstract/p")
        assert doc.find("body/sec/title") is not None and doc.find("body/sec/p") is not None


def test_every_graphic_has_an_image_file(articles):
    n = 0
    for doc in articles.values():
        figs = doc.findall(".//fig")
        assert 2 <= len(figs) <= 3
        for fig in figs:
            href = fig.find("graphic").get(XLINK)
            files = sorted((SAMPLE / "jats").glob(Path(href).stem + ".*"))
            assert len(files) == 1 and files[0].suffix in (".png", ".jpg")
            with Image.open(files[0]) as im:
                im.load()
                assert 64 <= min(im.size) and max(im.size) <= 160
            n += 1
    assert 10 <= n <= 14


def test_parser_edge_cases_are_present(articles):
    text = {k: etree.tostring(d, encoding="unicode") for k, d in articles.items()}
    every = "".join(text.values())
    assert any(d.find("floats-group/fig") is not None for d in articles.values())
    assert any(d.find(".//fig-group/fig") is not None for d in articles.values())
    hrefs = [g.get(XLINK) for d in articles.values() for g in d.iter("graphic")]
    assert any("." not in h for h in hrefs) and any("." in h for h in hrefs)
    rids = [x.get("rid") for d in articles.values() for x in d.iter("xref") if x.get("ref-type") == "fig"]
    assert "F1 F2" in rids
    anchors = [x.text for d in articles.values() for x in d.iter("xref")]
    assert "3E" in anchors
    assert any(
        x.get("ref-type") == "supplementary-material" for d in articles.values() for x in d.iter("xref")
    )
    assert all(s in every for s in ("Größe", "µm", "–"))
    assert any(f.find("caption") is None for d in articles.values() for f in d.iter("fig"))
    # every fig xref points at a figure of its own article
    for d in articles.values():
        ids = {f.get("id") for f in d.iter("fig")}
        for x in d.iter("xref"):
            if x.get("ref-type") == "fig":
                assert set(x.get("rid").split()) <= ids


@pytest.mark.parametrize("name", ["vqa.jsonl", "eval.jsonl"])
def test_qa_records(name):
    records = _records(name)
    assert 10 <= len(records) <= 14
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        validate(r)
        assert r["kind"] == "qa" and r["license"] == "cc0" and r["credential"] is False
        assert all((SAMPLE / im["path"]).is_file() for im in r["images"])
        qt = r["question_type"]
        if qt == "closed":
            assert r["answer"] in ("yes", "no")
        elif qt == "multiple_choice":
            assert len(r["options"]) == 4 and r["answer"] in "ABCD" and len(r["answer"]) == 1
        else:
            assert qt == "open" and r["answer"] and "options" not in r
    types = {r["question_type"] for r in records}
    assert types == {"closed", "open", "multiple_choice"}
    if name == "eval.jsonl":
        tasks = {r["meta"]["eval_task"] for r in records}
        assert {"vqa_rad_closed", "slake_open", "pmc_vqa"} <= tasks
