"""Decontamination: drop every instance that shares an image (exact or near) or a question with an
evaluation set (`--exclude FILE`), so that training never sees what the benchmark asks.

The evaluation file may hold source records (qa, figure) or task instances; its images are found
in the media store or relative to the file's folder.
"""

from __future__ import annotations

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


class EvalIndex:
    """Images (sha256 and pHash) and normalised questions of an evaluation set."""

    def __init__(self, hasher: ImageHasher, threshold: int):
        self.hasher = hasher
        self.shas: dict[str, str] = {}
        self.near: NearDupIndex[str] = NearDupIndex(threshold)
        self.questions: dict[str, str] = {}
        self.items = 0
        self.unreadable_images = 0

    def add_records(self, records: Iterable[Mapping[str, Any]], workers: int | None = None) -> EvalIndex:
        """Add records in order; their images are hashed ahead, `workers` threads at a time."""
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
        """A reason "contaminated: ..." when the instance overlaps the evaluation set, else None.

        `hasher`: the one the training images go through (the stage's, shared with the
        near-duplicate filter, so each training image is hashed once); default the eval set's."""
        hasher = hasher or self.hasher
        refs = instance.get("images") or []
        for ref in refs:
            sha = ref.get("sha256")
            if sha and sha in self.shas:
                return f"contaminated: image shared with eval item {self.shas[sha]}"
        key = asked_question(instance)
        if key and key in self.questions:
            return f"contaminated: question of eval item {self.questions[key]}"
        for ref in refs:
            sha, value = hasher.lookup(ref)
            if sha and sha in self.shas:
                return f"contaminated: image shared with eval item {self.shas[sha]}"
            if value is not None:
                found = self.near.nearest(value)
                if found is not None:
                    return f"contaminated: image within {found[1]} bits of eval item {found[0]}"
        return None
