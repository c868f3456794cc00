"""`medmax report` says only what is true and publishes only what may be published (issue 25 item 3,
issue 24 class 3, issue 22 item 8's report part). Each run is built here from small files in the
formats the stages write; the report is built in-process, without a model (no reconstructions)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from medmax_cli.media import MediaStore
from medmax_cli.report import checks, lineage, plots
from medmax_cli.report.collect import find_files
from medmax_cli.report.images import ImageRefError, ReportImages, check_ref
from medmax_cli.report.page import build_report


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def js(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))
    return path


def png(width: int, height: int, colour: str = "red", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def stats(command: str, *, output: str | None = None, inputs: list[str] | None = None, rejects: str | None = None,
          rejected: dict | None = None, skipped: dict | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    stage = command.split()[-1]
    return {
        "medmax_stats": 1,
        "stage": stage,
        "command": command,
        "version": "0.test",
        "status": "ok",
        "seconds": 1.0,
        "counts": {"in": 10, "out": 8},
        "rejected": rejected or {},
        **({"skipped": skipped} if skipped is not None else {}),
        "settings": {"output": output, "inputs": inputs or [], "rejects": rejects, "seed": 0},
        **extra,
    }


def instance(rid: str, ref: dict[str, Any], *, task: str = "captioning", text: str = "A caption.",
             credential: bool = False) -> dict[str, Any]:  # fmt: skip
    return {
        "id": rid,
        "task": task,
        "source": "test",
        "license": "cc-by",
        "credential": credential,
        "images": [ref],
        "turns": [
            {"role": "user", "content": [{"image": 0}, {"text": "Describe the image."}]},
            {"role": "assistant", "content": [{"text": text}]},
        ],
    }


def prediction(rid: str, task: str, gold: str, output: str, *, qtype: str, options: list[str] | None = None,
               question: str = "Is there a lesion?", credential: bool = False,
               settings: dict | None = None) -> dict[str, Any]:  # fmt: skip
    record = {
        "id": rid,
        "task": "vqa",
        "source": "test",
        "license": "cc0",
        "credential": credential,
        "images": [],
        "turns": [{"role": "user", "content": [{"text": question}]}],
        "answer": gold,
        "question_type": qtype,
        "meta": {"eval_task": task},
        "prediction": [{"text": output}],
        "generation": {"mode": "text", "settings": settings or {"model": "models/anole-7b"}},
    }
    if options:
        record["options"] = options
    return record


def page_of(tmp_path: Path, *paths: Path, media: MediaStore | None = None, **kw: Any) -> tuple[str, dict]:
    media = media or MediaStore(tmp_path / "media")
    result = build_report(list(paths), tmp_path / "report", media=media, model_dir=None, **kw)
    return (tmp_path / "report" / "index.html").read_text(encoding="utf-8"), result


# --------------------------------------------------------------------------- A: the truth


def test_images_carry_their_natural_size_and_charts_never_stretch(tmp_path):
    media = MediaStore(tmp_path / "media")
    wide = media.put(png(300, 100))
    run = tmp_path / "run"
    jsonl(run / "instances.jsonl", [instance("a", wide)])
    page, _ = page_of(tmp_path, run, media=media)
    assert "align-items:flex-start" in page  # a flex row stretches its items to the tallest otherwise
    for src, width, height in re.findall(
        r'<img src="([^"]+)" alt="[^"]*" width="(\d+)" height="(\d+)">', page
    ):
        with Image.open(tmp_path / "report" / src) as image:
            natural = image.width / image.height
        assert abs(int(width) / int(height) - natural) < 0.02 * natural + 1 / int(height), (
            src,
            width,
            height,
        )
    assert 'width="192" height="64"' in page  # the 300x100 image at 192 px wide keeps 3:1
    charts = re.findall(r'<img src="(\w+\.png)" alt="[^"]*" width="(\d+)" height="(\d+)">', page)
    assert charts and all(
        Image.open(tmp_path / "report" / s).size == (int(w), int(h)) for s, w, h in charts
    )  # each chart drawn at exactly its own pixel size (CSS may only scale it down, keeping the ratio)


def _two_runs(tmp_path: Path) -> Path:
    """The demo's shape: the main synthesize -> tokenize-images line, and a decontamination run beside it."""
    run = tmp_path / "run"
    media = MediaStore(tmp_path / "media")
    ref = {**media.put(png(8, 8)), "tokens": [1, 2]}
    jsonl(run / "instances.jsonl", [instance("a", media.put(png(8, 8)))])
    jsonl(run / "instances.tok.jsonl", [instance("a", ref)])
    jsonl(run / "instances.decontaminated.jsonl", [instance("b", media.put(png(8, 8)))])
    reject = {"stage": "synthesize", "where": "sources.jsonl:3", "raw": {}}
    jsonl(run / "synth-rejects.jsonl", [{**reject, "reason": "image not found: a.png in /x"}] * 2)
    jsonl(
        run / "decon-rejects.jsonl",
        [{**reject, "reason": "contaminated: shares an image with eval E1"}] * 7
        + [{**reject, "class": "language not selected", "reason": "zh", "skipped": True}] * 4,
    )
    js(run / "stats" / "1.json", stats("medmax synthesize", output=str(run / "instances.jsonl"),
                                       rejects=str(run / "synth-rejects.jsonl")))  # fmt: skip
    js(run / "stats" / "2.json", stats("medmax tokenize-images", output=str(run / "instances.tok.jsonl"),
                                       inputs=[str(run / "instances.jsonl")]))  # fmt: skip
    js(run / "stats" / "3.json", stats(
        "medmax synthesize", output=str(run / "instances.decontaminated.jsonl"),
        rejects=str(run / "decon-rejects.jsonl"), skipped={"language not selected": 4},
        contamination=[{"eval_source": "vqa_rad", "match": "exact_image", "count": 5},
                       {"eval_source": "vqa_rad", "match": "same_question", "count": 2}]))  # fmt: skip
    return run


