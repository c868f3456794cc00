"""`medmax report`: one static HTML page (and its PNGs and images) from what a run left.

The page has no script and loads nothing from the network: images and charts sit beside it
in the report folder (`img/`, `*.png`) under relative names, so the folder can be copied,
zipped or served by any static server. Sections: stages (the --stats files), curation,
gallery (each image next to its VQ reconstruction, decoded with the model's own decoder),
training, evaluation. A section with nothing to show says what input it would need.

What the page may say and show (issue 24 class 3, issue 25 item 3):
- content of `credential: true` records (text, images, answers) only with `--include-credentialed`,
  and then under a data-use warning; counts are always shown;
- images only as copies that decode (report/images.py), each <img> with its natural aspect ratio;
- every figure with its caveats: coverage, no interval where n is too small, degenerate answers,
  rejects under the run that made them (report/lineage.py), a RANDOM MODEL banner
  (report/provenance.py);
- an input that cannot be read, or a section that fails on it, is a note on the page, not a failed report.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from medmax_cli.media import MediaStore
from medmax_cli.report import checks, lineage, plots, provenance
from medmax_cli.report.collect import (
    RunFiles,
    curation_stats,
    find_files,
    is_credentialed,
    iter_jsonl,
    read_json,
    read_jsonl,
    training_corpus,
)
from medmax_cli.report.images import Copied, ReportImages

PAGE = "index.html"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1rem 2rem;color:#1d2430;background:#fff}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #dde3ea;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f6f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.charts img{max-width:100%;height:auto;border:1px solid #eef1f4}
.card{border:1px solid #dde3ea;border-radius:6px;padding:.6rem .8rem;margin:.8rem 0}
.pair{display:flex;gap:.8rem;flex-wrap:wrap;align-items:flex-start}.pair figure{margin:0}
.pair img{background:#f3f6f9;border:1px solid #dde3ea;image-rendering:pixelated}
figcaption{font-size:.8rem;color:#5a6473}.turn{margin:.25rem 0;white-space:pre-wrap}
td.text{white-space:pre-wrap}
.role{font-weight:600;color:#4a78b5}.muted{color:#5a6473}.bad{color:#b3261e}.ok{color:#1b7a3a}
.banner{border:3px solid #b3261e;background:#fdecea;color:#b3261e;padding:.6rem 1rem;font-weight:700;
font-size:1.2rem;margin:.8rem 0}.warn{border:2px solid #b3261e;padding:.4rem .8rem;margin:.6rem 0}
details{margin:.3rem 0}summary{cursor:pointer}
"""
MAX_NOTES = 200  # notes listed on the page (the count says how many more)
THUMB = 192  # the longer side of a gallery image on the page, in CSS pixels
DATA_USE_WARNING = (
    "This report shows content of credentialed sources (records with credential: true, e.g. "
    "PhysioNet's MIMIC-CXR). Their data-use agreements forbid sharing it: do not publish, upload or "
    "send this folder to anyone not covered by the same agreement."
)


@dataclass
class ReportInputs:
    files: RunFiles
    media: MediaStore
    model_dir: Path | None = None  # for VQ reconstructions; None: show originals only
    gallery: int = 8
    device: str = "cpu"
    include_credentialed: bool = False
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    hidden_credentialed: int = 0  # items whose content was left out for their credential
    judge_errors: int = 0  # items of the score summaries with no verdict: the judge request failed


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(name: str | None, alt: str, out: Path | None = None) -> str:
    """A chart PNG of the report folder, with its natural width and height (the page keeps the ratio)."""
    if not name:
        return ""
    size = ""
    if out is not None:
        from PIL import Image

        with Image.open(out / name) as image:
            size = f' width="{image.width}" height="{image.height}"'
    return f'<img src="{esc(name)}" alt="{esc(alt)}"{size}>'


