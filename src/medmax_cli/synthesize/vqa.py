"""`vqa`: visual question answering from `qa` records, in the three formats MedMax evaluates.

- closed: the source says closed (or the answer is "yes"/"no"); a yes/no gold is asked with a yes/no
  template, any other closed gold ("Is it focal or diffuse?" -> "Diffuse") with the open templates,
  kept as a closed VQA instance like MedMax's (its closed scorer counts a non-yes/no gold as wrong);
- multiple_choice: options lettered A, B, C, ... one per line, the answer is the letter alone
  (scored by: first generated token == letter);
- open: free text (scored by an LLM judge).
Evaluation items (`meta.eval_task` set) always get template 0 so that every model is asked the
same prompt; training items get a paraphrase chosen by the seeded hash. Questions, answers and
options are used verbatim (never stripped or re-spaced); a released eval prompt
(`meta.verbatim_prompt`) is asked byte for byte.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from typing import Any

from medmax_cli.synthesize.common import BuildContext, Drop, image_parts, new_instance, text, turn
from medmax_cli.synthesize.textutil import normalise, pick

TASK = "vqa"
MAX_OPTIONS = 8  # letters A..H; the benchmarks MedMax uses have 2 to 5 options
TEMPLATES = {
    "closed": (
        "{question}\nAnswer with yes or no.",
        "{question} Please answer yes or no.",
        "Look at the image and answer with a single word, yes or no: {question}",
    ),
    "open": (
        "{question}\nAnswer the question using a single word or phrase.",
        "{question}",
        "Based on the image, answer briefly: {question}",
    ),
    "multiple_choice": (
        "{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
        "{question}\nOptions:\n{options}\nReply with the letter of the correct option.",
        "Choose the correct option for the question about this image.\n{question}\n{options}\n"
        "Answer with the letter only.",
    ),
}
YES_NO = {"yes": "yes", "no": "no", "y": "yes", "n": "no", "true": "yes", "false": "no"}


def question_type(record: Mapping[str, Any]) -> str:
    """The declared type, or: options -> multiple_choice, yes/no answer -> closed, else open."""
    declared = record.get("question_type")
    if declared in TEMPLATES:
        return str(declared)
    if declared in ("mcq", "multiple-choice", "mc"):
        return "multiple_choice"
    if record.get("options"):
        return "multiple_choice"
    return "closed" if normalise(str(record.get("answer", ""))) in ("yes", "no") else "open"


def gold_letter(answer: str, options: list[str]) -> str | None:
    """The letter of the gold option: the answer is a letter (A, "b", "(C)", "D.") or an option's text."""
    letters = string.ascii_uppercase[: len(options)]
    stripped = answer.strip().strip("().:").strip().upper()
    if len(stripped) == 1 and stripped in letters:
        return stripped
    wanted = normalise(answer)
    for letter, option in zip(letters, options, strict=True):
        if normalise(option) == wanted:
            return letter
    return None


def build(record: Mapping[str, Any], ctx: BuildContext, domain: str) -> Iterator[dict[str, Any] | Drop]:
    meta = record.get("meta") or {}
    verbatim = bool(meta.get("verbatim_prompt"))  # e.g. the MedMax eval prompts: ask them byte for byte
    question = str(record.get("question") or "")
    answer = str(record.get("answer") or "")
    if not question.strip():
        yield Drop("vqa: empty question", TASK)
        return
    if not answer.strip():
        yield Drop("vqa: empty answer", TASK)
        return
    images = record.get("images") or []
    if not images:
        yield Drop("vqa: qa record has no image", TASK)
        return
    qtype = question_type(record)
    extra: dict[str, Any] = {}
    fields = {"question": question}
    family = qtype
    gold = answer
    if qtype == "closed" and YES_NO.get(normalise(answer)) is None:
        family = "open"  # a closed question whose gold is not yes/no: asked without "yes or no"
    elif qtype == "multiple_choice":
        options = [str(o) for o in record.get("options") or []]
        if verbatim and not options:
            # The options live only inside the prompt: the gold must then be a letter.
            options = [""] * MAX_OPTIONS
            extra_options: list[str] | None = None
        else:
            extra_options = options
        if not 2 <= len(options) <= MAX_OPTIONS:
            yield Drop(f"vqa: multiple choice needs 2 to {MAX_OPTIONS} options, got {len(options)}", TASK)
            return
        letter = gold_letter(answer, options)
        if letter is None:
            yield Drop(f"vqa: answer {answer[:40]!r} is neither an option letter nor an option", TASK)
            return
        gold = letter
        fields["options"] = "\n".join(
            f"{ltr}. {opt}" for ltr, opt in zip(string.ascii_uppercase, options, strict=False)
        )
        if extra_options is not None:
            extra["options"] = extra_options
    templates = TEMPLATES[family]
    if verbatim:
        index, template = -1, "{question}"
        fields = {"question": question}
    elif meta.get("eval_task"):
        index, template = 0, templates[0]
    else:
        index, template = pick(templates, ctx.seed, record["id"], TASK)
    instance = new_instance(
        record,
        TASK,
        None,
        domain=domain,
        turns=[
            turn("user", image_parts(len(images)), text(template.format(**fields))),
            turn("assistant", text(gold)),
        ],
        meta={"template": index, "template_family": family, "question": question},
    )
    instance.update({"answer": gold, "question_type": qtype, **extra})
    yield instance
