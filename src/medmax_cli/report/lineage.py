"""Which run made what: rejects, skips and contamination counted under the run that produced them.

A `--stats` file records its command's settings, among them `output`, `inputs` and `rejects`. From
those the report follows the training corpus back through the stages that made it (tokenize-images
read synthesize's output, ...). A rejects file or a stats reason map belongs to the run whose
`rejects` setting names it, or whose stats file it is; only the runs on the corpus's line count as
the corpus's rejects. A side run (a decontamination try, an eval-set build) keeps its own rows,
labelled with its command and output, so its drops are never shown as the training corpus's.

Paths in settings are as the user typed them, relative to a working folder the report does not
know: a setting names a file when both resolve to the same path, or when the file's path ends with
the setting's parts (no `..`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmax_cli.report.collect import RunFiles, iter_jsonl, read_json


@dataclass
class StageRun:
    stats: Path
    data: dict[str, Any]

    @property
    def command(self) -> str:
        return str(self.data.get("command") or self.data.get("stage") or "?")

    def setting(self, *names: str) -> list[str]:
        settings = self.data.get("settings") if isinstance(self.data.get("settings"), dict) else {}
        out: list[str] = []
        for name in names:
            value = settings.get(name)
            values = value if isinstance(value, list) else [value]
            out += [v for v in values if isinstance(v, str) and v not in ("", "-")]
        return out

    @property
    def label(self) -> str:
        output = self.setting("output", "out")
        return (
            f"{self.command}" + (f" -o {output[0]}" if output else " (to stdout)") + f" [{self.stats.name}]"
        )


def names(setting: str, path: Path) -> bool:
    """Whether a path setting (as typed, relative to an unknown folder) names `path`."""
    candidate = Path(setting)
    if ".." in candidate.parts:
        return False
    try:
        if candidate.resolve() == path.resolve():
            return True
        parts = path.resolve().parts
    except OSError:
        return False
    tail = candidate.parts
    return not candidate.is_absolute() and len(tail) <= len(parts) and parts[-len(tail) :] == tail


@dataclass
class ReasonGroup:
    """Rejected and skipped counts of one run (or one rejects file no run claims)."""

    label: str
    on_corpus_line: bool | None  # None: no corpus, or the run is unknown
    source: str  # the file the counts were read from
    rejected: Counter = field(default_factory=Counter)  # (stage, class) -> n
    skipped: Counter = field(default_factory=Counter)  # (stage, class) -> n


def stage_runs(files: RunFiles) -> list[StageRun]:
    runs = []
    for path in files.stats:
        data = read_json(path, files.notes)
        if data:
            runs.append(StageRun(path, data))
    return runs


def corpus_line(runs: list[StageRun], corpus: Path | None) -> set[Path]:
    """Stats files of the runs on the training corpus's line: those that made it (following inputs
    back to earlier outputs) and those that read it on the way to training (pack, and so on)."""
    if corpus is None:
        return set()
    line: set[Path] = set()
    back, forward = [corpus], [corpus]
    while back:
        target = back.pop()
        for run in runs:
            if run.stats not in line and any(names(o, target) for o in run.setting("output")):
                line.add(run.stats)
                back += [Path(name) for name in run.setting("inputs", "input")]
    while forward:
        target = forward.pop()
        for run in runs:
            if run.stats not in line and any(
                names(i, target) for i in run.setting("inputs", "input", "shards")
            ):
                line.add(run.stats)
                forward += [Path(name) for name in run.setting("output")]
    return line


def reason_class(reason: Any) -> str:
    """The short class of a reason: `class: details` keeps the class (issue 22's classes); a bare
    legacy message keeps its text before the first colon or parenthesis."""
    text = str(reason if reason is not None else "?")
    # ", got <value>" is the record's content (maybe credentialed): the page shows the class only
    return text.split(":", 1)[0].split("(", 1)[0].split(", got ", 1)[0].strip()[:80] or "error"


def flat_counts(value: Any, prefix: str = "") -> Counter:
    """{class: n}, {class: {detail: n}} or {class: {"count": n, ...}} as {"class[ / detail]": n}."""
    out: Counter = Counter()
    if not isinstance(value, dict):
        return out
    for key, item in value.items():
        name = f"{prefix} / {key}" if prefix else str(key)
        if isinstance(item, bool):
            continue
        if isinstance(item, (int, float)):
            out[name] += int(item)
        elif isinstance(item, dict) and isinstance(item.get("count"), int):
            out[name] += item["count"]
        elif isinstance(item, dict):
            out.update(flat_counts(item, name))
    return out


def reason_groups(files: RunFiles, runs: list[StageRun], corpus: Path | None) -> list[ReasonGroup]:
    """One group per run that rejected or skipped something, corpus runs first."""
    line = corpus_line(runs, corpus)
    groups: list[ReasonGroup] = []
    claimed: set[Path] = set()
    for run in runs:
        owned = [p for p in files.rejects if any(names(r, p) for r in run.setting("rejects"))]
        on_line = None if corpus is None else run.stats in line
        group = ReasonGroup(run.label, on_line, run.stats.name)
        stage = str(run.data.get("stage") or run.command)
        if owned:  # the rejects file is the record (skips are in it too, marked "skipped": true)
            for path in owned:
                claimed.add(path)
                group.source = path.name
                _count_entries(path, files, group, stage)
        else:
            for name, n in flat_counts(run.data.get("rejected")).items():
                group.rejected[(stage, name)] += n
        if not group.skipped:  # a rejects file without the skips (or none): the stats file's skip map
            for name, n in flat_counts(run.data.get("skipped")).items():
                group.skipped[(stage, name)] += n
        if group.rejected or group.skipped:
            groups.append(group)
    for path in files.rejects:
        if path in claimed:
            continue
        group = ReasonGroup(
            f"rejects file {path.name} (no --stats file names it: run unknown)", None, path.name
        )
        _count_entries(path, files, group, "?")
        if group.rejected or group.skipped:
            groups.append(group)
    return sorted(groups, key=lambda g: {True: 0, None: 1, False: 2}[g.on_corpus_line])


def _count_entries(path: Path, files: RunFiles, group: ReasonGroup, stage: str) -> None:
    for entry in iter_jsonl(path, files.notes):
        key = (str(entry.get("stage", stage)), _entry_class(entry))
        (group.skipped if entry.get("skipped") is True else group.rejected)[key] += 1


def _entry_class(entry: dict[str, Any]) -> str:
    for key in ("class", "reason_class"):
        if isinstance(entry.get(key), str) and entry[key]:
            return entry[key][:80]
    return reason_class(entry.get("reason"))


@dataclass
class ContaminationRow:
    run: str
    eval_source: str
    match: str
    count: int


def contamination(runs: list[StageRun]) -> list[ContaminationRow]:
    """synthesize's `contamination` table ({eval_source, match, count} per row) from its stats."""
    rows = []
    for run in runs:
        table = run.data.get("contamination")
        if not isinstance(table, list):
            continue
        for row in table:
            if (
                isinstance(row, dict)
                and isinstance(row.get("count"), int)
                and not isinstance(row["count"], bool)
            ):
                rows.append(
                    ContaminationRow(
                        run.label, str(row.get("eval_source", "?")), str(row.get("match", "?")), row["count"]
                    )
                )
    return rows
