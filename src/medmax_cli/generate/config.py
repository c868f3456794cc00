"""The settings of a generation run, importable without torch (the command validates flags first)."""

from __future__ import annotations

from dataclasses import dataclass

from medmax_cli.generate.prompt import MODES, PROMPT_FORMATS

DEFAULT_TEXT_TOKENS = 256


@dataclass(frozen=True)
class Settings:
    """Sampling settings shared by a batch (see GenerateConfig for the defaults)."""

    repetition_penalty: float = 1.2
    temperature: float = 0.0
    top_p: float = 0.9
    cfg_text: float = 3.0
    cfg_image: float = 1.2
    image_temperature: float = 0.7
    image_top_p: float = 0.9
    check_every: int = 16
    min_new_tokens: int = 0


@dataclass(frozen=True)
class GenerateConfig:
    """Every knob of a generation run (flags map one to one)."""

    mode: str = "auto"  # auto | text | image | interleaved (auto: from the instance's task)
    max_new_tokens: int | None = None  # None: text 256; image: one block; interleaved: 256 + one block
    min_new_tokens: int = 0  # EOS suppressed until this many new tokens (0: MedMax evaluation)
    seed: int = 0  # same seed + same input = same output (per-record seeds derive from it and the id)
    batch_size: int = 8  # records decoded together (left-padded)
    prompt_format: str = "sft"  # sft: user turn closed by SEP (as pack trains); raw: no SEP
    repetition_penalty: float = 1.2  # MedMax evaluation default, text steps only
    temperature: float = 0.0  # text: 0 = greedy (MedMax evaluation), > 0 samples
    top_p: float = 0.9  # text sampling
    cfg_text: float = 3.0  # image CFG weight of (c - i)
    cfg_image: float = 1.2  # image CFG weight of (i - u)
    image_temperature: float = 0.7
    image_top_p: float = 0.9
    check_every: int = 16  # text loop: look at the device's "all finished?" flag every N steps

    def check(self) -> None:
        """Raise ValueError naming the bad field (the command turns it into exit status 2)."""
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be at least 1")
        if self.min_new_tokens < 0:
            raise ValueError("--min-new-tokens must be >= 0")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if self.repetition_penalty <= 0:
            raise ValueError("--repetition-penalty must be positive")
        for name in ("top_p", "image_top_p"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must lie in (0, 1]")
        if self.temperature < 0 or self.image_temperature < 0:
            raise ValueError("temperatures must be >= 0")

    def settings(self) -> Settings:
        return Settings(
            repetition_penalty=self.repetition_penalty,
            temperature=self.temperature,
            top_p=self.top_p,
            cfg_text=self.cfg_text,
            cfg_image=self.cfg_image,
            image_temperature=self.image_temperature,
            image_top_p=self.image_top_p,
            check_every=self.check_every,
            min_new_tokens=self.min_new_tokens,
        )
