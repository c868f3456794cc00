"""What every builder shares: the build context, the instance skeleton and the Drop marker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medmax_cli.records import make_id

Part = dict[str, Any]  # {"text": str} or {"image": int}


@dataclass(frozen=True)
class BuildContext:
    """Options the builders read (filled by the stage from its keyword arguments)."""

    seed: int = 0
    min_caption_words: int = 5  # shorter captions make weak captioning/generation targets
    max_caption_words: int = 400  # longer ones are usually whole legends of multi-panel figures


@dataclass(frozen=True)
class Drop:
    """An instance a builder chose not to make, with a reason "bucket: detail" (counted, and
    written to --rejects with the source record)."""

    reason: str
    task: str
    skipped: bool = False  # a user's filter (e.g. --tasks) said no: counted as skipped, not rejected


def image_parts(n: int) -> list[Part]:
    return [{"image": i} for i in range(n)]


def turn(role: str, *parts: Part | Sequence[Part]) -> dict[str, Any]:
    content: list[Part] = []
    for part in parts:
        if isinstance(part, dict):  # a dict check: isinstance(x, Mapping) is slow on this hot path
            content.append(dict(part))
        else:
            content.extend(dict(p) for p in part)
    return {"role": role, "content": content}


def text(value: str) -> Part:
    return {"text": value}


def new_instance(
    record: Mapping[str, Any],
    task: str,
    variant: str | None,
    *,
    domain: str,
    turns: list[dict[str, Any]],
    images: Sequence[Mapping[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A task instance carrying the source's provenance (source, licence, credential, meta)."""
    source_meta = dict(record.get("meta") or {})
    source_meta.update({"source_id": record["id"], "source_kind": record.get("kind", "?")})
    if variant is not None:
        source_meta["variant"] = variant
    source_meta.update(meta or {})
    images = (record.get("images") or []) if images is None else images
    return {
        "id": make_id(record["id"], task, variant),
        "task": task,
        "domain": domain,
        "source": record.get("source", "unknown"),
        "license": record.get("license", "unknown"),
        "credential": bool(record.get("credential", False)),
        "images": [dict(image) for image in images],
        "turns": turns,
        "meta": source_meta,
    }


def article_meta(record: Mapping[str, Any]) -> dict[str, Any]:
    """The article fields worth keeping for provenance (pmcid, doi, title) when present."""
    article = record.get("article") or {}
    kept = {k: article[k] for k in ("pmcid", "version", "doi", "title", "year") if article.get(k) is not None}
    return {"article": kept} if kept else {}