def _thumb(copied: Copied | None, alt: str) -> str:
    """An image scaled to fit THUMB x THUMB at its natural aspect ratio (up or down)."""
    if copied is None:
        return ""
    scale = THUMB / max(copied.width, copied.height)
    width, height = max(1, round(copied.width * scale)), max(1, round(copied.height * scale))
    return f'<img src="{esc(copied.src)}" alt="{esc(alt)}" width="{width}" height="{height}">'


def _is_credentialed(*records: Any) -> bool:
    return any(is_credentialed(r) for r in records)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def _nothing(what: str) -> str:
    return f'<p class="muted">Nothing to show: {esc(what)}</p>'


# --------------------------------------------------------------------------- sections


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def stages_section(files: RunFiles, runs: list[lineage.StageRun]) -> str:
    rows = []
    for run in runs:
        data = run.data
        counts = ", ".join(f"{k} {v}" for k, v in lineage.flat_counts(data.get("counts")).items())
        skipped = sum(lineage.flat_counts(data.get("skipped")).values())
        rate = data.get("reject_rate")
        rows.append(
            [
                run.command,
                data.get("shard") or data.get("shards") or "",
                data.get("status"),
                counts,
                sum(lineage.flat_counts(data.get("rejected")).values()),
                skipped,
                "" if not isinstance(rate, (int, float)) else f"{100 * rate:.1f}%",
                _number(data.get("seconds", 0), ".1f"),
                run.stats.name,
            ]
        )
    packed = _manifests_html(files)
    if not rows:
        return _section(
            "stages", "Stages", _nothing("no --stats files (run each stage with --stats FILE).") + packed
        )
    table = _table(
        ["command", "shard", "status", "counts", "rejected", "skipped", "reject rate", "seconds", "file"],
        rows,
        {4, 5, 6, 7},
    )
    return _section("stages", "Stages", table + packed)


def _manifests_html(files: RunFiles) -> str:
    """One row per packed folder (pack's manifest.json): what training will read."""
    rows = []
    for path in files.manifests:
        m = read_json(path, files.notes)
        settings = m.get("settings") if isinstance(m.get("settings"), dict) else {}
        rows.append(
            [
                path.parent.name,
                m.get("samples"),
                m.get("rows"),
                settings.get("seq_len", ""),
                len(m.get("shards")) if isinstance(m.get("shards"), list) else "",
                "" if not isinstance(m.get("efficiency"), (int, float)) else f"{100 * m['efficiency']:.1f}%",
                f"{m.get('supervised_tokens', '')}/{m.get('tokens', '')}",
                m.get("truncated", ""),
                sum(lineage.flat_counts(m.get("rejected")).values()),
            ]
        )
    if not rows:
        return ""
    header = [
        "packed folder",
        "samples",
        "rows",
        "seq len",
        "shards",
        "fill",
        "supervised/tokens",
        "truncated",
        "rejected",
    ]
    return "<h3>Packed shards</h3>" + _table(header, rows, {1, 2, 3, 4, 5, 7, 8})


