"""Robust rules for free-form outputs: parse an answer, never guess.

- closed: the answer is a yes or no standing alone as the output's first clause ("Yes",
  "No.", "Yes, the lesion is normal"); a yes/no inside a clause is not an answer ("No
  abnormality is seen", "effusion and no pneumothorax", "No doubt, yes"), nor is a hedge
  ("yes and no", "No. Yes.").
- multiple choice: a unique option letter (a standalone capital letter of the option
  range, or the whole output being one letter such as "b", "(B)", "B."; a sentence-opening
  "A" or "I" followed by a word is the article or pronoun, not a letter), or else a unique
  option text found as whole words; if the letter and the text disagree, or more than one
  candidate remains, there is no answer.
No answer (None) means `unparsed`: never a guess. Nothing is matched approximately.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

VERSION = "robust@2"  # @2: no yes/no inside a clause, hedges and articles unparsed

_CAP_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
# "A" / "I" opening a sentence and followed by a word: the article or the pronoun
_OPENING_WORD = re.compile(r"(?:^|[.!?]\s)\W*([AI])\s+[A-Za-z]")
_ONLY_LETTER = re.compile(r"^\W*([A-Za-z])\W*$")
_SPACES = re.compile(r"\s+")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


_CLAUSE_BREAK = re.compile(r"[.,;:!?\n]+|\s[-\u2013\u2014]+\s")
_EDGE = re.compile(r"^[^a-z0-9]+|[^a-z0-9]+$")


def closed_answer(output: str) -> str | None:
    """Yes or no when the first clause is exactly that word and no later clause is exactly the
    other one; None otherwise (unparsed).

    >>> [closed_answer(t) for t in ("Yes, it is normal", "No abnormality is seen", "No. Yes")]
    ['yes', None, None]
    """
    clauses = [_EDGE.sub("", c) for c in _CLAUSE_BREAK.split(output.lower())]
    clauses = [c for c in clauses if c]
    if not clauses or clauses[0] not in ("yes", "no"):
        return None
    other = "no" if clauses[0] == "yes" else "yes"
    return None if other in clauses else clauses[0]


def closed_correct(output: str, gold: str) -> bool:
    gold = gold.strip().lower()
    if gold not in ("yes", "no"):
        raise ValueError(f"a closed question needs gold yes or no, got {gold!r}")
    return closed_answer(output) == gold


def letters_for(options: Sequence[str] | None, gold: str | None = None) -> str:
    """The option letters in play: A.. for the options given, else A..max(D, gold)."""
    if options:
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(options)]
    last = max("D", (gold or "D").strip().upper()[:1] or "D")
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: ord(last) - ord("A") + 1]


def _norm(text: str) -> str:
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def _letter_candidates(output: str, letters: str) -> set[str]:
    only = _ONLY_LETTER.match(output)
    if only and only.group(1).upper() in letters:
        return {only.group(1).upper()}
    openers = {m.start(1) for m in _OPENING_WORD.finditer(output)}
    return {
        m.group(1)
        for m in _CAP_LETTER.finditer(output)
        if m.group(1) in letters and m.start(1) not in openers
    }


def _text_candidates(output: str, options: Sequence[str], letters: str) -> set[str]:
    haystack = f" {_norm(output)} "
    matched = {}
    for letter, option in zip(letters, options, strict=False):
        needle = _norm(option)
        if needle and f" {needle} " in haystack:
            matched[letter] = needle
    # An option contained in another matched option ("x ray" in "chest x ray") is not a
    # second candidate: the longer exact match is the more specific one.
    return {
        letter
        for letter, needle in matched.items()
        if not any(other != needle and f" {needle} " in f" {other} " for other in matched.values())
    }


def mc_answer(output: str, options: Sequence[str] | None, gold: str | None = None) -> str | None:
    """The option letter the output gives, or None when there is none or more than one."""
    letters = letters_for(options, gold)
    by_letter = _letter_candidates(output, letters)
    by_text = _text_candidates(output, options, letters) if options else set()
    if len(by_letter) > 1 or len(by_text) > 1:
        return None
    if by_letter and by_text and by_letter != by_text:
        return None
    found = by_letter or by_text
    return next(iter(found)) if found else None


def mc_correct(output: str, gold: str, options: Sequence[str] | None = None) -> bool:
    return mc_answer(output, options, gold) == gold.strip().upper()


def open_exact(output: str, gold: str) -> bool:
    """Open answers equal after normalisation (case, punctuation, spaces): correct with no judge."""
    return bool(_norm(gold)) and _norm(output) == _norm(gold)
