"""Prompts for generation: which mode an instance asks for, its prompt ids, the model's image size.

The prompt layout is pack's (`medmax_cli.pack.sequence.build_prompt_ids`), so generation sees
exactly what training showed the model: `[BOS] U1 [SEP] A1 [SEP] U2 [SEP]` for `sft`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medmax_cli.records import RecordError

MODES = ("auto", "text", "image", "interleaved")
PROMPT_FORMATS = ("sft", "raw")

# Tasks whose answer is text when the instance says nothing more precise.
_TEXT_TASKS = ("vqa", "captioning", "visual_chat", "report_understanding")


def tokens_per_image(model_dir: str | Path, config: Any | None = None) -> int:
    """Image codes per image: medmax_model.json, else the VQ config (resolution / 2^(levels-1))^2.

    Never assumed to be 1024: the tiny model has 64, Anole 32x32 = 1024.
    """
    info = Path(model_dir) / "medmax_model.json"
    if info.is_file():
        value = json.loads(info.read_text(encoding="utf-8")).get("tokens_per_image")
        if value:
            return int(value)
    if config is None:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    vq = config.get("vq_config") if isinstance(config, dict) else config.vq_config
    vq = vq if isinstance(vq, dict) else vq.to_dict()
    side = int(vq["resolution"]) // 2 ** (len(vq["channel_multiplier"]) - 1)
    return side * side


def _final_assistant(instance: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    turns = instance.get("turns") or []
    if turns and turns[-1].get("role") == "assistant":
        return list(turns[-1].get("content") or [])
    return None


def resolve_mode(instance: Mapping[str, Any], mode: str) -> str:
    """The concrete mode for one instance ("text", "image" or "interleaved").

    `auto`: image_generation -> image, interleaved -> interleaved, the image->text tasks -> text.
    report_understanding goes both ways, so its gold assistant turn decides when it has one.
    """
    if mode != "auto":
        return mode
    task = instance.get("task")
    if task == "image_generation":
        return "image"
    if task == "interleaved":
        return "interleaved"
    gold = _final_assistant(instance)
    if gold:
        has_image = any("image" in part for part in gold)
        has_text = any(part.get("text", "").strip() for part in gold)
        if has_image:
            return "interleaved" if has_text else "image"
    if task in _TEXT_TASKS or task is None:
        return "text"
    return "text"


def prompt_ids(instance: Mapping[str, Any], *, vocab, tokenizer, prompt_format: str = "sft") -> list[int]:
    """Prompt token ids (pack's layout); images must carry VQ tokens (from tokenize-images)."""
    from medmax_cli.pack.sequence import build_prompt_ids

    for i, image in enumerate(instance.get("images") or []):
        if image.get("tokens") is None and _is_prompt_image(instance, i):
            raise RecordError(
                f"images[{i}] has no VQ tokens: run `medmax tokenize-images` before `medmax generate`"
            )
    try:
        return build_prompt_ids(instance, vocab=vocab, tokenizer=tokenizer, prompt_format=prompt_format)
    except (KeyError, TypeError, IndexError) as exc:
        raise RecordError(f"malformed instance ({type(exc).__name__}: {exc})") from None


def _is_prompt_image(instance: Mapping[str, Any], index: int) -> bool:
    """Is image `index` referenced by a turn that goes into the prompt (not the gold answer)?"""
    turns = list(instance.get("turns") or [])
    if turns and turns[-1].get("role") == "assistant":
        turns = turns[:-1]
    return any(part.get("image") == index for turn in turns for part in turn.get("content") or [])
