"""Image generation with three-row classifier-free guidance (REFERENCE.md 6, Anole / MedMax).

Each image is decoded on three rows fed the same sampled token:

- `c`: the full prompt (conditional on text and images), then BOI;
- `i`: the image-only prompt: the prompt's tokens that are BOS, BOI, EOI or image codes, in order,
  then BOI (Anole's `ImageDecoder._split_inputs_for_cfg`); for a well-formed prompt (one leading
  BOS, complete blocks: what `stage` admits) that is BOS + the prompt's image blocks;
- `u`: unconditional, `[BOS, BOI]`.

The guided logits are `u + cfg_image * (i - u) + cfg_text * (c - i)`, then temperature and top-p
sampling over the image codes only. Exactly `tokens_per_image` codes are drawn; the caller frames
them with BOI/EOI. With both weights 1 the formula reduces to `c`, and only that row is run.
"""

from __future__ import annotations

import torch

from medmax_cli.generate.decode import Runner, left_pad
from medmax_cli.generate.sampling import sample


def combine_cfg(c: torch.Tensor, i: torch.Tensor, u: torch.Tensor, *, cfg_text: float, cfg_image: float):
    """Guided logits [B, K] from the three rows' logits (each [B, K])."""
    return u + cfg_image * (i - u) + cfg_text * (c - i)


def image_only_prompt(
    ids: list[int], *, bos: int, boi: int, eoi: int, image_ids: frozenset[int]
) -> list[int]:
    """The tokens of `ids` that are BOS, BOI, EOI or image codes (`image_ids`), in order."""
    keep = image_ids | {bos, boi, eoi}
    return [tok for tok in ids if tok in keep]


@torch.no_grad()
def generate_images(
    runner: Runner,
    full_prompts: list[list[int]],
    *,
    code_ids: torch.Tensor,
    tokens_per_image: int,
    bos: int,
    boi: int,
    eoi: int,
    pad: int,
    seeds: torch.Tensor,
    step_offsets: list[int] | None = None,
    cfg_text: float = 3.0,
    cfg_image: float = 1.2,
    temperature: float = 0.7,
    top_p: float = 0.9,
) -> torch.Tensor:
    """Sample one image per prompt; returns VQ codes [B, tokens_per_image] (long, on the device).

    `full_prompts[b]` is the context WITHOUT the opening BOI (added here); `code_ids` [K] maps a
    VQ code to its token id.
    """
    dev = runner.device
    b = len(full_prompts)
    guided = not (cfg_text == 1.0 and cfg_image == 1.0)
    rows: list[list[int]] = []
    image_ids = frozenset(code_ids.tolist()) if guided else frozenset()
    for p in full_prompts:
        rows.append(p + [boi])
        if guided:
            rows.append(image_only_prompt(p, bos=bos, boi=boi, eoi=eoi, image_ids=image_ids) + [boi])
            rows.append([bos, boi])
    g = 3 if guided else 1
    lengths = torch.tensor([len(r) for r in rows], device=dev)
    offsets = torch.tensor(step_offsets or [0] * b, device=dev)
    ids, attn = left_pad(rows, pad, dev)
    width = ids.shape[1]
    cache = runner.new_cache(len(rows), width + tokens_per_image)
    hidden = runner.prefill(ids, attn, cache)
    codes = torch.empty((b, tokens_per_image), dtype=torch.long, device=dev)
    for t in range(tokens_per_image):
        logits = runner.logits(hidden, code_ids).view(b, g, -1)  # [B, g, K]
        if guided:
            logits = combine_cfg(
                logits[:, 0], logits[:, 1], logits[:, 2], cfg_text=cfg_text, cfg_image=cfg_image
            )
        else:
            logits = logits[:, 0]
        code = sample(logits, temperature=temperature, top_p=top_p, seeds=seeds, steps=offsets + t)  # [B]
        codes[:, t] = code
        if t + 1 == tokens_per_image:
            break
        tok = code_ids[code].repeat_interleave(g)  # the same token on the c, i and u rows
        hidden = runner.step(tok, lengths + t, width + t, cache)
    return codes