def curation_section(inputs: ReportInputs, out: Path, runs: list[lineage.StageRun]) -> str:
    files = inputs.files
    corpus = training_corpus(files)
    parts = []
    if corpus is None:
        parts.append(_nothing("no task instances (output of `medmax synthesize` or `tokenize-images`)."))
    else:
        cur = curation_stats(iter_jsonl(corpus, files.notes))
        parts.append(
            f"<p>Corpus <code>{esc(corpus.name)}</code>: {cur.instances} instances, {len(cur.image_sides)} distinct "
            f"images. Other instance files: {esc(', '.join(p.name for p in files.instances if p != corpus) or 'none')}.</p>"
        )
        total = max(1, cur.instances)
        credential = cur.credential.get(True, 0)
        parts.append(
            f"<p>Credential share: {credential} of {cur.instances} instances ({100 * credential / total:.1f}%) come from "
            "sources that need a credentialed data-use agreement.</p>"
        )
        charts = [
            _img(
                plots.bar(cur.tasks, out, "tasks.png", title="task mix", xlabel="instances"), "task mix", out
            ),
            _img(
                plots.bar(
                    Counter({"credentialed": credential, "open": cur.instances - credential}),
                    out,
                    "credential.png",
                    title="credential share",
                    xlabel="instances",
                ),
                "credential share",
                out,
            ),
            _img(
                plots.histogram(
                    cur.caption_words,
                    out,
                    "caption_words.png",
                    title="caption length",
                    xlabel="words per caption",
                ),
                "caption length histogram",
                out,
            ),
            _img(plots.image_sizes(cur.image_sides, out, "image_sizes.png"), "image sizes", out),
        ]
        parts.append('<div class="charts">' + "".join(c for c in charts if c) + "</div>")
        sources = sorted({s for s, _ in cur.source_license})
        licences = sorted({lic for _, lic in cur.source_license})
        rows = [[s] + [cur.source_license.get((s, lic), 0) for lic in licences] for s in sources]
        parts.append("<h3>Sources x licences (instances)</h3>")
        parts.append(_table(["source"] + licences, rows, set(range(1, len(licences) + 1))))
    parts.append(_reasons_html(files, runs, corpus, out))
    parts.append(_contamination_html(runs))
    return _section("curation", "Curation", "".join(parts))


def _reasons_html(files: RunFiles, runs: list[lineage.StageRun], corpus: Path | None, out: Path) -> str:
    """Rejects and skips under the run that made them; the chart holds the corpus line's only."""
    groups = lineage.reason_groups(files, runs, corpus)
    parts = ["<h3>Reject reasons</h3>"]
    if not groups:
        return "".join(parts) + _nothing("no rejects files and no rejects or skips in the stats.")
    on_line = Counter()
    for group in groups:
        if group.on_corpus_line:
            on_line.update({f"{stage}: {reason}": n for (stage, reason), n in group.rejected.items()})
    if on_line:
        chart = plots.bar(
            on_line, out, "rejects.png", title="rejected on the way to the training corpus", xlabel="records"
        )
        parts.append(f'<div class="charts">{_img(chart, "reject reasons of the corpus", out)}</div>')
    headings = {
        True: "made the training corpus (or read it on the way to training)",
        False: "another run: not the training corpus's",
        None: "run not linked to the training corpus" if corpus is not None else "no training corpus found",
    }
    for group in groups:
        rows = [[s, r, "rejected", n] for (s, r), n in group.rejected.most_common()]
        rows += [[s, r, "skipped (a filter chosen)", n] for (s, r), n in group.skipped.most_common()]
        parts.append(
            f"<p><b>{esc(group.label)}</b>: {esc(headings[group.on_corpus_line])}; counts from "
            f"<code>{esc(group.source)}</code>.</p>"
        )
        parts.append(_table(["stage", "reason", "kind", "records"], rows, {3}))
    return "".join(parts)


MATCH_KINDS = ("exact_image", "near_duplicate_image", "same_question")


def _contamination_html(runs: list[lineage.StageRun]) -> str:
    """synthesize's contamination table, per run: eval source x match kind, instances dropped."""
    rows = lineage.contamination(runs)
    if not rows:
        return ""
    parts = ["<h3>Contamination (synthesize --exclude)</h3>"]
    for run in dict.fromkeys(r.run for r in rows):
        mine = [r for r in rows if r.run == run]
        kinds = list(MATCH_KINDS) + sorted({r.match for r in mine} - set(MATCH_KINDS))
        counts: dict[str, Counter] = {}
        for r in mine:
            counts.setdefault(r.eval_source, Counter())[r.match] += r.count
        table = [
            [source] + [c.get(k, 0) for k in kinds] + [sum(c.values())]
            for source, c in sorted(counts.items())
        ]
        parts.append(f"<p><b>{esc(run)}</b></p>")
        parts.append(
            _table(
                ["eval source"] + [k.replace("_", " ") for k in kinds] + ["total"],
                table,
                set(range(1, len(kinds) + 2)),
            )
        )
    return "".join(parts)


