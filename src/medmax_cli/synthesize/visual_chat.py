"""`visual_chat`: a multi-turn conversation about a figure, written by an LLM (LLaVA-Med style).

The LLM sees the caption and the sentences that cite the figure (never the image) and returns
JSON `{"conversation": [{"question", "answer"}, ...]}`. A reply that does not parse or breaks the
shape is asked again (next seed) and then rejected with the reason. Credentialed records go only
to trusted endpoints (loopback or --trusted-llm-host).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from medmax_cli.llm import ChatClient, ReplyRejected, strip_code_fence
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
from medmax_cli.synthesize.textutil import clean

TASK = "visual_chat"
PROMPT_VERSION = "visual_chat-v1"  # bump when SYSTEM_PROMPT or the user message changes: new cache keys
MAX_MENTIONS = 5
MIN_PAIRS, MAX_PAIRS = 1, 8
SYSTEM_PROMPT = (
    "You are an AI assistant for biomedical images. You receive the caption of a figure from a "
    "biomedical research article and, when available, sentences of the article that mention the "
    "figure. You do not see the image, but write as if you were looking at it.\n"
    "Write a conversation between a person asking about the image and an assistant answering.\n"
    "- Ask varied questions: what the image shows, the imaging modality or stain, the anatomy or "
    "tissue, the notable findings and what they mean.\n"
    "- Answer only with what the caption and mentions support; invent no numbers, patients or findings.\n"
    "- Speak about the image; never refer to a caption, an article or a text.\n"
    f"- Write {MIN_PAIRS + 1} to {MAX_PAIRS - 3} question-answer pairs.\n"
    'Reply with JSON only, exactly in this form: {"conversation": [{"question": "...", "answer": "..."}]}'
)


def context_sentences(record: Mapping[str, Any]) -> list[str]:
    """Distinct citing sentences (or paragraphs when no sentence was extracted), in order."""
    out: list[str] = []
    for mention in record.get("mentions") or []:
        if not isinstance(mention, Mapping):
            continue
        sentence = clean(str(mention.get("sentence") or mention.get("paragraph") or ""))
        if sentence and sentence not in out:
            out.append(sentence)
    return out[:MAX_MENTIONS]


def messages_for(caption: str, mentions: list[str]) -> list[dict[str, str]]:
    user = f"Figure caption:\n{caption}"
    if mentions:
        user += "\n\nSentences that mention the figure:\n" + "\n".join(f"- {m}" for m in mentions)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_conversation(raw: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a reply; ValueError with the reason when malformed."""
    try:
        data = orjson.loads(strip_code_fence(raw))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"reply is not JSON ({exc}); starts with {raw[:40]!r}") from None
    items = data.get("conversation") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("reply has no 'conversation' list")
    if not MIN_PAIRS <= len(items) <= MAX_PAIRS:
        raise ValueError(f"conversation has {len(items)} pairs, want {MIN_PAIRS} to {MAX_PAIRS}")
    pairs = []
    for i, item in enumerate(items):
        question = item.get("question") if isinstance(item, dict) else None
        answer = item.get("answer") if isinstance(item, dict) else None
        if not (
            isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip()
        ):
            raise ValueError(f"conversation[{i}] needs non-empty 'question' and 'answer' strings")
        pairs.append((clean(question), clean(answer)))
    return pairs


def build(
    record: Mapping[str, Any], ctx: BuildContext, domain: str, client: ChatClient
) -> Iterator[dict[str, Any] | Drop]:
    caption = record.get("caption")
    problem = caption_problem(caption, min_words=ctx.min_caption_words, max_words=ctx.max_caption_words)
    if problem:
        yield Drop(problem, TASK)
        return
    if record.get("credential") and not client.trusted:
        yield Drop(
            "credential: credentialed record not sent to an endpoint that is neither loopback "
            "nor a --trusted-llm-host",
            TASK,
        )
        return
    caption = clean(caption or "")
    mentions = context_sentences(record)
    try:
        pairs = client.ask(
            messages_for(caption, mentions),
            prompt_version=PROMPT_VERSION,
            parse=parse_conversation,
            credential=bool(record.get("credential")),
        )
    except ReplyRejected as exc:
        yield Drop(str(exc), TASK)
        return
    n_images = len(record.get("images") or [])
    turns = []
    for i, (question, answer) in enumerate(pairs):
        user_parts = [*image_parts(n_images), text(question)] if i == 0 else [text(question)]
        turns += [turn("user", user_parts), turn("assistant", text(answer))]
    yield new_instance(
        record,
        TASK,
        None,
        domain=domain,
        turns=turns,
        meta={
            "caption": caption,
            "mentions": mentions,
            "llm_model": client.settings.model,
            "prompt_version": PROMPT_VERSION,
            **article_meta(record),
        },
    )
