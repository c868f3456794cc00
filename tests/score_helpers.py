"""Builders of prediction records for the score tests (not a test module)."""

from __future__ import annotations

from typing import Any

TYPES = {
    "vqa_rad_closed": "closed",
    "vqa_rad_open": "open",
    "slake_closed": "closed",
    "slake_open": "open",
    "pathvqa_closed": "closed",
    "pathvqa_open": "open",
    "quiltvqa_closed": "closed",
    "quiltvqa_open": "open",
    "pmc_vqa": "multiple_choice",
    "omnimedvqa": "multiple_choice",
    "pathmmu": "multiple_choice",
    "probmed_closed": "closed",
}


def vqa(
    rid: str,
    eval_task: str,
    gold: str,
    output: str | None,
    *,
    options: list[str] | None = None,
    question: str = "Is there a lesion?",
    image: str | None = None,
) -> dict[str, Any]:
    """A vqa prediction record as `medmax generate` writes it (output None = no prediction)."""
    record: dict[str, Any] = {
        "id": rid,
        "task": "vqa",
        "domain": "radiology",
        "source": "test",
        "license": "cc0",
        "credential": False,
        "images": [{"path": image or f"img/{rid}.png"}],
        "turns": [
            {"role": "user", "content": [{"image": 0}, {"text": question}]},
            {"role": "assistant", "content": [{"text": gold}]},
        ],
        "answer": gold,
        "question_type": TYPES[eval_task],
        "meta": {"eval_task": eval_task},
    }
    if options is not None:
        record["options"] = options
    if output is not None:
        record["prediction"] = [{"text": output}]
        record["generation"] = {"max_new_tokens": 1}
    return record