def _turns_html(record: dict[str, Any]) -> str:
    """The turns' text with its line breaks (the .turn style keeps them), images as placeholders."""
    out = []
    turns = record.get("turns") if isinstance(record.get("turns"), list) else []
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        pieces = []
        content = turn.get("content") if isinstance(turn.get("content"), list) else []
        for part in content:
            if not isinstance(part, dict):
                continue
            if "text" in part:
                text = str(part["text"])
                pieces.append(esc(text if len(text) < 600 else text[:600] + " ..."))
            elif "image" in part:
                pieces.append(f"[image {esc(part['image'])}]")
        out.append(
            f'<div class="turn"><span class="role">{esc(turn.get("role"))}:</span> {" ".join(pieces)}</div>'
        )
    return "".join(out)


def _image_keys(record: dict[str, Any]) -> list[str]:
    images = record.get("images") if isinstance(record.get("images"), list) else []
    return [str(i.get("sha256") or i.get("path")) for i in images if isinstance(i, dict)]


def _pick_samples(
    records: Iterable[dict[str, Any]], n: int, *, allowed: Callable[[dict[str, Any]], bool], scan: int = 20000
) -> list[dict[str, Any]]:
    """One instance with images per task first (a tour of the corpus), then others in file order;
    no image shown twice (many instances share a figure: caption, VQA and interleaved of one image).

    Looks at the first `scan` instances with images only, so a huge corpus is not read twice."""
    first_of_task: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    seen_tasks: set[str] = set()
    shown: set[str] = set()
    for record in islice((r for r in records if _image_keys(r)), scan):
        keys = _image_keys(record)
        if not allowed(record) or shown.intersection(keys):
            continue
        if str(record.get("task")) not in seen_tasks:
            seen_tasks.add(str(record.get("task")))
            first_of_task.append(record)
        elif len(others) < n:
            others.append(record)
        else:
            continue
        shown.update(keys)
        if len(first_of_task) >= n:
            break
    return (first_of_task + others)[:n]


def _reconstruct(records: list[dict[str, Any]], inputs: ReportInputs) -> dict[str, str]:
    """id -> reason where no reconstruction could be made; fills images[i].decoded in place."""
    problems: dict[str, str] = {}
    if inputs.model_dir is None:
        return {str(r.get("id")): "no model chosen (--model, MEDMAX_MODEL or medmax.toml)" for r in records}
    if not any(isinstance(ref, dict) and ref.get("tokens") for r in records for ref in r.get("images") or []):
        return {str(r.get("id")): "images have no VQ tokens (run tokenize-images)" for r in records}
    from medmax_cli.records import RecordError
    from medmax_cli.streams import ErrorPolicy
    from medmax_cli.vision.detokenize import detokenize

    class _Collect(ErrorPolicy):
        def reject(self, error: Exception, raw: Any = None, **kw: Any) -> None:  # noqa: ARG002
            rid = raw.get("id") if isinstance(raw, dict) else None
            problems[str(rid)] = error.reason if isinstance(error, RecordError) else str(error)

    policy = _Collect("skip", None, stage="report")
    for _ in detokenize(
        records, model_dir=inputs.model_dir, media=inputs.media, policy=policy, device=inputs.device
    ):
        pass
    return problems


