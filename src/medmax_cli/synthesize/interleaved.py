"""`interleaved`: a paragraph that cites a figure, with the figure placed where the text cites it.

From each distinct paragraph of a figure's in-text mentions, the assistant turn is
[text up to the end of the citing sentence, the image, the rest of the paragraph] (MedMax's
Multimodal Generation task). The split point is the end of the mention's `sentence` located
around the anchor (`start`/`end` offsets in `paragraph`); when the sentence cannot be found the
next sentence end after the anchor is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from medmax_cli.synthesize.common import BuildContext, Drop, article_meta, new_instance, text, turn
from medmax_cli.synthesize.quality import caption_problem
from medmax_cli.synthesize.textutil import clean, pick

TASK = "interleaved"
TEMPLATES = (
    "Write the paragraph of the {section} section of {article} that discusses {label}, "
    "and show the figure where the text refers to it.",
    "Compose a passage for the {section} section of {article} about {label}, placing the image "
    "right after the sentence that cites it.",
    "Generate interleaved text and image: a {section} paragraph from {article} that presents "
    "{label}, with the figure inserted where it is mentioned.",
    "Produce the text of {article} ({section} section) that refers to {label}, and insert the "
    "figure at the point where it is cited.",
)
# End of a sentence: terminal punctuation (and closing quotes/brackets) followed by whitespace and a
# capital, a digit-free opening, or the end of the paragraph. "Fig. 2" is not an end: a digit follows.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s+[A-Z(\[\"']|\s*$)")


def split_point(paragraph: str, mention: Mapping[str, Any]) -> int | None:
    """Index in `paragraph` just after the sentence that holds the mention's anchor, or None."""
    anchor = str(mention.get("anchor") or "")
    start, end = mention.get("start"), mention.get("end")
    if not (
        isinstance(start, int)
        and isinstance(end, int)
        and 0 <= start <= end <= len(paragraph)
        and (not anchor or paragraph[start:end] == anchor)
    ):
        found = paragraph.find(anchor) if anchor else -1
        if found < 0:
            return None
        start, end = found, found + len(anchor)
    sentence = str(mention.get("sentence") or "").strip()
    if sentence:
        at = paragraph.find(sentence)
        while at >= 0:
            if at <= start and at + len(sentence) >= end:
                return at + len(sentence)
            at = paragraph.find(sentence, at + 1)
    match = _SENTENCE_END.search(paragraph, end)
    return match.end() if match else len(paragraph)


def build(record: Mapping[str, Any], ctx: BuildContext, domain: str) -> Iterator[dict[str, Any] | Drop]:
    mentions = [m for m in record.get("mentions") or [] if isinstance(m, Mapping) and m.get("paragraph")]
    if not mentions:
        yield Drop("interleaved: figure has no in-text mention", TASK)
        return
    images = record.get("images") or []
    if len(images) != 1:
        yield Drop(f"interleaved needs one image: figure has {len(images)}", TASK)
        return
    article = (record.get("article") or {}).get("title")
    caption = record.get("caption")
    caption_ok = (
        caption_problem(caption, min_words=ctx.min_caption_words, max_words=ctx.max_caption_words) is None
    )
    seen: set[str] = set()
    for mention in mentions:
        paragraph = str(mention["paragraph"])
        if paragraph in seen:
            continue  # several anchors in one paragraph: the first one places the figure
        variant = f"p{len(seen)}"
        seen.add(paragraph)
        split = split_point(paragraph, mention)
        before, after = (
            (clean(paragraph[:split]), clean(paragraph[split:])) if split is not None else ("", "")
        )
        if not before:
            yield Drop(f"interleaved: anchor {mention.get('anchor')!r} not found in its paragraph", TASK)
            continue
        index, template = pick(TEMPLATES, ctx.seed, record["id"], TASK, variant)
        prompt = template.format(
            section=clean(str(mention.get("section") or "main text")).lower() or "main text",
            article=f'the article "{clean(article)}"' if article else "a biomedical article",
            label=clean(str(record.get("label") or "")) or "the figure",
        )
        if caption_ok:
            prompt += f"\nFigure caption: {clean(caption or '')}"
        answer = [text(before), {"image": 0}] + ([text(after)] if after else [])
        yield new_instance(
            record,
            TASK,
            variant,
            domain=domain,
            turns=[turn("user", text(prompt)), turn("assistant", answer)],
            meta={
                "template": index,
                "anchor": mention.get("anchor"),
                "section": mention.get("section"),
                **article_meta(record),
            },
        )
