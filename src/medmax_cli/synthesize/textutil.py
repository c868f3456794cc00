"""Small text helpers shared by the builders and filters: normalisation and seeded choices."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> str:
    """Text as compared by dedup and decontamination: NFKC, lowercase, punctuation and runs of
    whitespace folded into single spaces, so "Is this a CT image?" == "is this a ct image"."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", text).strip()


def clean(text: str) -> str:
    """Whitespace-collapsed text for output (keeps case and punctuation)."""
    return " ".join(text.split())


def seeded_index(seed: int, *parts: object, n: int) -> int:
    """A stable index in [0, n) from sha256 of "seed:part:part...": the same record and seed
    always pick the same template, independently of input order or Python's hash salt."""
    key = ":".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % n


def seeded_unit(seed: int, *parts: object) -> float:
    """A stable number in [0, 1) from the same hash (used by mixing to rank instances)."""
    key = ":".join([str(seed), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def pick(options: Sequence[T], seed: int, *parts: object) -> tuple[int, T]:
    """(index, option) chosen by `seeded_index`."""
    index = seeded_index(seed, *parts, n=len(options))
    return index, options[index]


def word_count(text: str) -> int:
    return len(text.split())