def gallery_section(inputs: ReportInputs, out: Path, images: ReportImages) -> str:
    corpus = training_corpus(inputs.files)
    if corpus is None or inputs.gallery <= 0:
        return _section("gallery", "Gallery", _nothing("no task instances with images."))
    hidden = 0

    def allowed(record: dict[str, Any]) -> bool:
        nonlocal hidden
        if inputs.include_credentialed or not _is_credentialed(record):
            return True
        hidden += 1
        return False

    samples = _pick_samples(iter_jsonl(corpus, inputs.files.notes), inputs.gallery, allowed=allowed)
    note = (
        f'<p class="muted">{hidden} credentialed instances passed over (--include-credentialed shows them, '
        "under their data-use agreement).</p>"
        if hidden
        else ""
    )
    inputs.hidden_credentialed += hidden
    if not samples:
        return _section(
            "gallery", "Gallery", _nothing(f"no instance in {corpus.name} has images to show.") + note
        )
    try:
        problems = _reconstruct(samples, inputs)
    except Exception as exc:  # noqa: BLE001 - a decoder that will not load leaves the originals
        problems = {str(r.get("id")): f"decoder failed: {exc}" for r in samples}
        inputs.notes.append(f"VQ reconstructions: {exc}")
    cards = []
    for record in samples:
        figures = []
        for index, ref in enumerate(record.get("images") or []):
            original = images.add(ref, f"{record.get('id')} image {index}")
            size = f"{esc(ref.get('width'))}x{esc(ref.get('height'))}" if isinstance(ref, dict) else "?"
            pair = [
                f"<figure>{_thumb(original, 'original') or '<p class=bad>not shown: see the notes</p>'}"
                f"<figcaption>image {index}: original {size}</figcaption></figure>"
            ]
            decoded = ref.get("decoded") if isinstance(ref, dict) else None
            recon = images.add(decoded, f"{record.get('id')} decoded {index}") if decoded else None
            if recon:
                pair.append(
                    f"<figure>{_thumb(recon, 'VQ reconstruction')}<figcaption>VQ reconstruction "
                    f"({len(tokens) if isinstance(tokens := ref.get('tokens'), list) else '?'} tokens)"
                    "</figcaption></figure>"
                )
            else:
                why = problems.get(str(record.get("id")), "no tokens")
                pair.append(f'<figure><p class="muted">no reconstruction: {esc(why)}</p></figure>')
            figures.append('<div class="pair">' + "".join(pair) + "</div>")
        cards.append(
            f'<div class="card"><div><b>{esc(record.get("task"))}</b> <code>{esc(record.get("id"))}</code> '
            f'<span class="muted">{esc(record.get("source"))}, {esc(record.get("license"))}</span></div>'
            f"{''.join(figures)}{_turns_html(record)}</div>"
        )
    intro = (
        f"<p>{len(samples)} instances from <code>{esc(corpus.name)}</code>, each with images not shown in another "
        "card; each image beside its reconstruction from its VQ tokens (what the model is trained on).</p>"
    )
    return _section("gallery", "Gallery", intro + note + "".join(cards))


def training_section(files: RunFiles, out: Path) -> str:
    if not files.runs:
        return _section(
            "training", "Training", _nothing("no run folder with metrics.jsonl (`medmax finetune -o RUN`).")
        )
    parts = []
    for i, run in enumerate(files.runs):
        rows = list(iter_jsonl(run / "metrics.jsonl", files.notes))
        chart = plots.training_curves(rows, out, f"training-{i}.png")
        parts.append(f"<h3>{esc(run.name)}</h3>")
        losses = [r for r in rows if isinstance(r.get("loss"), (int, float))]
        if losses:
            parts.append(
                f"<p>{len(rows)} logged steps, last step {esc(rows[-1].get('step'))}; loss "
                f"{losses[0]['loss']:.3f} -> {losses[-1]['loss']:.3f}.</p>"
            )
        parts.append(f'<div class="charts">{_img(chart, f"training curves of {run.name}", out)}</div>')
    return _section("training", "Training", "".join(parts))


