"""`medmax report`: the page built from a real (small) run, and the same page in headless Chromium.

The browser test needs Chromium (Debian package `chromium`); without it the test is skipped with a
message saying so, unless MEDMAX_REQUIRE_BROWSER=1 (what `make test-browser` sets) makes it fail.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import orjson
import pytest
from PIL import Image

from conftest import SAMPLE, run_medmax
from score_helpers import vqa

SECTIONS = ("run", "stages", "curation", "gallery", "training", "evaluation")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A small run: fetch -> synthesize -> tokenize-images with stats, a training log, predictions + score."""
    root = tmp_path_factory.mktemp("run")
    env = {"MEDMAX_MEDIA": str(root / "media"), "MEDMAX_STATS_DIR": str(root / "stats")}
    sources = run_medmax("fetch", "jats", str(SAMPLE / "jats"), env=env).stdout
    run_medmax("synthesize", "--seed", "0", "-o", str(root / "instances.jsonl"), input=sources, env=env)
    run_medmax("tokenize-images", str(root / "instances.jsonl"), "--model", str(tiny_model_dir), "--device", "cpu",
               "-o", str(root / "instances.tok.jsonl"), env=env)  # fmt: skip
    run_medmax("pack", str(root / "instances.tok.jsonl"), "--model", str(tiny_model_dir), "--seq-len", "512",
               "-o", str(root / "shards"), env=env)  # fmt: skip
    from medmax_cli.train.metrics import MetricsLog

    log = MetricsLog(root / "run", loggers="none")
    for step in range(1, 6):
        log.write({"step": step, "loss": 10 / step, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 100.0 + step,
                   "supervised_tokens": 50})  # fmt: skip
    log.close()
    image = next(orjson.loads(line) for line in (root / "instances.tok.jsonl").read_bytes().splitlines())[
        "images"
    ][0]
    predictions = [
        vqa(f"v{i}", "vqa_rad_closed", "yes", "yes" if i % 3 else "no", image=image["path"]) for i in range(6)
    ]
    generated = {
        **predictions[0],
        "id": "g0",
        "task": "image_generation",
        "images": [image],
        "prediction": [{"image": 0}],
    }
    (root / "predictions.jsonl").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in predictions))
    (root / "generated.jsonl").write_bytes(orjson.dumps(generated) + b"\n")
    run_medmax("score", str(root / "predictions.jsonl"), "--summary", str(root / "summary.json"), "-o",
               str(root / "scores.jsonl"), env=env)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def report(run_dir, tiny_model_dir) -> Path:
    out = run_dir / "report"
    result = run_medmax("report", str(run_dir), "-o", str(out), "--model", str(tiny_model_dir),
                        env={"MEDMAX_MEDIA": str(run_dir / "media")})  # fmt: skip
    assert b"1 runs, 1 score summaries" in result.stderr
    return out / "index.html"


def test_report_page_has_every_section_and_its_images_on_disk(report):
    page = report.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 10
    for src in sources:
        assert not src.startswith(("http", "/", "file:")), src  # relative: the folder is self-contained
        with Image.open(report.parent / src) as image:
            assert image.width > 0
    assert "VQ reconstruction" in page and "no reconstruction" not in page
    assert "training-0.png" in page and "evaluation-0.png" in page and "tasks.png" in page
    assert "medmax tokenize-images" in page and "medmax synthesize" in page  # the stages table (stats files)
    assert "vqa_rad_closed" in page and "95% CI" in page and "img/" in page.split('id="evaluation"')[1]
    assert "Packed shards" in page and "medmax pack" in page
    assert 'id="random-model">RANDOM MODEL' in page  # the tiny model's decoder made the reconstructions
    assert "<script" not in page


def test_report_of_nothing_is_a_clear_error(tmp_path):
    result = run_medmax(
        "report", str(tmp_path), "-o", str(tmp_path / "r"), "--no-reconstructions", check=False
    )
    assert result.returncode == 2 and b"nothing medmax wrote was found" in result.stderr


def _browser_or_skip():
    from medmax_cli.report.browser import find_browser

    if find_browser() is None:
        if os.environ.get("MEDMAX_REQUIRE_BROWSER") == "1":
            pytest.fail("MEDMAX_REQUIRE_BROWSER=1 but no Chromium found")
        pytest.skip(
            "Chromium not installed: the browser test runs with `make test-browser` (apt-get install chromium)"
        )


def test_report_renders_in_headless_chromium(report, tmp_path):
    _browser_or_skip()
    from medmax_cli.report.browser import check_page, live_group_members

    shot = tmp_path / "report.png"
    check = check_page(report, screenshot=shot)
    assert check.problems(SECTIONS) == []
    assert len(check.images) >= 10 and all(i["naturalWidth"] > 0 for i in check.images)
    # every image drawn at its natural aspect ratio (a flex row once stretched a 540x171 chart to 540x234)
    for i in check.images:
        assert i["width"] > 0 and i["height"] > 0, i
        assert (
            abs(i["width"] / i["height"] - i["naturalWidth"] / i["naturalHeight"])
            < 0.02 * max(1, i["naturalWidth"] / i["naturalHeight"]) + 2 / i["height"]
        ), i
    assert [s for s in check.sections if s in SECTIONS] == list(SECTIONS) and check.title == "medmax report"
    with Image.open(shot) as image:
        assert image.width == 1200 and image.height > 900
    assert live_group_members(check.browser_pid) == []  # the browser and all its children are gone


def test_the_browser_check_catches_a_broken_page(tmp_path):
    """The check can fail: a missing image and a console error are both reported."""
    _browser_or_skip()
    from medmax_cli.report.browser import check_page

    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><title>t</title></head><body><section id="stages"></section>'
        '<img src="missing.png"><img src="wide.png" width="100" height="100">'
        '<script>console.error("boom")</script></body></html>'
    )
    Image.new("RGB", (200, 50), "red").save(tmp_path / "wide.png")
    problems = check_page(page).problems(SECTIONS)
    assert "image did not load: missing.png" in problems
    assert any(p.startswith("image stretched: wide.png drawn 100x100") for p in problems)
    assert any("boom" in p for p in problems)
    assert "section missing: gallery" in problems
