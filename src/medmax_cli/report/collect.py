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
- a folder with `metrics.jsonl`: a training run (its `config.json`, finetune's resolved config, is read too)

A file that cannot be read (not JSON, a torn line, a record that is not an object) never fails the
report: the readers here skip what they cannot use and leave a note, naming the file and the line,
that the page shows.
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
    notes: list[str] = field(default_factory=list)  # what could not be read, and why (shown on the page)

    def empty(self) -> bool:
        return not any(v for k, v in vars(self).items() if k != "notes")

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)


MAX_JSON_BYTES = 64 * 1024 * 1024  # a summary, manifest or stats file is kilobytes; more is not ours


MAX_LINE_BYTES = 64 * 1024 * 1024  # one record; a longer "line" (a file with no newlines) is not one


def _lines(handle: Any) -> Iterator[bytes | None]:
    """The file's lines, each read with a bound: a line over MAX_LINE_BYTES is skipped (None), never
    held whole in memory."""
    while True:
        line = handle.readline(MAX_LINE_BYTES)
        if not line:
            return
        if len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # the rest of the over-long line, dropped chunk by chunk
                rest = handle.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


def _first_json_line(path: Path) -> Any:
    with open(path, "rb") as handle:
        for line in _lines(handle):
            if line is None:
                return None
            if line.strip():
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    return None
                if marker_kind(value) is None:  # a stream header (a stage's stdout kept by tee)
                    return value
    return None


def read_json(path: Path, notes: list[str] | None = None) -> dict[str, Any]:
    """A small JSON object file, or {} with a note when it is not one (never an exception)."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"over {MAX_JSON_BYTES} bytes")
        data = orjson.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        if notes is not None:
            notes.append(f"{path}: not read ({exc})")
        return {}
    if not isinstance(data, dict):
        if notes is not None:
            notes.append(f"{path}: not read (a JSON {type(data).__name__}, not an object)")
        return {}
    return data


def classify(path: Path, files: RunFiles) -> None:
    """Put one file in the right list (or none: a file the report does not read)."""
    if path.suffix == ".json":
        try:
            if path.stat().st_size > MAX_JSON_BYTES:
                files.note(f"{path}: not read (over {MAX_JSON_BYTES} bytes: not a file medmax writes)")
                return
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            files.note(f"{path}: not read (not valid JSON: {exc})")
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
    try:
        first = _first_json_line(path)
    except OSError as exc:
        files.note(f"{path}: not read ({exc.strerror or exc})")
        return
    if not isinstance(first, dict):
        if first is not None or path.stat().st_size:
            files.note(f"{path}: not read (its first line is not a JSON object)")
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
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            files.note(f"{folder}: not read ({exc.strerror or exc})")
            return
        if (folder / "metrics.jsonl").is_file():
            files.runs.append(folder)
        for child in children:
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
        elif path.exists():
            raise FileNotFoundError(f"{path}: not a regular file or a folder")
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def iter_jsonl(path: Path, notes: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Records one at a time: a corpus of millions of instances with their tokens never sits in memory.

    A line that is not a JSON object is skipped; the first such line of a file leaves a note naming
    the file, the line and how many were skipped, so a torn or foreign file still gives a report."""
    bad, first_bad = 0, ""
    segment: int | None = None  # lines since a medmax stream header, while one is open
    cut: list[str] = []  # a tee'd stream whose writer stopped early: its figures are not the run's
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(_lines(handle), 1):
                if line is not None and not line.strip():
                    continue
                try:
                    if line is None:
                        raise ValueError(f"over {MAX_LINE_BYTES} bytes")
                    record = orjson.loads(line)
                except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                    record, why = None, f"not valid JSON ({exc})"
                else:
                    why = f"a JSON {type(record).__name__}, not an object"
                marker = marker_kind(record)  # stream markers are not records (docs/records.md)
                if marker == "header":
                    if segment is not None:
                        cut.append(f"after {segment} records (a new stream begins at line {number})")
                    segment = 0
                    continue
                if marker == "trailer":
                    count = (
                        record["medmax_end"].get("records")
                        if isinstance(record["medmax_end"], dict)
                        else None
                    )
                    if segment is None or count != segment:
                        cut.append(f"at line {number} (its trailer counts {count!r}, {segment} arrived)")
                    segment = None
                    continue
                if segment is not None:
                    segment += 1
                if isinstance(record, dict):
                    yield record
                    continue
                bad += 1
                first_bad = first_bad or f"line {number}: {why}"
    except OSError as exc:
        if notes is not None:
            notes.append(f"{path}: reading stopped ({exc.strerror or exc})")
    if segment is not None:
        cut.append(f"after {segment} records (no end trailer)")
    message = (
        f"{path}: a medmax stream cut upstream {cut[0]}: the stage that wrote it stopped early, "
        "so what is shown from it is incomplete (docs/records.md, 'End of stream')"
        if cut
        else None
    )
    if message and notes is not None and message not in notes:  # sections read a file more than once
        notes.append(message)
    if bad and notes is not None:
        notes.append(f"{path}: {bad} line(s) skipped, the first at {first_bad}")


def read_jsonl(path: Path, limit: int | None = None, notes: list[str] | None = None) -> list[dict[str, Any]]:
    return list(islice(iter_jsonl(path, notes), limit))


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


def _text_of(turn: Any) -> str:
    if not isinstance(turn, dict) or not isinstance(turn.get("content"), list):
        return ""
    return " ".join(
        str(part["text"]) for part in turn["content"] if isinstance(part, dict) and "text" in part
    )


def is_credentialed(record: Any) -> bool:
    """Whether a record's content is under a data-use agreement. Anything but an explicit no counts as
    yes (`"true"`, 1, `"yes"`): a wrongly typed flag must not publish a credentialed record."""
    if not isinstance(record, dict):
        return False
    value = record.get("credential")
    if value is None or value is False or value == 0:
        return False
    return not (isinstance(value, str) and value.strip().lower() in ("", "false", "no", "0"))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


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
    """Counts only (no text, no image): safe to show whatever the records' credential."""
    cur = Curation()
    seen_images: set[str] = set()
    for record in records:
        cur.instances += 1
        cur.tasks[str(record.get("task", "?"))] += 1
        cur.source_license[(str(record.get("source", "?")), str(record.get("license", "?")))] += 1
        cur.credential[is_credentialed(record)] += 1
        turns = record.get("turns") if isinstance(record.get("turns"), list) else []
        if record.get("task") == "captioning":
            answer = [t for t in turns if isinstance(t, dict) and t.get("role") == "assistant"]
            if answer:
                cur.caption_words.append(len(_text_of(answer[0]).split()))
        images = record.get("images") if isinstance(record.get("images"), list) else []
        for image in images:
            if not isinstance(image, dict):
                continue
            key = str(image.get("sha256") or image.get("path"))
            width, height = _int(image.get("width")), _int(image.get("height"))
            if key in seen_images or width is None or height is None:
                continue
            seen_images.add(key)
            cur.image_sides.append((width, height))
    return cur
