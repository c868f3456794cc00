"""The MedMax evaluation suite: the 12 VQA tasks, defined once.

REFERENCE.md 7: the headline is the unweighted mean of these 12 accuracies. Every
other module (rules, summary, report, docs) reads this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

CLOSED, OPEN, MULTIPLE_CHOICE = "closed", "open", "multiple_choice"
QUESTION_TYPES = (CLOSED, OPEN, MULTIPLE_CHOICE)

# name -> (question type, display name); order is the order of MedMax's results table.
VQA_TASKS: dict[str, tuple[str, str]] = {
    "vqa_rad_closed": (CLOSED, "VQA-RAD closed"),
    "vqa_rad_open": (OPEN, "VQA-RAD open"),
    "slake_closed": (CLOSED, "SLAKE closed"),
    "slake_open": (OPEN, "SLAKE open"),
    "pathvqa_closed": (CLOSED, "PathVQA closed"),
    "pathvqa_open": (OPEN, "PathVQA open"),
    "quiltvqa_closed": (CLOSED, "QuiltVQA closed"),
    "quiltvqa_open": (OPEN, "QuiltVQA open"),
    "pmc_vqa": (MULTIPLE_CHOICE, "PMC-VQA"),
    "omnimedvqa": (MULTIPLE_CHOICE, "OmniMedVQA"),
    "pathmmu": (MULTIPLE_CHOICE, "PathMMU"),
    "probmed_closed": (CLOSED, "ProbMed closed"),
}
assert len(VQA_TASKS) == 12

# Metric of each non-VQA task family (REFERENCE.md 7).
METRIC_OF_TASK = {
    "vqa": "accuracy",
    "captioning": "clip_cosine",
    "image_generation": "clip_cosine",
    "interleaved": "clip_cosine",
    "visual_chat": "relative_score",
}


_BY_LETTERS = {name.replace("_", ""): name for name in VQA_TASKS}
_MC_SUFFIXES = ("_mcq", "_multiple_choice", "_mc")


@lru_cache(maxsize=4096)  # a handful of spellings per run, met once per item
def canonical_task(name: str) -> str:
    """One of the 12 names for the spellings readers use ("PMC-VQA", "pmc_vqa_mcq", "VQARAD_closed");
    any other name is returned unchanged."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    for suffix in _MC_SUFFIXES:
        stripped = key.removesuffix(suffix)
        if (
            stripped != key
            and VQA_TASKS.get(_BY_LETTERS.get(stripped.replace("_", ""), ""), ("",))[0] == MULTIPLE_CHOICE
        ):
            key = stripped
    return _BY_LETTERS.get(key.replace("_", ""), name)


def eval_task_of(record: Mapping[str, Any]) -> str:
    """The summary bucket of a record: meta.eval_task (canonical spelling), else its task family."""
    meta = record.get("meta") or {}
    name = meta.get("eval_task") if isinstance(meta, dict) else None
    return canonical_task(str(name)) if name else str(record.get("task") or "?")


def question_type_of(record: Mapping[str, Any], eval_task: str | None = None) -> str | None:
    """closed / open / multiple_choice: the record's own field, else the task table
    (`eval_task`: the record's eval_task_of, when the caller has it already)."""
    qtype = record.get("question_type")
    if qtype in QUESTION_TYPES:
        return str(qtype)
    known = VQA_TASKS.get(eval_task if eval_task is not None else eval_task_of(record))
    return known[0] if known else None
