"""`captioning`: image -> caption, from figure records (MedMax's Image Captioning task)."""

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

TASK = "captioning"
TEMPLATES = (
    "Describe this image.",
    "Write a caption for this biomedical figure.",
    "What does this image show? Give a detailed description.",
    "Provide a descriptive caption for the figure.",
    "Summarise the content of this image in a caption.",
    "Explain what can be seen in this figure.",
)


def build(record: Mapping[str, Any], ctx: BuildContext, domain: str) -> Iterator[dict[str, Any] | Drop]:
    caption = record.get("caption")
    problem = caption_problem(caption, min_words=ctx.min_caption_words, max_words=ctx.max_caption_words)
    if problem:
        yield Drop(problem, TASK)
        return
    n_images = len(record.get("images") or [])
    index, prompt = pick(TEMPLATES, ctx.seed, record["id"], TASK)
    yield new_instance(
        record,
        TASK,
        None,
        domain=domain,
        turns=[
            turn("user", image_parts(n_images), text(prompt)),
            turn("assistant", text(caption or "")),  # verbatim
        ],
        meta={"template": index, "caption": caption or "", **article_meta(record)},
    )
