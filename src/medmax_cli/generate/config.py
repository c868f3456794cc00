"""The settings of a generation run, importable without torch (the command validates flags first).

Two presets name the decoding a user may want (docs/generate.md restates where each value comes from):

- `anole`: Anole's reference inference (GAIR-NLP/anole chameleon/inference/chameleon.py, `Options`):
  text sampled at temperature 1.0 with top-p 0.9 and repetition penalty 1.2; images at temperature
  0.7, top-p 0.9, CFG weights 3.0 (text) and 1.2 (image); generation runs to the context limit.
- `medmax-eval`: what MedMax's evaluation scripts pass (Hritikbansal/medmax evaluation/*.py through
  inference/inference_utils.py `chameleon_generate`, greedy=True): text greedy with repetition penalty
  1.2, images as Anole; the token budget per task (`eval_budget`).

`GenerateConfig.preset` None means per record: `medmax-eval` for evaluation items (`meta.eval_task`
set), `anole` otherwise. Any sampling flag the user gives overrides the preset's value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from medmax_cli.generate.prompt import MODES, PROMPT_FORMATS

PRESETS = ("anole", "medmax-eval")
ANOLE_SEGMENT = None  # Anole's max_gen_len (4,096) never binds below a 4,096-token context
MEDMAX_INTERLEAVED_SEGMENT = 1024  # evaluation/mm_out.py run_mm_out_eval: max_gen_len=1024


@dataclass(frozen=True)
class Settings:
    """Every decoding setting of one record (hashable: rows with equal settings share a batch)."""

    preset: str = "anole"
    max_new_tokens: int | None = None  # all new tokens of the record; None: up to the model's context
    text_segment: int | None = None  # most tokens per text run (BOI included); resets after an image
    repetition_penalty: float = 1.2
    temperature: float = 1.0  # text; 0 = greedy
    top_p: float = 0.9
    cfg_text: float = 3.0
    cfg_image: float = 1.2
    image_temperature: float = 0.7
    image_top_p: float = 0.9
    check_every: int = 16
    min_new_tokens: int = 0

    def record(self) -> dict[str, Any]:
        """The settings as a prediction record names them."""
        out = asdict(self)
        out.pop("check_every")
        return out


ANOLE = Settings(preset="anole")
MEDMAX_EVAL = Settings(preset="medmax-eval", temperature=0.0)

# Sampling options a flag can override (GenerateConfig field name = Settings field name).
SAMPLING_FIELDS = (
    "repetition_penalty",
    "temperature",
    "top_p",
    "cfg_text",
    "cfg_image",
    "image_temperature",
    "image_top_p",
)


def eval_budget(record: Mapping[str, Any], mode: str) -> tuple[int | None, int | None]:
    """(max_new_tokens, text_segment) MedMax's evaluation scripts use for this item (docs/generate.md
    cites each line, Hritikbansal/medmax at 20b7055).

    evaluation/vqa.py `run_vqa_eval`: closed and multiple choice 1 token, open 60; image_text.py
    `run_image_captioning_eval` and visual_chat.py `run_visual_chat_eval`: 4096 (the whole context);
    mm_out.py `run_mm_out_eval`: 1024 per text run, images allowed (the record's budget is the
    context, so an image block always has room while Anole's BOI rule allows one); image generation
    draws one image.
    """
    if mode == "interleaved":
        return None, MEDMAX_INTERLEAVED_SEGMENT
    if mode == "text" and record.get("task") == "vqa":
        from medmax_cli.score.tasks import question_type_of

        return (60 if question_type_of(record) == "open" else 1), None
    return None, None


def default_preset(record: Mapping[str, Any]) -> str:
    """medmax-eval for evaluation items (meta.eval_task), anole for everything else."""
    meta = record.get("meta")
    return "medmax-eval" if isinstance(meta, dict) and meta.get("eval_task") else "anole"


@dataclass(frozen=True)
class GenerateConfig:
    """Every knob of a generation run (flags map one to one; None = the preset's value)."""

    mode: str = "auto"  # auto | text | image | interleaved (auto: from the instance's task)
    preset: str | None = None  # anole | medmax-eval | None: per record (see default_preset)
    max_new_tokens: int | None = None  # None: the preset's budget (see Settings.max_new_tokens)
    text_segment: int | None = None  # most tokens per text run (None: the preset's; --text-run-tokens)
    min_new_tokens: int = 0  # EOS suppressed until this many new tokens (0: Anole and MedMax)
    seed: int = 0  # same seed + same input = same output (per-record seeds derive from it and the id)
    batch_size: int = 8  # records decoded together (left-padded)
    prompt_format: str = "sft"  # sft: user turn closed by SEP (as pack trains); raw: no SEP
    repetition_penalty: float | None = None  # text steps
    temperature: float | None = None  # text: 0 = greedy, > 0 samples
    top_p: float | None = None  # text sampling
    cfg_text: float | None = None  # image CFG weight of (c - i)
    cfg_image: float | None = None  # image CFG weight of (i - u)
    image_temperature: float | None = None
    image_top_p: float | None = None
    check_every: int = 16  # text loop: look at the device's "all finished?" flag every N steps

    def check(self) -> None:
        """Raise ValueError naming the bad field (the command turns it into exit status 2)."""
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be at least 1")
        if self.text_segment is not None and self.text_segment < 1:
            raise ValueError("--text-run-tokens must be at least 1")
        if self.min_new_tokens < 0:
            raise ValueError("--min-new-tokens must be >= 0")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        check_sampling({f: getattr(self, f) for f in SAMPLING_FIELDS})

    def overrides(self) -> dict[str, Any]:
        """The sampling values the user set (not None)."""
        return {f: getattr(self, f) for f in SAMPLING_FIELDS if getattr(self, f) is not None}

    def settings_for(self, record: Mapping[str, Any], mode: str) -> Settings:
        """The preset's settings for this record and mode, with the user's flags on top."""
        preset = self.preset or default_preset(record)
        base = ANOLE if preset == "anole" else MEDMAX_EVAL
        max_new, segment = (None, ANOLE_SEGMENT) if preset == "anole" else eval_budget(record, mode)
        if self.max_new_tokens is not None:
            max_new = self.max_new_tokens
        if self.text_segment is not None:
            segment = self.text_segment
        return replace(
            base,
            max_new_tokens=max_new,
            text_segment=segment,
            check_every=self.check_every,
            min_new_tokens=self.min_new_tokens,
            **self.overrides(),
        )

    def settings(self) -> Settings:
        """The settings of a record that is not an evaluation item (library callers, tests)."""
        return self.settings_for({}, "text")


def check_sampling(values: Mapping[str, float | None]) -> None:
    """NaN, infinity and out-of-range sampling options are refused before any input is read."""
    for name, value in values.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number; got {value}")
        if name in ("top_p", "image_top_p") and not 0 < value <= 1:
            raise ValueError(f"{flag} must lie in (0, 1]; got {value}")
        if name == "repetition_penalty" and value <= 0:
            raise ValueError(f"{flag} must be positive; got {value}")
        if name in ("temperature", "image_temperature", "cfg_text", "cfg_image") and value < 0:
            raise ValueError(f"{flag} must be >= 0; got {value}")
