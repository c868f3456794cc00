"""Logits processors as precomputed boolean masks on the device.

Everything that decides which tokens may come next is built once per run from the vocabulary
(`ChameleonVocab`) and applied with `masked_fill`/`where`: no per-step Python over the vocabulary
and no host synchronisation inside the decode loop.

Text steps follow Anole's `TextDecoder._allowed_tokens` (GAIR-NLP/anole chameleon/inference/
chameleon.py): allowed = EOS + the text tokens by Anole's name rule (`ChameleonVocab.anole_text_mask`:
no image code, no name starting with `<` except `<` itself), and BOI only when images are allowed
and Anole's room rule holds (see `decode.generate_text`). Image steps use the image-code rows of the
head directly (see `decode.Runner.logits`), so they need no mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medmax_cli.text.vocab import ChameleonVocab


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF/CTRL repetition penalty on every token in `history` (prompt included), in place.

    logits [B, V] float, history long [B, T] (padding may appear: its logit is -inf anyway). A
    seen logit is divided by `penalty` when positive and multiplied by it when negative. Gather and
    scatter touch T entries per row instead of the whole vocabulary.
    """
    score = logits.gather(1, history)  # [B, T]
    score = torch.where(score > 0, score / penalty, score * penalty)
    return logits.scatter_(1, history, score)


def text_logits(
    logits: torch.Tensor,
    *,
    history: torch.Tensor,
    masks: TextMasks,
    repetition_penalty: float,
    boi_allowed: torch.Tensor,
    eos_allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """One text step's processed logits [B, V], Anole's chain before temperature and top-p: allowed
    tokens, the BOI room rule, repetition penalty over `history` (masked ids stay -inf either way)."""
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history, repetition_penalty)
    return masks.apply(logits, boi_allowed=boi_allowed, eos_allowed=eos_allowed)


@dataclass(frozen=True, eq=False)
class TextMasks:
    """Token masks and the ids a text loop needs, on one device."""

    blocked: torch.Tensor  # bool [V]: everything but text tokens + EOS (BOI handled separately)
    boi: int
    eos: int
    pad: int
    vocab_size: int
    context: int  # the model's context length (max_position_embeddings)
    image_block: int  # BOI + tokens_per_image codes + EOI

    @classmethod
    def build(
        cls,
        vocab: ChameleonVocab,
        *,
        vocab_size: int,
        context: int,
        tokens_per_image: int,
        device: torch.device | str,
    ) -> TextMasks:
        text = torch.zeros(vocab_size, dtype=torch.bool)
        rule = vocab.anole_text_mask if vocab.anole_text_mask is not None else vocab.text_token_mask
        n = min(vocab_size, rule.shape[0])
        text[:n] = torch.from_numpy(rule[:n].copy())
        text[torch.from_numpy(vocab.image_code_to_id.copy())] = False
        for special in (vocab.bos, vocab.pad, vocab.sep, vocab.image_placeholder, vocab.boi, vocab.eoi):
            text[special] = False  # `<...>` names, so already out by the rule; kept explicit
        text[vocab.eos] = True
        return cls(
            blocked=(~text).to(device),
            boi=vocab.boi,
            eos=vocab.eos,
            pad=vocab.pad,
            vocab_size=vocab_size,
            context=context,
            image_block=tokens_per_image + 2,
        )

    def apply(
        self, logits: torch.Tensor, *, boi_allowed: torch.Tensor, eos_allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """logits [B, V] -> logits with disallowed ids at -inf; boi_allowed / eos_allowed bool [B]."""
        out = logits.masked_fill(self.blocked, float("-inf"))
        neg = torch.full_like(logits[:, self.boi], float("-inf"))
        out[:, self.boi] = torch.where(boi_allowed, logits[:, self.boi], neg)
        if eos_allowed is not None:  # --min-new-tokens
            out[:, self.eos] = torch.where(eos_allowed, out[:, self.eos], neg)
        return out