def test_rejects_are_counted_under_the_run_that_made_them(tmp_path):
    run = _two_runs(tmp_path)
    files = find_files([run])
    runs = lineage.stage_runs(files)
    groups = lineage.reason_groups(files, runs, run / "instances.tok.jsonl")
    by_source = {g.source: g for g in groups}
    assert by_source["synth-rejects.jsonl"].on_corpus_line is True
    assert dict(by_source["synth-rejects.jsonl"].rejected) == {("synthesize", "image not found"): 2}
    decon = by_source["decon-rejects.jsonl"]
    assert decon.on_corpus_line is False and decon.rejected[("synthesize", "contaminated")] == 7
    assert decon.skipped == {("synthesize", "language not selected"): 4}  # from the file, not counted twice
    assert sum(decon.rejected.values()) == 7  # skips in the rejects file are not rejects
    page, _ = page_of(tmp_path, run)
    curation = page.split('id="curation"')[1].split('id="gallery"')[0]
    decon = curation.split("decon-rejects.jsonl")[0].rsplit("<p>", 1)[1]
    assert "instances.decontaminated.jsonl" in decon and "another run: not the training corpus" in decon
    main = curation.split("synth-rejects.jsonl")[0].rsplit("<p>", 1)[1]
    assert "made the training corpus" in main
    chart_counts = lineage.reason_groups(files, runs, run / "instances.tok.jsonl")
    assert sum(sum(g.rejected.values()) for g in chart_counts if g.on_corpus_line) == 2  # the chart's rows


def test_contamination_table_and_generic_reason_maps(tmp_path):
    page, _ = page_of(tmp_path, _two_runs(tmp_path))
    assert "Contamination (synthesize --exclude)" in page
    table = page.split("Contamination (synthesize --exclude)")[1].split("</table>")[0]
    assert (
        "<th>eval source</th><th>exact image</th><th>near duplicate image</th><th>same question</th>" in table
    )
    assert (
        '<tr><td>vqa_rad</td><td class="n">5</td><td class="n">0</td><td class="n">2</td><td class="n">7</td>'
        in table
    )
    assert lineage.flat_counts({"image not found": 3, "bad": {"a": 1, "b": 2}, "c": {"count": 4}}) == {
        "image not found": 3,
        "bad / a": 1,
        "bad / b": 2,
        "c": 4,
    }


def _summary(tasks: dict[str, dict[str, Any]], missing: list[str]) -> dict[str, Any]:
    return {
        "schema": "medmax-score-summary/1",
        "provenance": {"medmax_cli": "0.test"},
        "macro": {
            "tasks": list(tasks),
            "n_tasks": len(tasks),
            "mean": 0.5,
            "ci95": [0.4, 0.6],
            "missing_tasks": missing,
            "unscored_tasks": [],
            "complete": False,
        },  # fmt: skip
        "tasks": tasks,
    }


