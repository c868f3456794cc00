"""`image_generation`: caption -> image, from figure records (MedMax's Image Generation task)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from medmax_cli.synthesize.common import (
    BuildContext,
    Drop,
    article_meta,
    image_parts,
    new_instance,
    text,
    turn,
)
from medmax_cli.synthesize.quality import caption_problem
from medmax_cli.synthesize.textutil import pick

TASK = "image_generation"
TEMPLATES = (
    "Generate an image that matches this description: {caption}",
    "Create a biomedical image based on the following caption: {caption}",
    "Draw the figure described here: {caption}",
    "Produce an image for this figure legend: {caption}",
    "Generate the image this caption describes. {caption}",
)


def build(record: Mapping[str, Any], ctx: BuildContext, domain: str) -> Iterator[dict[str, Any] | Drop]:
    caption = record.get("caption")
    problem = caption_problem(caption, min_words=ctx.min_caption_words, max_words=ctx.max_caption_words)
    if problem:
        yield Drop(problem, TASK)
        return
    images = record.get("images") or []
    if len(images) != 1:
        # Several panels as separate files: one target image is ambiguous, so generation uses only
        # single-image figures (captioning still uses them all).
        yield Drop(f"image_generation needs one image: figure has {len(images)}", TASK)
        return
    index, template = pick(TEMPLATES, ctx.seed, record["id"], TASK)
    caption = caption or ""  # verbatim: the published caption is the target, never re-spaced
    yield new_instance(
        record,
        TASK,
        None,
        domain=domain,
        turns=[turn("user", text(template.format(caption=caption))), turn("assistant", image_parts(1))],
        meta={"template": index, "caption": caption, **article_meta(record)},
    )
