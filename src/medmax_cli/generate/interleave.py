"""Drive a batch of rows through text and image phases (text, image and interleaved modes).

A row is a prompt, a mode and a token budget. Text and interleaved rows start in a text phase
(BOI allowed only for interleaved rows, and only with room for a whole image); a row that samples
BOI moves to an image phase (exactly `tokens_per_image` codes with three-row CFG, then EOI), and
an interleaved row with budget left goes back to text with the image in its context, as Anole's
`Generator` does (a new `TextDecoder` over prompt + everything generated): so an interleaved row
holds as many images as its budget and the context allow. `Settings.text_segment` caps each text
run (Anole's and MedMax's `max_gen_len`, which a new `TextDecoder` starts afresh after an image);
a run that reaches it ends the row, as Anole's `MaxLengthCriteria` ends generation. Image rows
start directly in the image phase. Each phase is one batched call; between phases a row's
context is simply re-prefilled (one forward over the prompt, cheap next to 1,024 decode steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from medmax_cli.generate.cfg import generate_images
from medmax_cli.generate.config import Settings
from medmax_cli.generate.decode import Runner, generate_text
from medmax_cli.generate.processors import TextMasks


@dataclass
class Row:
    """One generation job and its growing output."""

    prompt: list[int]
    mode: str  # "text" | "image" | "interleaved"
    seed: int
    budget: int  # most new tokens (image blocks count BOI + codes + EOI)
    context: list[int] = field(default_factory=list)
    segments: list[tuple[str, list[int]]] = field(default_factory=list)  # ("text", ids) | ("image", codes)
    used: int = 0
    stop: str = ""
    settings: Settings | None = None  # the record's decoding settings (stage groups rows by them)

    def __post_init__(self) -> None:
        self.context = list(self.prompt)


def run_rows(
    runner: Runner,
    rows: list[Row],
    *,
    masks: TextMasks,
    code_ids: torch.Tensor,
    vocab: Any,
    settings: Settings,
) -> list[Row]:
    """Generate every row to completion (EOS, budget, or the end of its image); rows are updated."""
    tpi = masks.image_block - 2
    dev = runner.device
    text_rows = [r for r in rows if r.mode in ("text", "interleaved")]
    image_rows = [r for r in rows if r.mode == "image"]
    for r in image_rows:
        r.context.append(vocab.boi)  # the image starts right after the prompt
        r.used += 1
    while text_rows or image_rows:
        if text_rows:
            segment = settings.text_segment or masks.context  # a run of text: Anole's max_gen_len
            results = generate_text(
                runner,
                [r.context for r in text_rows],
                budgets=[min(r.budget - r.used, segment) for r in text_rows],
                image_budgets=[r.budget - r.used for r in text_rows],
                masks=masks,
                seeds=torch.tensor([r.seed for r in text_rows], device=dev),
                step_offsets=[r.used for r in text_rows],
                allow_image=[r.mode == "interleaved" for r in text_rows],
                repetition_penalty=settings.repetition_penalty,
                temperature=settings.temperature,
                top_p=settings.top_p,
                check_every=settings.check_every,
                min_new=[max(0, settings.min_new_tokens - r.used) for r in text_rows],
            )
            for r, res in zip(text_rows, results, strict=True):
                text = [t for t in res.tokens if t != vocab.boi]
                if text:
                    r.segments.append(("text", text))
                r.context += res.tokens
                r.used += len(res.tokens)
                if res.stop == "boi":
                    image_rows.append(r)
                else:
                    r.stop = res.stop
            text_rows = []
        if image_rows:
            codes = generate_images(
                runner,
                [r.context[:-1] for r in image_rows],  # generate_images adds the opening BOI
                code_ids=code_ids,
                tokens_per_image=tpi,
                bos=vocab.bos,
                boi=vocab.boi,
                eoi=vocab.eoi,
                pad=vocab.pad,
                seeds=torch.tensor([r.seed for r in image_rows], device=dev),
                step_offsets=[r.used for r in image_rows],
                cfg_text=settings.cfg_text,
                cfg_image=settings.cfg_image,
                temperature=settings.image_temperature,
                top_p=settings.image_top_p,
            ).tolist()
            for r, row_codes in zip(image_rows, codes, strict=True):
                r.segments.append(("image", row_codes))
                r.context += code_ids[torch.tensor(row_codes, device=code_ids.device)].tolist() + [vocab.eoi]
                r.used += tpi + 1
                if r.mode == "interleaved" and r.used < r.budget and len(r.context) < masks.context:
                    text_rows.append(r)
                else:
                    r.stop = "image"
            image_rows = []
    return rows