def _summary_html(path: Path, index: int, inputs: ReportInputs, out: Path) -> str:
    summary = read_json(path, inputs.files.notes)
    tasks = summary.get("tasks") if isinstance(summary.get("tasks"), dict) else {}
    tasks = {str(k): v for k, v in tasks.items() if isinstance(v, dict)}
    chart = plots.task_accuracy(tasks, out, f"evaluation-{index}.png", with_interval=checks.shows_interval)
    rows = []
    for name, t in tasks.items():
        n, scored = t.get("n"), t.get("scored")
        coverage = (
            f"{100 * scored / n:.0f}%" if isinstance(n, int) and n > 0 and isinstance(scored, int) else ""
        )
        unscored = ", ".join(
            f"{k} {t[k]}"
            for k in ("missing", "unscored", "judge_error", "judge_failed", "dropped", "unparsed", "rejected")
            if isinstance(t.get(k), int) and t[k]
        )
        rows.append(
            [
                name,
                n,
                scored,
                coverage + (f" ({unscored})" if unscored else ""),
                checks.mean_text(t, "mean"),
                checks.mean_text(t, "mean_all_items"),
                checks.interval_text(t),
            ]
        )
    macro = summary.get("macro") if isinstance(summary.get("macro"), dict) else {}
    parts = [f"<h3>{esc(path.name)}</h3>"]
    failed, per_task = checks.judge_errors(summary)
    inputs.judge_errors += failed
    if failed:
        parts.append(
            f'<div class="banner" id="judge-errors-{index}">{failed} item{"s have" if failed != 1 else " has"} '
            "no verdict because the judge failed; rerun <code>medmax score</code> to ask them again; "
            "the averages are incomplete.<br>"
            + esc("Per task: " + ", ".join(f"{name} {count}" for name, count in per_task.items()))
            + "</div>"
        )
    if isinstance(macro.get("mean"), (int, float)):
        parts.append(f"<p>{esc(checks.coverage_caveat(macro))}: {macro['mean']:.3f}.</p>")
    elif macro:
        parts.append(f"<p>{esc(checks.coverage_caveat(macro))}: no average (nothing scored).</p>")
    small = [n for n, t in tasks.items() if not checks.shows_interval(t)]
    if small:
        parts.append(
            f'<p class="muted">No 95% interval for {esc(", ".join(small))}: under {checks.MIN_CI_N} scored items '
            "a bootstrap interval collapses or spans everything, so none is drawn.</p>"
        )
    if len(tasks) > plots.MAX_BARS:
        parts.append(
            f'<p class="muted">The chart shows the first {plots.MAX_BARS} of {len(tasks)} tasks.</p>'
        )
    parts.append(f'<div class="charts">{_img(chart, "per-task accuracy", out)}</div>')
    parts.append(
        _table(
            ["task", "n", "scored", "coverage", "mean (scored)", "mean (all items, unscored as 0)", "95% CI"],
            rows,
            {1, 2, 4, 5},
        )
    )
    return "".join(parts)


def evaluation_section(inputs: ReportInputs, out: Path, images: ReportImages, limit: int = 50) -> str:
    files = inputs.files
    parts = []
    for i, path in enumerate(files.summaries):
        try:
            parts.append(_summary_html(path, i, inputs, out))
        except Exception as exc:  # noqa: BLE001 - one bad summary is a note, the rest still shows
            files.note(f"{path}: not shown ({type(exc).__name__}: {exc})")
    warnings = []
    for path in files.predictions:
        answers = checks.answers_by_task(iter_jsonl(path, files.notes))
        warnings += [
            f"{path.name}: {w}"
            for w in checks.degenerate_warnings(answers, show_text=inputs.include_credentialed)
        ]
    if warnings:
        parts.insert(
            0,
            '<div class="warn"><p class="bad"><b>Degenerate predictions</b>: the scores below do not measure a '
            "model's knowledge where one answer covers most items or the answers have the wrong form.</p><ul>"
            + "".join(f"<li>{esc(w)}</li>" for w in warnings)
            + "</ul></div>",
        )
    scores: dict[str, dict[str, Any]] = {}
    for path in files.scores:
        for line in iter_jsonl(path, files.notes):
            scores.setdefault(str(line.get("id")), line)
    items = []
    hidden = 0
    for path in files.predictions:
        for record in read_jsonl(path, limit=limit, notes=files.notes):
            score = scores.get(str(record.get("id")), {})
            if not inputs.include_credentialed and _is_credentialed(record, score):
                hidden += 1
                continue
            items.append(_prediction_row(record, score, images))
    inputs.hidden_credentialed += hidden
    if items:
        parts.append("<h3>Predictions</h3>")
        if hidden:
            parts.append(
                f'<p class="muted">{hidden} credentialed predictions not shown (--include-credentialed shows them, '
                "under their data-use agreement).</p>"
            )
        parts.append(
            "<table><thead><tr><th>id, task</th><th>prompt</th><th>prediction</th><th>reference</th><th>score</th>"
            f"</tr></thead><tbody>{''.join(items)}</tbody></table>"
        )
    elif hidden:
        parts.append(
            f'<p class="muted">{hidden} credentialed predictions not shown (--include-credentialed).</p>'
        )
    if not parts:
        return _section(
            "evaluation",
            "Evaluation",
            _nothing("no score summary (`medmax score --summary`) or predictions."),
        )
    return _section("evaluation", "Evaluation", "".join(parts))


