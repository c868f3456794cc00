"""`medmax report`: one static HTML page (and its PNGs and images) from what a run left.

The page has no script and loads nothing from the network: images and charts sit beside it
in the report folder (`img/`, `*.png`) under relative names, so the folder can be copied,
zipped or served by any static server. Sections: stages (the --stats files), curation,
gallery (each image next to its VQ reconstruction, decoded with the model's own decoder),
training, evaluation. A section with nothing to show says what input it would need.
"""

from __future__ import annotations

import html
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from medmax_cli.media import MediaStore
from medmax_cli.report import plots
from medmax_cli.report.collect import (
    RunFiles,
    curation_stats,
    find_files,
    iter_jsonl,
    read_jsonl,
    reject_reasons,
    training_corpus,
)

PAGE = "index.html"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1rem 2rem;color:#1d2430;background:#fff}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #dde3ea;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f6f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.charts img{max-width:100%;border:1px solid #eef1f4}
.card{border:1px solid #dde3ea;border-radius:6px;padding:.6rem .8rem;margin:.8rem 0}
.pair{display:flex;gap:.8rem;flex-wrap:wrap}.pair figure{margin:0}
.pair img{width:192px;height:192px;object-fit:contain;background:#f3f6f9;border:1px solid #dde3ea;
image-rendering:pixelated}
figcaption{font-size:.8rem;color:#5a6473}.turn{margin:.25rem 0;white-space:pre-wrap}
.role{font-weight:600;color:#4a78b5}.muted{color:#5a6473}.bad{color:#b3261e}.ok{color:#1b7a3a}
"""


@dataclass
class ReportInputs:
    files: RunFiles
    media: MediaStore
    model_dir: Path | None = None  # for VQ reconstructions; None: show originals only
    gallery: int = 8
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why


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


def _img(name: str | None, alt: str) -> str:
    return f'<img src="{esc(name)}" alt="{esc(alt)}">' if name else ""


class _Images:
    """Copies images into the report's img/ folder under their content hash (each once)."""

    def __init__(self, out: Path, media: MediaStore):
        self.dir = out / "img"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.media = media

    def add(self, ref: dict[str, Any], what: str) -> str | None:
        try:
            source = self.media.path_of(ref, what=what)
        except Exception:  # noqa: BLE001 - a bad ref is reported on the page, not fatal
            return None
        if not source.is_file():
            return None
        name = f"{ref.get('sha256') or source.stem}{source.suffix.lower()}"
        target = self.dir / name
        if not target.exists():
            shutil.copyfile(source, target)
        return f"img/{name}"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def _nothing(what: str) -> str:
    return f'<p class="muted">Nothing to show: {esc(what)}</p>'


# --------------------------------------------------------------------------- sections


def stages_section(files: RunFiles) -> str:
    rows = []
    for path in files.stats:
        data = orjson.loads(path.read_bytes())
        counts = ", ".join(f"{k} {v}" for k, v in (data.get("counts") or {}).items())
        rate = data.get("reject_rate")
        rows.append(
            [
                data.get("command", data.get("stage")),
                data.get("shard") or data.get("shards") or "",
                data.get("status"),
                counts,
                data.get("rejected_total", 0),
                "" if rate is None else f"{100 * rate:.1f}%",
                f"{data.get('seconds', 0):.1f}",
                path.name,
            ]
        )
    packed = _manifests_html(files)
    if not rows:
        return _section(
            "stages", "Stages", _nothing("no --stats files (run each stage with --stats FILE).") + packed
        )
    table = _table(
        ["command", "shard", "status", "counts", "rejected", "reject rate", "seconds", "file"],
        rows,
        {4, 5, 6},
    )
    return _section("stages", "Stages", table + packed)


def _manifests_html(files: RunFiles) -> str:
    """One row per packed folder (pack's manifest.json): what training will read."""
    rows = []
    for path in files.manifests:
        m = orjson.loads(path.read_bytes())
        settings = m.get("settings") or {}
        rows.append(
            [
                path.parent.name,
                m.get("samples"),
                m.get("rows"),
                settings.get("seq_len", ""),
                len(m.get("shards") or []),
                "" if m.get("efficiency") is None else f"{100 * m['efficiency']:.1f}%",
                f"{m.get('supervised_tokens', '')}/{m.get('tokens', '')}",
                m.get("truncated", ""),
                sum((m.get("rejected") or {}).values()),
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


def curation_section(inputs: ReportInputs, out: Path) -> str:
    files = inputs.files
    corpus = training_corpus(files)
    parts = []
    if corpus is None:
        parts.append(_nothing("no task instances (output of `medmax synthesize` or `tokenize-images`)."))
    else:
        cur = curation_stats(iter_jsonl(corpus))
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
            _img(plots.bar(cur.tasks, out, "tasks.png", title="task mix", xlabel="instances"), "task mix"),
            _img(
                plots.bar(
                    Counter({"credentialed": credential, "open": cur.instances - credential}),
                    out,
                    "credential.png",
                    title="credential share",
                    xlabel="instances",
                ),
                "credential share",
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
            ),
            _img(plots.image_sizes(cur.image_sides, out, "image_sizes.png"), "image sizes"),
        ]
        parts.append('<div class="charts">' + "".join(c for c in charts if c) + "</div>")
        sources = sorted({s for s, _ in cur.source_license})
        licences = sorted({lic for _, lic in cur.source_license})
        rows = [[s] + [cur.source_license.get((s, lic), 0) for lic in licences] for s in sources]
        parts.append("<h3>Sources x licences (instances)</h3>")
        parts.append(_table(["source"] + licences, rows, set(range(1, len(licences) + 1))))
    reasons = reject_reasons(files)
    parts.append("<h3>Reject reasons</h3>")
    if reasons:
        chart = plots.bar(
            Counter({f"{stage}: {reason}": n for (stage, reason), n in reasons.items()}),
            out,
            "rejects.png",
            title="rejected records by stage and reason",
            xlabel="records",
        )
        parts.append(f'<div class="charts">{_img(chart, "reject reasons")}</div>')
        parts.append(
            _table(["stage", "reason", "records"], [[s, r, n] for (s, r), n in reasons.most_common()], {2})
        )
    else:
        parts.append(_nothing("no rejects files and no rejects in the stats."))
    return _section("curation", "Curation", "".join(parts))


def _turns_html(record: dict[str, Any], images_html: dict[int, str]) -> str:
    out = []
    for turn in record.get("turns") or []:
        pieces = []
        for part in turn.get("content") or []:
            if "text" in part:
                text = str(part["text"])
                pieces.append(esc(text if len(text) < 600 else text[:600] + " ..."))
            elif "image" in part:
                pieces.append(f"[image {esc(part['image'])}]")
        out.append(
            f'<div class="turn"><span class="role">{esc(turn.get("role"))}:</span> {" ".join(pieces)}</div>'
        )
    return "".join(out)


def _pick_samples(records: Iterable[dict[str, Any]], n: int, scan: int = 20000) -> list[dict[str, Any]]:
    """One instance with images per task first (a tour of the corpus), then others in file order.

    Looks at the first `scan` instances with images only, so a huge corpus is not read twice."""
    first_of_task: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    seen_tasks: set[str] = set()
    for record in islice((r for r in records if r.get("images")), scan):
        if str(record.get("task")) not in seen_tasks:
            seen_tasks.add(str(record.get("task")))
            first_of_task.append(record)
        elif len(others) < n:
            others.append(record)
    return (first_of_task + others)[:n]


def _reconstruct(records: list[dict[str, Any]], inputs: ReportInputs) -> dict[str, str]:
    """id -> reason where no reconstruction could be made; fills images[i].decoded in place."""
    problems: dict[str, str] = {}
    if inputs.model_dir is None:
        return {str(r.get("id")): "no --model given" for r in records}
    if not any(ref.get("tokens") for r in records for ref in r.get("images") or []):
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


def gallery_section(inputs: ReportInputs, out: Path, images: _Images) -> str:
    corpus = training_corpus(inputs.files)
    if corpus is None or inputs.gallery <= 0:
        return _section("gallery", "Gallery", _nothing("no task instances with images."))
    samples = _pick_samples(iter_jsonl(corpus), inputs.gallery)
    if not samples:
        return _section("gallery", "Gallery", _nothing(f"no instance in {corpus.name} has images."))
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
            pair = [
                f"<figure>{_img(original, 'original') or '<p class=bad>missing from the media store</p>'}"
                f"<figcaption>image {index}: original {esc(ref.get('width'))}x{esc(ref.get('height'))}</figcaption></figure>"
            ]
            decoded = ref.get("decoded")
            recon = images.add(decoded, f"{record.get('id')} decoded {index}") if decoded else None
            if recon:
                pair.append(
                    f"<figure>{_img(recon, 'VQ reconstruction')}<figcaption>VQ reconstruction "
                    f"({len(ref.get('tokens') or [])} tokens)</figcaption></figure>"
                )
            else:
                why = problems.get(str(record.get("id")), "no tokens")
                pair.append(f'<figure><p class="muted">no reconstruction: {esc(why)}</p></figure>')
            figures.append('<div class="pair">' + "".join(pair) + "</div>")
        cards.append(
            f'<div class="card"><div><b>{esc(record.get("task"))}</b> <code>{esc(record.get("id"))}</code> '
            f'<span class="muted">{esc(record.get("source"))}, {esc(record.get("license"))}</span></div>'
            f"{''.join(figures)}{_turns_html(record, {})}</div>"
        )
    intro = (
        f"<p>{len(samples)} instances from <code>{esc(corpus.name)}</code>; each image beside its reconstruction "
        "from its VQ tokens (what the model is trained on).</p>"
    )
    return _section("gallery", "Gallery", intro + "".join(cards))


def training_section(files: RunFiles, out: Path) -> str:
    from medmax_cli.train.metrics import read_metrics

    if not files.runs:
        return _section(
            "training", "Training", _nothing("no run folder with metrics.jsonl (`medmax finetune -o RUN`).")
        )
    parts = []
    for i, run in enumerate(files.runs):
        rows = read_metrics(run)
        chart = plots.training_curves(rows, out, f"training-{i}.png")
        last = rows[-1] if rows else {}
        parts.append(f"<h3>{esc(run.name)}</h3>")
        if rows:
            first_loss = rows[0].get("loss")
            parts.append(
                f"<p>{len(rows)} logged steps, last step {esc(last.get('step'))}; loss {first_loss:.3f} -> "
                f"{last.get('loss', float('nan')):.3f}.</p>"
            )
        parts.append(f'<div class="charts">{_img(chart, f"training curves of {run.name}")}</div>')
    return _section("training", "Training", "".join(parts))


def _prediction_text(record: dict[str, Any]) -> str:
    return " ".join(
        str(p["text"]) for p in record.get("prediction") or [] if isinstance(p, dict) and "text" in p
    )


def evaluation_section(files: RunFiles, out: Path, images: _Images, limit: int = 50) -> str:
    parts = []
    for i, path in enumerate(files.summaries):
        summary = orjson.loads(path.read_bytes())
        tasks = summary.get("tasks") or {}
        chart = plots.task_accuracy(tasks, out, f"evaluation-{i}.png")
        rows = []
        for name, t in tasks.items():
            ci = t.get("ci95")
            rows.append(
                [
                    name,
                    t.get("n"),
                    t.get("scored"),
                    "" if t.get("mean") is None else f"{t['mean']:.3f}",
                    "" if not ci or ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                ]
            )
        macro = summary.get("macro") or {}
        parts.append(f"<h3>{esc(path.name)}</h3>")
        if macro.get("mean") is not None:
            parts.append(f"<p>Macro average over {macro.get('n_tasks')} tasks: {macro['mean']:.3f}.</p>")
        parts.append(f'<div class="charts">{_img(chart, "per-task accuracy")}</div>')
        parts.append(_table(["task", "n", "scored", "mean", "95% CI"], rows, {1, 2, 3}))
    scores: dict[str, dict[str, Any]] = {}
    for path in files.scores:
        for line in iter_jsonl(path):
            scores.setdefault(str(line.get("id")), line)
    items = []
    for path in files.predictions:
        for record in read_jsonl(path, limit=limit):
            score = scores.get(str(record.get("id")), {})
            generated = []
            for part in record.get("prediction") or []:
                if isinstance(part, dict) and "image" in part:
                    ref = (record.get("images") or [])[part["image"]]
                    name = images.add(ref, f"{record.get('id')} generated image")
                    generated.append(_img(name, "generated image") if name else "(missing)")
            question = " ".join(
                str(p.get("text", ""))
                for t in record.get("turns") or []
                if t.get("role") == "user"
                for p in t.get("content") or []
                if "text" in p
            )
            status = score.get("status", "")
            value = score.get("score")
            items.append(
                "<tr>"
                f"<td><code>{esc(record.get('id'))}</code><br>{esc(record.get('task'))}</td>"
                f"<td>{esc(question[:300])}</td>"
                f"<td>{esc(_prediction_text(record)[:300])}{''.join(generated)}</td>"
                f"<td>{esc(score.get('gold', record.get('answer', '')))}</td>"
                f'<td class="n">{"" if value is None else esc(value)} <span class="muted">{esc(status)}</span></td>'
                "</tr>"
            )
    if items:
        parts.append("<h3>Predictions</h3>")
        parts.append(
            "<table><thead><tr><th>id, task</th><th>prompt</th><th>prediction</th><th>reference</th><th>score</th>"
            f"</tr></thead><tbody>{''.join(items)}</tbody></table>"
        )
    if not parts:
        return _section(
            "evaluation",
            "Evaluation",
            _nothing("no score summary (`medmax score --summary`) or predictions."),
        )
    return _section("evaluation", "Evaluation", "".join(parts))


# --------------------------------------------------------------------------- the page


def build_report(
    paths: list[Path],
    out: Path,
    *,
    media: MediaStore,
    model_dir: Path | None,
    gallery: int = 8,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write OUT/index.html with its charts and images; returns what went into it."""
    files = find_files(paths)
    if files.empty():
        raise FileNotFoundError(f"nothing medmax wrote was found in {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    inputs = ReportInputs(files=files, media=media, model_dir=model_dir, gallery=gallery, device=device)
    images = _Images(out, media)
    sections = [
        stages_section(files),
        curation_section(inputs, out),
        gallery_section(inputs, out, images),
        training_section(files, out),
        evaluation_section(files, out, images),
    ]
    inputs_list = "".join(f"<li><code>{esc(p)}</code></li>" for p in paths)
    notes = "".join(f'<p class="bad">{esc(n)}</p>' for n in inputs.notes)
    nav = " | ".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
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
        f'<h1>medmax report</h1><p class="muted">From:</p><ul>{inputs_list}</ul><nav>{nav}</nav>{notes}'
        + "".join(sections)
        + "</body></html>\n"
    )
    tmp = out / f".{PAGE}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out / PAGE)
    return {
        "page": str(out / PAGE),
        "instances_files": len(files.instances),
        "stats_files": len(files.stats),
        "runs": len(files.runs),
        "summaries": len(files.summaries),
        "predictions_files": len(files.predictions),
        "images": len(list((out / "img").iterdir())),
    }
