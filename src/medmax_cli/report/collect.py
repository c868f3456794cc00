"""Find what a run left behind and reduce it to the numbers the report shows.

A run is whatever folders and files the user names: files are recognised by their content
(the first JSON line), not their names, so a renamed output still counts:

- records with `task` and `turns`: task instances (the curation corpus; the file whose images carry
  VQ `tokens` wins, since that is what training saw)
- records with `kind`: source records from `fetch`
- records with `prediction`: generation output; lines with `eval_task` and `score`: scored items
- `{"stage", "where", "reason", "raw"}` lines: a rejects file
- JSON with `medmax_stats`: a `--stats` file; with `schema` medmax-score-summary: a score summary;
  with `shards` and `rows`: a pack manifest
- a folder with `metrics.jsonl`: a training run
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from medmax_cli.streams import marker_kind

MAX_SCAN_DEPTH = 2


@dataclass
class RunFiles:
    instances: list[Path] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    predictions: list[Path] = field(default_factory=list)
    scores: list[Path] = field(default_factory=list)
    rejects: list[Path] = field(default_factory=list)
    stats: list[Path] = field(default_factory=list)
    summaries: list[Path] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        return not any(vars(self).values())


def _first_json_line(path: Path) -> Any:
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    return None
                if marker_kind(value) is None:  # a stream header (a stage's stdout kept by tee)
                    return value
    return None


def classify(path: Path, files: RunFiles) -> None:
    """Put one file in the right list (or none: a file the report does not read)."""
    if path.suffix == ".json":
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        if not isinstance(data, dict):
            return
        if "medmax_stats" in data:
            files.stats.append(path)
        elif str(data.get("schema", "")).startswith("medmax-score-summary"):
            files.summaries.append(path)
        elif "shards" in data and "rows" in data:
            files.manifests.append(path)
        return
    if path.suffix != ".jsonl" or path.name == "metrics.jsonl":
        return
    first = _first_json_line(path)
    if not isinstance(first, dict):
        return
    if {"stage", "reason", "raw"} <= first.keys():
        files.rejects.append(path)
    elif "eval_task" in first and "score" in first:
        files.scores.append(path)
    elif "prediction" in first:
        files.predictions.append(path)
    elif "task" in first and "turns" in first:
        files.instances.append(path)
    elif "kind" in first:
        files.sources.append(path)


def find_files(paths: list[Path]) -> RunFiles:
    files = RunFiles()

    def scan(folder: Path, depth: int) -> None:
        if (folder / "metrics.jsonl").is_file():
            files.runs.append(folder)
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or child.name == "media":
                continue
            if child.is_dir():
                if depth < MAX_SCAN_DEPTH:
                    scan(child, depth + 1)
            elif child.is_file():
                classify(child, files)

    for path in paths:
        if path.is_dir():
            scan(path, 0)
        elif path.is_file():
            classify(path, files)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records one at a time: a corpus of millions of instances with their tokens never sits in memory."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                value = orjson.loads(line)
                if marker_kind(value) is None:  # stream markers are not records (docs/records.md)
                    yield value


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    return list(islice(iter_jsonl(path), limit))


def _head(path: Path, size: int = 1_000_000) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def training_corpus(files: RunFiles) -> Path | None:
    """The instances file training saw: one whose images carry tokens, else the largest."""
    if not files.instances:
        return None
    tokenised = [p for p in files.instances if b'"tokens"' in _head(p)]
    pool = tokenised or files.instances
    return max(pool, key=lambda p: p.stat().st_size)


def _text_of(turn: dict[str, Any]) -> str:
    return " ".join(
        part["text"] for part in turn.get("content") or [] if isinstance(part, dict) and "text" in part
    )


@dataclass
class Curation:
    """What the curation corpus holds (counts per task, source x licence, credential, sizes)."""

    instances: int = 0
    tasks: Counter = field(default_factory=Counter)
    source_license: Counter = field(default_factory=Counter)  # (source, license) -> n
    credential: Counter = field(default_factory=Counter)  # True/False -> n
    caption_words: list[int] = field(default_factory=list)
    image_sides: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per distinct image


def curation_stats(records: Iterable[dict[str, Any]]) -> Curation:
    cur = Curation()
    seen_images: set[str] = set()
    for record in records:
        cur.instances += 1
        cur.tasks[str(record.get("task", "?"))] += 1
        cur.source_license[(str(record.get("source", "?")), str(record.get("license", "?")))] += 1
        cur.credential[bool(record.get("credential"))] += 1
        if record.get("task") == "captioning":
            answer = [t for t in record.get("turns") or [] if t.get("role") == "assistant"]
            if answer:
                cur.caption_words.append(len(_text_of(answer[0]).split()))
        for image in record.get("images") or []:
            key = image.get("sha256") or image.get("path")
            if key in seen_images or not image.get("width"):
                continue
            seen_images.add(key)
            cur.image_sides.append((int(image["width"]), int(image["height"])))
    return cur


def reject_reasons(files: RunFiles) -> Counter:
    """(stage, reason) -> n from every rejects file and, where no rejects file exists, the stats files."""
    reasons: Counter = Counter()
    stages_with_files: set[str] = set()
    for path in files.rejects:
        for entry in iter_jsonl(path):
            stage = str(entry.get("stage", "?"))
            stages_with_files.add(stage)
            reason = str(entry.get("reason", "?")).split(":", 1)[0].split("(", 1)[0].strip()[:60]
            reasons[(stage, reason or "error")] += 1
    for path in files.stats:
        data = orjson.loads(path.read_bytes())
        if data.get("stage") in stages_with_files:
            continue
        for reason, n in (data.get("rejected") or {}).items():
            reasons[(str(data.get("stage")), reason)] += n
    return reasons
