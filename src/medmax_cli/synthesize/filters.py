"""Instance filters: exact duplicates and near-duplicate images. Each returns a drop reason or None.

- exact: same task and variant, same images (by sha256, else path/url), the same normalised
  answer text and the same source text (question or caption) -> the later instance is a duplicate
  of the first. The instruction is left out: it is a paraphrase chosen per record id, so two copies
  of one figure would otherwise never match.
- near: within one task (and variant, and for VQA and chat-record conversations the same normalised
  question, so several questions about one image all stay), the first image's pHash is within `threshold` bits of an
  instance already kept -> near duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from medmax_cli.synthesize.imagehash import ImageHasher, NearDupIndex
from medmax_cli.synthesize.textutil import normalise


def image_identity(ref: Mapping[str, Any]) -> str:
    return str(ref.get("sha256") or ref.get("path") or ref.get("url") or "")


def turns_text(instance: Mapping[str, Any], role: str | None = None) -> str:
    parts = []
    for turn in instance.get("turns") or []:
        if role is None or turn.get("role") == role:
            parts.append(" ".join(p["text"] for p in turn.get("content", []) if "text" in p))
    return normalise(" | ".join(parts))


def question_key(instance: Mapping[str, Any]) -> str:
    """The normalised question of an instance: meta.question, a `question` field, else the user text."""
    question = (instance.get("meta") or {}).get("question") or instance.get("question")
    return normalise(str(question)) if question else turns_text(instance, "user")


class ExactDedup:
    def __init__(self) -> None:
        self._seen: dict[bytes, str] = {}

    def key(self, instance: Mapping[str, Any]) -> bytes:
        images = "\x1f".join(image_identity(ref) for ref in instance.get("images") or [])
        meta = instance.get("meta") or {}
        if instance.get("turns"):
            source = meta.get("question") or meta.get("caption") or ""
            if not source and instance.get("task") == "vqa":
                source = turns_text(instance, "user")
            text = f"{normalise(str(source))}\x1d{turns_text(instance, 'assistant')}"
        else:
            text = normalise(str(instance.get("text", "")))
        key = f"{instance.get('task')}\x1e{meta.get('variant', '')}\x1e{images}\x1e{text}"
        return hashlib.sha256(key.encode()).digest()

    def check(self, instance: Mapping[str, Any]) -> str | None:
        key = self.key(instance)
        first = self._seen.setdefault(key, instance["id"])
        return None if first == instance["id"] else f"duplicate: same images and text as {first}"


SMALL_GROUP = 32  # below this many kept images a group is a plain list scanned linearly


class NearDupFilter:
    """Near-duplicate images per group. Most VQA groups (one question) hold one or two images, so a
    group starts as a small list of (hash, id) and becomes a NearDupIndex only when it grows: an
    index per question would cost a few KB each, a lot for a million questions."""

    def __init__(self, hasher: ImageHasher, threshold: int):
        self.hasher = hasher
        self.threshold = threshold
        self._groups: dict[tuple[str, str, str], list[tuple[int, str]] | NearDupIndex[str]] = {}
        self.unhashed = 0

    def group(self, instance: Mapping[str, Any]) -> tuple[str, str, str]:
        task = str(instance.get("task"))
        variant = str((instance.get("meta") or {}).get("variant") or "")
        # several questions about one image all stay: VQA, and conversations from chat records
        # (LLaVA-Med's eval asks ~4 questions per figure)
        per_question = task == "vqa" or (instance.get("meta") or {}).get("source_kind") == "chat"
        return task, variant, question_key(instance) if per_question else ""

    def check(self, instance: Mapping[str, Any]) -> str | None:
        images = instance.get("images") or []
        if not images:
            return None
        value = self.hasher.phash_of(images[0])
        if value is None:
            self.unhashed += 1  # not in the media store: only the exact filter applies
            return None
        key = self.group(instance)
        members = self._groups.setdefault(key, [])
        if isinstance(members, list):
            found = (
                min(((h ^ value).bit_count(), i, rid) for i, (h, rid) in enumerate(members))
                if members
                else None
            )
            if found is not None and found[0] <= self.threshold:
                return f"near duplicate: image within {found[0]} bits of {found[2]}"
            members.append((value, instance["id"]))
            if len(members) > SMALL_GROUP:
                index: NearDupIndex[str] = NearDupIndex(self.threshold)
                for h, rid in members:
                    index.add(h, rid)
                self._groups[key] = index
            return None
        hit = members.nearest(value)
        if hit is not None:
            return f"near duplicate: image within {hit[1]} bits of {hit[0]}"
        members.add(value, instance["id"])
        return None
