"""Caption quality rules: which captions are good enough to be a training target.

A caption is refused (reason in brackets) when it is missing ("caption missing"), shorter than
`min_words` ("caption too short"), longer than `max_words` ("caption too long"), mostly not
letters, e.g. a list of panel labels and numbers ("caption not prose"), or a known placeholder
such as "see text" ("caption placeholder").
"""

from __future__ import annotations

from functools import lru_cache

from medmax_cli.synthesize.textutil import normalise

PLACEHOLDERS = frozenset({"see text", "no caption", "caption", "image", "figure", "untitled", "n a", "none"})
MIN_LETTER_FRACTION = 0.5


@lru_cache(maxsize=4096)  # three builders ask about the same caption of a figure
def caption_problem(caption: str | None, *, min_words: int, max_words: int) -> str | None:
    """None for a usable caption, else a reason "bucket: detail"."""
    if not caption or not caption.strip():
        return "caption missing"
    words = len(caption.split())
    if words <= 3 and normalise(caption) in PLACEHOLDERS:
        return f"caption placeholder: {caption.strip()[:40]!r}"
    if words < min_words:
        return f"caption too short: {words} words < {min_words}"
    if words > max_words:
        return f"caption too long: {words} words > {max_words}"
    visible = len("".join(caption.split()))
    letters = sum(map(str.isalpha, caption))
    if letters < MIN_LETTER_FRACTION * visible:
        return f"caption not prose: {letters} of {visible} characters are letters"
    return None
