"""MedMax's own rules, reproduced exactly (REFERENCE.md 7), quirks included.

These are deliberately naive: the closed rule is a substring test, so "normal" counts
as a "no" and "yes, no" is wrong for either gold. Use them to reproduce MedMax's table;
use `rules_robust` for free-form outputs.
"""

from __future__ import annotations

VERSION = "medmax@2"  # @2: MedMax's judge prompt and verdict parsing (issue 14)


def closed_correct(output: str, gold: str) -> bool:
    """Gold yes: output (lowercased) contains "yes" and not "no"; mirror for gold no.

    >>> closed_correct("Yes", "yes"), closed_correct("yes, normal", "yes")
    (True, False)
    """
    out = output.lower()
    gold = gold.strip().lower()
    if gold == "yes":
        return "yes" in out and "no" not in out
    if gold == "no":
        return "no" in out and "yes" not in out
    raise ValueError(f"a closed question needs gold yes or no, got {gold!r}")


def mc_correct(output: str, gold: str) -> bool:
    """`output.upper().strip() == gold letter`: "(B)" and "The answer is B" are wrong.

    >>> mc_correct(" b ", "B"), mc_correct("(B)", "B")
    (True, False)
    """
    return output.upper().strip() == gold.strip().upper()
