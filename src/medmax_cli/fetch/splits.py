"""One split vocabulary for every reader: `train`, `validation`, `test`.

Sources name their splits their own way (ROCOv2 `valid`, SLAKE `validate`, MIMIC-CXR `validate`,
MEVF `trainset.json`/`testset.json`): each record carries the canonical name in `meta.split` and
the source's own in `meta.source_split`. A file whose split cannot be told is never defaulted to
train: it is refused with guidance to state it (`--split NAME` labels such a file), because a
test item that comes out as `train` defeats `fetch --split train`.
"""

from __future__ import annotations

import re
from typing import Any

from medmax_cli.records import RecordError

SPLITS = ("train", "validation", "test")
ALIASES = {
    "train": "train",
    "training": "train",
    "trainset": "train",
    "validation": "validation",
    "valid": "validation",
    "validate": "validation",
    "val": "validation",
    "dev": "validation",
    "validset": "validation",
    "valset": "validation",
    "test": "test",
    "testing": "test",
    "testset": "test",
    "test_clean": "test",
}


def canonical_split(name: Any) -> str | None:
    """'valid' -> 'validation', 'testset' -> 'test', 'train_2' -> 'train'; None if not a split name."""
    if name is None:
        return None
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    key = re.sub(r"_\d+$", "", key)  # PMC-VQA v2: train_2 / test_2
    return ALIASES.get(key)


def split_meta(source_split: Any, split: str) -> dict[str, Any]:
    """The `meta` entries every reader writes: the canonical split and the source's own name."""
    return {"split": split, "source_split": None if source_split is None else str(source_split)}


class UnknownSplit(RecordError):
    """A file whose split the source does not state in a way we can read."""

    def __init__(self, what: str, why: str):
        super().__init__(
            f"{what}: cannot tell whether it holds train, validation or test items ({why}); "
            f"a file of one split can be named with --split train, --split validation or --split test "
            f"(its records are then labelled so)",
            where=None,
            cls="split unknown",
        )


def parse_split_filter(spec: str | None) -> frozenset[str] | None:
    """`--split test,valid` -> {'test', 'validation'}; an unknown name is a ValueError."""
    if not spec:
        return None
    out = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        split = canonical_split(part)
        if split is None:
            raise ValueError(f"--split {part!r} is not a split: use {', '.join(SPLITS)}")
        out.add(split)
    return frozenset(out) or None


def resolve_split(source_split: Any, *, what: str, assume: str | None) -> tuple[str, Any]:
    """(canonical split, source's name) for a file or row; `assume` (one --split given by the user)
    labels a file whose split cannot be told, else it is refused (UnknownSplit)."""
    split = canonical_split(source_split)
    if split is not None:
        return split, source_split
    if assume is not None:
        return assume, source_split
    raise UnknownSplit(
        what, f"its split name {source_split!r} is not one we know" if source_split else "no split name"
    )