def _prediction_row(record: dict[str, Any], score: dict[str, Any], images: ReportImages) -> str:
    generated = []
    refs = record.get("images") if isinstance(record.get("images"), list) else []
    parts = record.get("prediction") if isinstance(record.get("prediction"), list) else []
    for part in parts:
        if isinstance(part, dict) and "image" in part:
            index = part["image"]
            ref = refs[index] if isinstance(index, int) and 0 <= index < len(refs) else None
            copied = images.add(ref, f"{record.get('id')} generated image")
            generated.append(_thumb(copied, "generated image") if copied else "(not shown: see the notes)")
    turns = record.get("turns") if isinstance(record.get("turns"), list) else []
    question = "\n".join(
        str(p.get("text", ""))
        for t in turns
        if isinstance(t, dict) and t.get("role") == "user"
        for p in (t.get("content") if isinstance(t.get("content"), list) else [])
        if isinstance(p, dict) and "text" in p
    )
    status = score.get("status", "")
    value = score.get("score")
    return (
        "<tr>"
        f"<td><code>{esc(record.get('id'))}</code><br>{esc(record.get('task'))}</td>"
        f'<td class="text">{esc(question[:300])}</td>'
        f'<td class="text">{esc(checks.prediction_text(record)[:300])}{"".join(generated)}</td>'
        f'<td class="text">{esc(score.get("gold", record.get("answer", "")))}</td>'
        f'<td class="n">{"" if value is None else esc(value)} <span class="muted">{esc(status)}</span></td>'
        "</tr>"
    )


# --------------------------------------------------------------------------- the page


def header_html(prov: provenance.Provenance, inputs: ReportInputs) -> str:
    """Versions, models and adapters, each stage's settings, and the banners that must be seen first."""
    parts = []
    if prov.random_in:
        parts.append(
            '<div class="banner" id="random-model">RANDOM MODEL: '
            f"{len(prov.random_in)} input(s) say they came from a randomly initialised model "
            "(model_random: true). Its outputs, reconstructions and scores are noise, not results.<br>"
            + "".join(f"<code>{esc(r)}</code> " for r in prov.random_in)
            + "</div>"
        )
    if inputs.include_credentialed:
        parts.append(f'<div class="banner" id="data-use">DATA-USE WARNING: {esc(DATA_USE_WARNING)}</div>')
    versions = ", ".join(f"{k} {v}" for k, v in prov.versions.items())
    recorded = "; ".join(
        f"{v} ({', '.join(sorted(w)) if len(w) <= 3 else f'{len(w)} files'})"
        for v, w in sorted(prov.recorded_versions.items())
    )
    parts.append(
        f'<p class="muted">Made with {esc(versions)}.'
        + (f" medmax versions the inputs recorded: {esc(recorded)}." if recorded else "")
        + "</p>"
    )
    if prov.models:
        parts.append("<h3>Models</h3>")
        parts.append(
            _table(
                ["used by", "model", "adapter"],
                [[w, m or "(not recorded)", a or "none"] for w, m, a in prov.models],
            )
        )
    else:
        parts.append('<p class="muted">No input records a model.</p>')
    if prov.settings:
        blocks = "".join(
            f"<details><summary>{esc(stage)}</summary>{_table(['setting', 'value'], provenance.settings_rows(settings))}</details>"
            for stage, settings in prov.settings
        )
        parts.append(f"<h3>Settings of each stage</h3>{blocks}")
    return '<section id="run"><h2>Run</h2>' + "".join(parts) + "</section>"


