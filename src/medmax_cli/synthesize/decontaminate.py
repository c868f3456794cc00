"""Decontamination: drop every instance that shares an image (exact or near) and/or a question with
an evaluation set (`--exclude FILE`), so that training never sees what the benchmark asks.

`by` chooses what counts as contamination (`--exclude-by`):
- "image" (the default): the instance shows an eval image, exactly (sha256) or nearly (pHash within
  the near-duplicate bits). VQA-RAD and SLAKE split by question, not by image, so their train
  questions about a test image go too: the model would otherwise study the very image it is tested on.
- "question": the instance asks an eval question (normalised text), whatever the image. On VQA-RAD
  and SLAKE this mostly removes generic questions ("Is this an MRI?") asked of other images.
- "both": either of the two.
Every drop is counted by eval source x match kind (`contamination_table`), printed on stderr and
written to `--stats` under "contamination".

The evaluation file may hold source records (qa, figure) or task instances; its images are found
in the media store or relative to the file's folder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from medmax_cli.synthesize.filters import question_key
from medmax_cli.synthesize.imagehash import ImageHasher, NearDupIndex
from medmax_cli.synthesize.textutil import normalise


def asked_question(record: Mapping[str, Any]) -> str:
    """The normalised question of a qa record or a VQA-like instance; "" for other records (a
    captioning prompt such as "Describe this image." is a template, not a benchmark question)."""
    if record.get("kind") == "qa" and record.get("question"):
        return normalise(str(record["question"]))
    if (record.get("meta") or {}).get("question") or (record.get("task") == "vqa" and record.get("turns")):
        return question_key(record)
    return ""


EXCLUDE_BY = ("image", "question", "both")
DEFAULT_EXCLUDE_BY = "image"
MATCHES = ("exact_image", "near_duplicate_image", "same_question")


def eval_source_of(record: Mapping[str, Any], fallback: str) -> str:
    """The name an eval item is counted under: its eval task (MedMax's eval set), else its source."""
    meta = record.get("meta") or {}
    return str(meta.get("eval_task") or record.get("source") or fallback)


class EvalIndex:
    """Images (sha256 and pHash) and normalised questions of an evaluation set, and the count of
    instances dropped per (eval source, match kind)."""

    def __init__(self, hasher: ImageHasher, threshold: int, by: str = DEFAULT_EXCLUDE_BY):
        if by not in EXCLUDE_BY:
            raise ValueError(f"exclude by must be one of {', '.join(EXCLUDE_BY)}, not {by!r}")
        self.hasher = hasher
        self.by = by
        self.shas: dict[str, str] = {}
        self.near: NearDupIndex[str] = NearDupIndex(threshold)
        self.questions: dict[str, str] = {}
        self.source_of: dict[str, str] = {}  # eval item id -> eval source
        self.items = 0
        self.unreadable_images = 0
        self.name = "eval"
        self.dropped: Counter[tuple[str, str]] = Counter()

    def contamination_table(self) -> list[dict[str, Any]]:
        """[{"eval_source", "match", "count"}] of the instances dropped, sorted; what `--stats`
        holds under "contamination" and `medmax report` shows."""
        return [
            {"eval_source": source, "match": match, "count": n}
            for (source, match), n in sorted(self.dropped.items())
        ]

    def add_records(
        self, records: Iterable[Mapping[str, Any]], workers: int | None = None, name: str | None = None
    ) -> EvalIndex:
        """Add records in order; their images are hashed ahead, `workers` threads at a time. `name`
        (e.g. the file's name) is the eval source of items that carry neither eval_task nor source."""
        if name:
            self.name = name
        chunk: list[Mapping[str, Any]] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= 256:
                self._add_chunk(chunk, workers)
                chunk = []
        if chunk:
            self._add_chunk(chunk, workers)
        return self

    def _add_chunk(self, chunk: list[Mapping[str, Any]], workers: int | None) -> None:
        self.hasher.prefetch((ref for record in chunk for ref in record.get("images") or []), workers)
        for record in chunk:
            self.add(record)

    def add(self, record: Mapping[str, Any]) -> None:
        self.items += 1
        rid = str(record.get("id"))
        self.source_of.setdefault(rid, eval_source_of(record, self.name))
        for ref in record.get("images") or []:
            sha, value = self.hasher.lookup(ref)
            if sha:
                self.shas.setdefault(sha, rid)
            if value is not None:
                self.near.add(value, rid)
            else:
                self.unreadable_images += 1
        key = asked_question(record)
        if key:
            self.questions.setdefault(key, rid)

    def check(self, instance: Mapping[str, Any], hasher: ImageHasher | None = None) -> str | None:
        """A reason "contaminated: ..." when the instance overlaps the evaluation set the way `by`
        says, else None; each drop is counted under its eval source and match kind (the first
        found of exact image, same question, near-duplicate image).

        `hasher`: the one the training images go through (the stage's, shared with the
        near-duplicate filter, so each training image is hashed once); default the eval set's."""
        found = self._match(instance, hasher or self.hasher)
        if found is None:
            return None
        match, rid, detail = found
        source = self.source_of.get(rid, self.name)
        self.dropped[(source, match)] += 1
        return f"contaminated: {match.replace('_', ' ')} {detail}of eval item {rid} ({source}; --exclude-by {self.by})"

    def _match(self, instance: Mapping[str, Any], hasher: ImageHasher) -> tuple[str, str, str] | None:
        by_image = self.by in ("image", "both")
        refs = (instance.get("images") or []) if by_image else []
        for ref in refs:
            sha = ref.get("sha256")
            if sha and sha in self.shas:
                return "exact_image", self.shas[sha], ""
        if self.by in ("question", "both"):
            key = asked_question(instance)
            if key and key in self.questions:
                return "same_question", self.questions[key], ""
        for ref in refs:
            sha, value = hasher.lookup(ref)
            if sha and sha in self.shas:
                return "exact_image", self.shas[sha], ""
            if value is not None:
                near = self.near.nearest(value)
                if near is not None:
                    return "near_duplicate_image", near[0], f"(within {near[1]} bits) "
        return None


def contamination_lines(index: EvalIndex) -> list[str]:
    """The contamination table for stderr: one line per eval source x match kind, zero rows of the
    kinds checked included, so "nothing matched" is visible too."""
    kinds = {
        "image": ("exact_image", "near_duplicate_image"),
        "question": ("same_question",),
        "both": MATCHES,
    }[index.by]
    sources = sorted(set(index.source_of.values()) | {s for s, _ in index.dropped}) or [index.name]
    rows = [("eval source", "match", "dropped")]
    rows += [(s, m, str(index.dropped.get((s, m), 0))) for s in sources for m in kinds]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    head = (
        f"medmax synthesize: contamination (--exclude-by {index.by}; {index.items} eval items): "
        f"{sum(index.dropped.values())} instances dropped"
    )
    return [head] + [f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows]
