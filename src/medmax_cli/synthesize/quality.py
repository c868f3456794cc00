"""Caption quality rules: which captions are good enough to be a training target.

A caption is refused (reason in brackets) when it is missing ("caption missing"), shorter than
`min_words` ("caption too short"), longer than `max_words` ("caption too long"), mostly not
letters, e.g. a list of panel labels and numbers ("caption not prose"), or a known placeholder
such as "see text" ("caption placeholder").
"""

from __future__ import annotations

from medmax_cli.synthesize.textutil import normalise, word_count

PLACEHOLDERS = frozenset({"see text", "no caption", "caption", "image", "figure", "untitled", "n a", "none"})
MIN_LETTER_FRACTION = 0.5


def caption_problem(caption: str | None, *, min_words: int, max_words: int) -> str | None:
    """None for a usable caption, else a reason "bucket: detail"."""
    if not caption or not caption.strip():
        return "caption missing"
    words = word_count(caption)
    if normalise(caption) in PLACEHOLDERS:
        return f"caption placeholder: {caption.strip()[:40]!r}"
    if words < min_words:
        return f"caption too short: {words} words < {min_words}"
    if words > max_words:
        return f"caption too long: {words} words > {max_words}"
    visible = [c for c in caption if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters < MIN_LETTER_FRACTION * len(visible):
        return f"caption not prose: {letters} of {len(visible)} characters are letters"
    return None