def test_coverage_caveat_and_no_interval_for_tiny_tasks(tmp_path):
    tasks = {
        "vqa_rad_closed": {"n": 200, "scored": 200, "mean": 0.7, "ci95": [0.64, 0.76]},
        "slake_closed": {"n": 3, "scored": 3, "mean": 0.0, "ci95": [0.0, 0.0]},
        "pmc_vqa": {"n": 50, "scored": 50, "mean": 0.3, "ci95": [0.2, 0.4]},
        "pathmmu": {"n": 12, "scored": 1, "mean": 1.0, "ci95": [1.0, 1.0]},
    }
    missing = ["vqa_rad_open", "slake_open", "pathvqa_closed", "pathvqa_open", "quiltvqa_closed",
               "quiltvqa_open", "omnimedvqa", "probmed_closed"]  # fmt: skip
    path = js(tmp_path / "run" / "summary.json", _summary(tasks, missing))
    page, _ = page_of(tmp_path, path)
    assert "Macro average over 4 of 12 tasks (missing: vqa_rad_open, slake_open" in page
    assert "[0.000, 0.000]" not in page and "[1.000, 1.000]" not in page
    assert "none: 3 scored items, under 10" in page and "none: 1 scored item, under 10" in page
    assert "[0.640, 0.760]" in page
    assert "No 95% interval for slake_closed, pathmmu" in page


def test_degenerate_predictions_are_flagged(tmp_path):
    options = ["A: liver", "B: lung", "C: heart", "D: kidney"]
    rows = [
        prediction(f"c{i}", "vqa_rad_closed", "yes" if i % 2 else "no", "no", qtype="closed")
        for i in range(10)
    ]
    rows += [
        prediction(f"m{i}", "pmc_vqa", "B", "no", qtype="multiple_choice", options=options) for i in range(6)
    ]
    rows += [prediction(f"o{i}", "pathmmu", "A", ["A", "B", "C"][i % 3], qtype="multiple_choice", options=options)
             for i in range(6)]  # fmt: skip
    path = jsonl(tmp_path / "run" / "predictions.jsonl", rows)
    page, _ = page_of(tmp_path, path)
    warn = page.split("Degenerate predictions")[1].split("</div>")[0]
    assert "vqa_rad_closed: one answer, &#x27;no&#x27;, for 10 of 10 items (100%)" in warn
    assert "the reference answer is that for 5 of them" in warn
    assert "pmc_vqa: 6 of 6 answers are not a letter or one of the options" in warn
    assert "all tasks together: 6 of 22 answers" not in warn  # 6 of 22 wrong form is under half
    assert "pathmmu" not in warn  # varied letters: a real answer distribution
    tasks = checks.answers_by_task(rows[:10])
    assert tasks["vqa_rad_closed"].wrong_form == 0  # "no" is the right form for a yes/no question


def test_prompt_line_breaks_are_kept(tmp_path):
    rows = [
        prediction(
            "p", "vqa_rad_closed", "yes", "yes\nbecause", qtype="closed", question="Line one.\nLine two?"
        )
    ]
    page, _ = page_of(tmp_path, jsonl(tmp_path / "run" / "predictions.jsonl", rows))
    assert '<td class="text">Line one.\nLine two?</td>' in page and "td.text{white-space:pre-wrap}" in page
    assert "yes\nbecause" in page


def test_gallery_shows_each_image_once(tmp_path):
    media = MediaStore(tmp_path / "media")
    refs = [media.put(png(8, 8, colour)) for colour in ("red", "blue")]
    rows = [instance(f"i{i}", refs[i % 2], task=["captioning", "vqa", "interleaved", "report"][i % 4])
            for i in range(8)]  # fmt: skip
    page, _ = page_of(tmp_path, jsonl(tmp_path / "run" / "instances.jsonl", rows), media=media)
    gallery = page.split('id="gallery"')[1].split('id="training"')[0]
    sources = re.findall(r'<img src="(img/[^"]+)"', gallery)
    assert len(sources) == 2 and len(set(sources)) == 2