def _guarded(name: str, notes: list[str], build: Callable[[], str], anchor: str, title: str) -> str:
    """A section, or a note saying why it could not be made: one bad input never fails the report."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - the page says what failed and where
        notes.append(f"{name} section not made: {type(exc).__name__}: {exc}")
        return _section(anchor, title, f'<p class="bad">Not made: {esc(type(exc).__name__)}: {esc(exc)}</p>')


def build_report(
    paths: list[Path],
    out: Path,
    *,
    media: MediaStore,
    model_dir: Path | None,
    gallery: int = 8,
    device: str = "cpu",
    include_credentialed: bool = False,
) -> dict[str, Any]:
    """Write OUT/index.html with its charts and images; returns what went into it."""
    files = find_files(paths)
    if files.empty() and not files.notes:  # only unreadable files: a page of notes says which and why
        raise FileNotFoundError(f"nothing medmax wrote was found in {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    inputs = ReportInputs(
        files=files,
        media=media,
        model_dir=model_dir,
        gallery=gallery,
        device=device,
        include_credentialed=include_credentialed,
    )
    images = ReportImages(out, media)
    runs = lineage.stage_runs(files)
    notes = inputs.notes
    sections = [
        _guarded("stages", notes, lambda: stages_section(files, runs), "stages", "Stages"),
        _guarded("curation", notes, lambda: curation_section(inputs, out, runs), "curation", "Curation"),
        _guarded("gallery", notes, lambda: gallery_section(inputs, out, images), "gallery", "Gallery"),
        _guarded("training", notes, lambda: training_section(files, out), "training", "Training"),
        _guarded(
            "evaluation", notes, lambda: evaluation_section(inputs, out, images), "evaluation", "Evaluation"
        ),
    ]
    try:
        header = header_html(provenance.collect(files, runs, model_dir), inputs)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"run header not made: {type(exc).__name__}: {exc}")
        header = ""
    all_notes = files.notes + notes + [f"image not shown: {r}" for r in images.refused]
    inputs_list = "".join(f"<li><code>{esc(p)}</code></li>" for p in paths)
    more = f"<li>... and {len(all_notes) - MAX_NOTES} more</li>" if len(all_notes) > MAX_NOTES else ""
    notes_html = (
        '<section id="notes"><h2>Notes: inputs not (fully) used</h2><ul>'
        + "".join(f'<li class="bad">{esc(n)}</li>' for n in all_notes[:MAX_NOTES])
        + more
        + "</ul></section>"
        if all_notes
        else ""
    )
    nav = " | ".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("run", "Run"),
            ("stages", "Stages"),
            ("curation", "Curation"),
            ("gallery", "Gallery"),
            ("training", "Training"),
            ("evaluation", "Evaluation"),
        )
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>medmax report</title><style>{CSS}</style></head><body>"
        f'<h1>medmax report</h1><p class="muted">From:</p><ul>{inputs_list}</ul><nav>{nav}</nav>'
        + header
        + notes_html
        + "".join(sections)
        + "</body></html>\n"
    )
    tmp = out / f".{PAGE}.tmp"
    tmp.write_text(page, encoding="utf-8", errors="replace")  # a file name not in UTF-8 is a "?", not a crash
    tmp.replace(out / PAGE)
    return {
        "page": str(out / PAGE),
        "instances_files": len(files.instances),
        "stats_files": len(files.stats),
        "runs": len(files.runs),
        "summaries": len(files.summaries),
        "predictions_files": len(files.predictions),
        "images": len(list((out / "img").iterdir())),
        "notes": len(all_notes),
        "random_model": "RANDOM MODEL" in header,
        "credentialed_hidden": inputs.hidden_credentialed,
        "judge_errors": inputs.judge_errors,
    }