def test_header_versions_models_settings_and_random_banner(tmp_path):
    run = tmp_path / "run"
    settings = {"model": "models/anole-7b", "adapter": "runs/lora-1", "temperature": 0.0,
                "llm_url": "http://user:pw@host/v1?api_key=SECRET", "judge_api_key": "sk-TOPSECRET"}  # fmt: skip
    jsonl(
        run / "predictions.jsonl",
        [prediction("p", "vqa_rad_closed", "yes", "yes", qtype="closed", settings=settings)],
    )
    js(run / "stats" / "s.json", stats("medmax synthesize", output="x.jsonl"))
    page, result = page_of(tmp_path, run)
    header = page.split('id="run"')[1].split("</section>")[0]
    for package in ("medmax", "torch", "transformers"):
        assert f"{package} " in header.split("Made with")[1].split("</p>")[0]
    assert "models/anole-7b" in header and "runs/lora-1" in header and "temperature" in header
    assert "SECRET" not in page and "pw@" not in page and "judge_api_key" in page
    assert "RANDOM MODEL" not in page and not result["random_model"]
    for where in ("manifest", "prediction", "config"):
        case = tmp_path / where
        if where == "manifest":
            js(
                case / "shards" / "manifest.json",
                {"shards": [], "rows": 0, "settings": {}, "model_random": True},
            )
        elif where == "prediction":
            s = {**settings, "model_random": True}
            jsonl(
                case / "p.jsonl",
                [prediction("p", "vqa_rad_closed", "yes", "yes", qtype="closed", settings=s)],
            )
        else:
            (case / "run").mkdir(parents=True)
            (case / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
            js(case / "run" / "config.json", {"model": "tiny", "model_random": True, "lr": 1e-4})
        page, result = page_of(case, case)
        assert '<div class="banner" id="random-model">RANDOM MODEL' in page and result["random_model"], where
        assert page.index("RANDOM MODEL") < page.index('id="stages"')  # at the top


# --------------------------------------------------------------------------- B: what may be published


def test_credentialed_content_is_left_out_unless_asked(tmp_path):
    media = MediaStore(tmp_path / "media")
    secret_ref = media.put(png(8, 8, "green"))
    open_ref = media.put(png(8, 8, "blue"))
    rows = [instance("open", open_ref, text="An open caption."),
            instance("mimic", secret_ref, text="MIMIC REPORT TEXT", credential=True)]  # fmt: skip
    preds = [prediction(f"q{i}", "vqa_rad_closed", "yes", "SECRET ANSWER", qtype="closed",
                        question="CREDENTIALED QUESTION", credential=True) for i in range(6)]  # fmt: skip
    run = tmp_path / "run"
    jsonl(run / "instances.jsonl", rows)
    jsonl(run / "predictions.jsonl", preds)
    page, result = page_of(tmp_path, run, media=media)
    for text in ("MIMIC REPORT TEXT", "SECRET ANSWER", "CREDENTIALED QUESTION", "DATA-USE WARNING"):
        assert text not in page, text
    copied = {p.name.split(".")[0] for p in (tmp_path / "report" / "img").iterdir()}
    assert secret_ref["sha256"] not in copied and open_ref["sha256"] in copied
    assert "credentialed predictions not shown" in page and result["credentialed_hidden"] >= 7
    assert "1 of 2 instances" in page  # counts stay
    page, _ = page_of(tmp_path, run, media=media, include_credentialed=True)
    assert "MIMIC REPORT TEXT" in page and "CREDENTIALED QUESTION" in page and "DATA-USE WARNING" in page


@pytest.mark.parametrize(
    "ref, why",
    [
        ({"path": "../outside.png"}, "'..' in path refused"),
        ({"path": "/etc/passwd"}, "absolute path refused"),
        ({"path": "ab/x.png", "sha256": "../../evil"}, "sha256 is not 64"),
        ({"path": "ab/x.png", "sha256": "A" * 64}, "sha256 is not 64"),
        ("img.png", "not an object"),
    ],
)
def test_image_references_are_checked(ref, why):
    with pytest.raises(ImageRefError, match=re.escape(why)):
        check_ref(ref)


def test_only_decodable_images_are_copied_under_names_made_here(tmp_path):
    media = MediaStore(tmp_path / "media")
    (tmp_path / "media" / "ab").mkdir(parents=True)
    (tmp_path / "media" / "ab" / "page.png").write_text("<html><script>alert(1)</script></html>")
    (tmp_path / "media" / "ab" / "scan.tif").write_bytes(png(10, 5, fmt="TIFF"))
    images = ReportImages(tmp_path / "report", media)
    assert images.add({"path": "ab/page.png"}, "html named png") is None
    assert "not an image" in images.refused[0]
    tif = images.add({"path": "ab/scan.tif", "sha256": "0" * 64}, "tiff")
    assert tif is not None and tif.src.endswith(".png") and (tif.width, tif.height) == (10, 5)
    data = (tmp_path / "report" / tif.src).read_bytes()
    import hashlib

    assert tif.src == f"img/{hashlib.sha256(data).hexdigest()}.png"  # named by its own bytes, not the record
    assert images.add({"path": "../../etc/passwd"}, "escape") is None
    assert sorted(p.name for p in (tmp_path / "report" / "img").iterdir()) == [tif.src[4:]]


def test_malformed_inputs_become_notes_not_a_failed_report(tmp_path):
    run = tmp_path / "run"
    media = MediaStore(tmp_path / "media")
    good = instance("good", media.put(png(8, 8)))
    bad_types = {**instance("bad", {"path": 5, "width": "x"}), "turns": "not a list", "task": ["x"]}
    (run).mkdir()
    (run / "instances.jsonl").write_bytes(
        orjson.dumps(good) + b"\n{torn line\n[1, 2]\n" + orjson.dumps(bad_types) + b"\n"
    )
    (run / "broken.json").write_text("{not json")
    js(run / "summary.json", {"schema": "medmax-score-summary/1", "tasks": {"t": "x", "u": {"mean": "high"}},
                              "macro": "?"})  # fmt: skip
    js(
        run / "stats.json",
        {"medmax_stats": 1, "stage": "s", "command": "medmax s", "settings": "x", "rejected": [1]},
    )
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": "nan?"}\n{"step": 2, "lo')
    page, result = page_of(tmp_path, run, media=media)
    notes = page.split('id="notes"')[1].split("</section>")[0]
    assert "broken.json: not read (not valid JSON" in notes
    assert "instances.jsonl: 2 line(s) skipped, the first at line 2: not valid JSON" in notes
    assert "metrics.jsonl: 1 line(s) skipped" in notes
    assert result["notes"] >= 3
    for section in ("run", "stages", "curation", "gallery", "training", "evaluation"):
        assert f'<section id="{section}">' in page


def test_labels_never_go_through_mathtext(tmp_path):
    for label in ("$x^2$", r"$\frac{$", r"$\frac{", "cost $5 and $6", "a_b^c"):
        name = plots.bar({label: 3, "other": 1}, tmp_path, "bar.png", title=label)
        assert name == "bar.png"
        name = plots.task_accuracy({label: {"mean": 0.5, "n": 20, "scored": 20, "ci95": [0.4, 0.6]}}, tmp_path,
                                   "acc.png", with_interval=checks.shows_interval)  # fmt: skip
        assert name == "acc.png"
    import matplotlib

    assert matplotlib.rcParams["text.parse_math"] is True  # the switch is local to the charts
    tasks = {r"$\frac{$": {"n": 20, "scored": 20, "mean": 0.5, "ci95": [0.4, 0.6]}}
    page, _ = page_of(tmp_path, js(tmp_path / "run" / "summary.json", _summary(tasks, [])))
    assert r"$\frac{$" in page and "evaluation-0.png" in page and 'id="notes"' not in page


@pytest.mark.parametrize("flag", [True, "true", "yes", 1])
def test_a_credential_flag_of_any_truthy_spelling_hides_the_content(tmp_path, flag):
    media = MediaStore(tmp_path / "media")
    row = {**instance("x", media.put(png(8, 8)), text="MIMIC REPORT TEXT"), "credential": flag}
    page, result = page_of(tmp_path, jsonl(tmp_path / "run" / "instances.jsonl", [row]), media=media)
    assert "MIMIC REPORT TEXT" not in page and result["credentialed_hidden"] == 1
    assert "1 of 1 instances (100.0%)" in page


def test_many_long_task_names_keep_the_chart_bounded(tmp_path):
    tasks = {f"{'t' * 70}{i}": {"n": 20, "scored": 20, "mean": 0.5, "ci95": [0.4, 0.6]} for i in range(500)}
    page, _ = page_of(tmp_path, js(tmp_path / "run" / "summary.json", _summary(tasks, [])))
    assert "The chart shows the first 40 of 500 tasks." in page
    with Image.open(tmp_path / "report" / "evaluation-0.png") as image:
        assert image.height < 2000 and image.width < 1000


def test_one_answer_to_everything_is_flagged_even_with_few_items_per_task(tmp_path):
    """12 items over 6 tasks (2 each, under the per-task minimum): 'no' to all, letters included."""
    options = ["A: CT", "B: MRI", "C: X-ray", "D: PET"]
    rows = []
    for task in ["vqa_rad_closed", "slake_closed", "pathvqa_closed", "pmc_vqa", "omnimedvqa", "pathmmu"]:
        mc = task in ("pmc_vqa", "omnimedvqa", "pathmmu")
        for j in range(2):
            rows.append(prediction(f"{task}{j}", task, "B" if mc else "yes", "No.", qtype="multiple_choice" if mc else
                                   "closed", options=options if mc else None))  # fmt: skip
    page, _ = page_of(tmp_path, jsonl(tmp_path / "run" / "predictions.jsonl", rows))
    warn = page.split("Degenerate predictions")[1].split("</div>")[0]
    assert "all tasks together: one answer, &#x27;no&#x27;, for 12 of 12 items (100%)" in warn
    assert "all tasks together: 6 of 12 answers are not the form their questions ask for" in warn
    assert "pmc_vqa:" not in warn  # 2 items: too few to say anything about one task


def test_task_coverage_is_shown_beside_the_mean(tmp_path):
    tasks = {"vqa_rad_open": {"n": 40, "scored": 30, "unscored": 10, "mean": 0.5, "mean_all_items": 0.375,
                              "ci95": [0.3, 0.7]}}  # fmt: skip
    page, _ = page_of(tmp_path, js(tmp_path / "run" / "summary.json", _summary(tasks, [])))
    assert "<td>75% (unscored 10)</td>" in page and '<td class="n">0.375</td>' in page


def test_a_folder_of_only_unreadable_files_is_a_page_of_notes(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"schema": "medmax-score-summary/1", "tasks": ')
    (tmp_path / "run" / "scores.jsonl").write_text("not json at all\n")
    page, result = page_of(tmp_path, tmp_path / "run")
    assert "summary.json: not read (not valid JSON" in page and "scores.jsonl: not read" in page
    assert result["notes"] == 2


def test_no_model_chosen_means_originals_only(tmp_path, monkeypatch):
    """Without --model, MEDMAX_MODEL or medmax.toml the report decodes nothing (no random model's noise)."""
    from typer.testing import CliRunner

    from medmax_cli.cli import app

    media = MediaStore(tmp_path / "media")
    ref = {**media.put(png(8, 8)), "tokens": [1, 2, 3]}
    run = jsonl(tmp_path / "run" / "instances.jsonl", [instance("a", ref)]).parent
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDMAX_MODEL", raising=False)
    env = {"MEDMAX_MEDIA": str(tmp_path / "media"), "MEDMAX_STATS_DIR": ""}
    result = CliRunner().invoke(app, ["report", str(run), "-o", str(tmp_path / "r")], env=env)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "index.html").read_text()
    assert "no reconstruction: no model chosen (--model, MEDMAX_MODEL or medmax.toml)" in page


def test_an_over_long_line_and_a_name_not_in_utf8_are_notes(tmp_path, monkeypatch):
    import medmax_cli.report.collect as collect

    monkeypatch.setattr(collect, "MAX_LINE_BYTES", 1024)
    run = tmp_path / "run"
    run.mkdir()
    media = MediaStore(tmp_path / "media")
    good = orjson.dumps(instance("good", media.put(png(8, 8)))) + b"\n"
    (run / "instances.jsonl").write_bytes(
        good + b'{"id": "' + b"x" * 5000 + b'"}\n' + good.replace(b"good", b"also")
    )
    (run / os.fsdecode(b"bad-\xff-name.json")).write_bytes(b"{not json")
    page, result = page_of(tmp_path, run, media=media)
    assert "instances.jsonl: 1 line(s) skipped, the first at line 2: not valid JSON (over 1024 bytes)" in page
    assert "bad-?-name.json: not read" in page or "bad-\ufffd-name.json: not read" in page
    assert "2 instances" in page


@pytest.mark.parametrize(
    "info, random", [({"format": "medmax-tiny"}, True), ({"random_weights": False}, False)]
)
def test_a_random_decoder_for_the_reconstructions_is_named_in_the_banner(tmp_path, info, random):
    model = tmp_path / "model"
    js(model / "medmax_model.json", info)
    media = MediaStore(tmp_path / "media")
    run = jsonl(tmp_path / "run" / "instances.jsonl", [instance("a", media.put(png(8, 8)))]).parent
    build_report([run], tmp_path / "r", media=media, model_dir=model)
    page = (tmp_path / "r" / "index.html").read_text()
    assert ("RANDOM MODEL" in page) is random
    assert "this report&#x27;s VQ reconstructions" in page
