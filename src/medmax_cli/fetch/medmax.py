"""MedMax's own releases: the training rows (`train.jsonl`) and the evaluation parquet.

Training rows carry `text` (prompt, `<reserved08706>`, response; images as literal `<image>`),
`tokens`, `image_path`, `task`, `source`, `credential`. Rows with tokens are kept pre-tokenised;
rows with text but no tokens become task instances whose turns are the text split on the separator
(user, assistant, user, ...) and on `<image>` (the row's images in order). Credentialed rows
(`credential: yes`) ship without tokens or images: once the user has completed them with the
MIMIC-CXR image paths (or tokens; MedMax's README explains how) they train like the others;
until then they are counted as skipped, with that reason.

The evaluation parquet (task_name, question_type, prompt, answer, image_path) holds five families;
docs/eval-families.md is the contract for the records each becomes (what MedMax's evaluation/*.py
read from each row).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from medmax_cli.fetch.figures import skip
from medmax_cli.fetch.rows import Row, emit, find, image_file, jsonl_lines, parquet_files, parquet_rows
from medmax_cli.fetch.splits import split_meta
from medmax_cli.media import MediaStore
from medmax_cli.records import RecordError, make_id
from medmax_cli.streams import ErrorPolicy

IMAGE = "<image>"
SEPARATOR = "<reserved08706>"

# MedMax's task names ("VQA", "Image Captioning", "mm_out", ...) -> this toolkit's task names.
TASK_NAMES = {
    "visual_chat": "visual_chat",
    "visualchat": "visual_chat",
    "chat": "visual_chat",
    "vqa": "vqa",
    "image_captioning": "captioning",
    "captioning": "captioning",
    "multimodal_generation": "interleaved",
    "interleaved": "interleaved",
    "interleaved_generation": "interleaved",
    "mm_out": "interleaved",
    "image_generation": "image_generation",
    "report_understanding": "report_understanding",
    "report_generation": "report_understanding",
}


def task_of(name: Any) -> str | None:
    key = re.sub(r"[\s\-]+", "_", str(name or "").strip().lower())
    return TASK_NAMES.get(key)


def text_turns(text: str, n_images: int) -> list[dict[str, Any]]:
    """`prompt<reserved08706>response[<reserved08706>...]` -> user/assistant turns, `<image>` -> images
    0, 1, ... in order. Raises when the placeholders and the image paths disagree.

    Kept so that packing the turns gives exactly the tokens MedMax's src/tokenization.py gives the
    row (`[BOS] + encode(text) + [EOS]`, `<image>` replaced by the image block): every piece of text
    is kept verbatim, whitespace-only ones included (only empty strings, which encode to nothing,
    are left out), a turn may be empty, and a closing separator becomes an empty last turn (the
    SEP that closes the turn before it is then packed, as MedMax tokenizes it)."""
    segments = text.split(SEPARATOR)
    if len(segments) < 2:
        raise RecordError(
            f"text has no {SEPARATOR} separator: cannot tell prompt from response",
            cls="text has no separator",
        )
    turns = []
    image = 0
    for i, segment in enumerate(segments):
        content: list[dict[str, Any]] = []
        pieces = segment.split(IMAGE)
        for j, piece in enumerate(pieces):
            if j > 0:
                content.append({"image": image})
                image += 1
            if piece:
                content.append({"text": piece})
        turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
    if image != n_images:
        raise RecordError(
            f"text has {image} {IMAGE} placeholder(s) but the row lists {n_images} image path(s)",
            cls="image placeholders and paths disagree",
        )
    return turns


def read_medmax(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
) -> Iterator[dict]:
    """Released MedMax rows (train.jsonl: text, tokens, image_path, task, source, credential)."""
    file = path if path.is_file() else find(path, "train.jsonl", "data/train.jsonl")
    root = images or file.parent

    def rows() -> Iterator[Row]:
        for line_no, line in jsonl_lines(file, policy):  # a Git LFS pointer is named as such
            yield f"{file}:{line_no}", lambda line=line, n=line_no: build(line, n)

    def build(line: bytes, n: int) -> dict | None:
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"not a JSON object ({exc})") from None
        if not isinstance(row, dict):
            raise RecordError(f"expected a JSON object, found {type(row).__name__}")
        credential = str(row.get("credential", "no")).strip().lower() in ("yes", "true", "1")
        paths = row.get("image_path") or []
        paths = [paths] if isinstance(paths, str) else [str(p) for p in paths if p]
        text = row.get("text") or ""
        tokens = row.get("tokens")
        record_id = make_id("medmax", n)
        if credential and not paths and not tokens:
            skip(
                policy,
                "credentialed row not completed: add its MIMIC-CXR image_path (see MedMax's README)",
                where=f"{file}:{n}",
                record_id=record_id,
            )
            return None
        refs = [image_file(media, root, p, f"row {n} image {p}") for p in paths]
        record: dict[str, Any] = {
            "id": record_id,
            "kind": "instance",
            "source": "medmax",
            "license": "medmax-mixed",
            "credential": credential,
            "images": refs,
            "text": text,
            "meta": {
                **split_meta(None, "train"),  # MedMax's training release
                "task": row.get("task"),
                "source": row.get("source"),
                "image_path": paths,
            },
        }
        if tokens:
            record["tokens"] = [int(t) for t in tokens]
            return record
        task = task_of(row.get("task"))
        if task is None:
            raise RecordError(f"unknown MedMax task {row.get('task')!r} (cannot build turns from its text)")
        record.update(task=task, turns=text_turns(text, len(refs)), domain=_domain(row))
        return record

    yield from emit(rows(), policy)


def _domain(row: dict[str, Any]) -> str:
    from medmax_cli.synthesize.domain import DOMAINS, classify_text

    tag = str(row.get("domain") or "").lower()
    return tag if tag in DOMAINS else classify_text(f"{row.get('source', '')} {row.get('text', '')}")


# --------------------------------------------------------------------------- evaluation parquet

_OPTION_LINE = re.compile(r"^\s*\(?([A-H])\s*[).:]\s*(.+?)\s*$")
VQA_TYPES = {"closed": "closed", "open": "open", "mcq": "multiple_choice"}
CAPTION_PROMPT = "Please describe this picture."  # MedMax's sft_prompt_processor, image_captioning
DETAIL_PROMPT = "Analyze the image in a comprehensive and detailed manner."  # visual_chat, detailed
LLAVA_DOMAINS = ("chest_xray", "mri", "histology", "gross", "ct_scan")  # MedMax's get_domain order
DOMAIN_OF_LLAVA = {
    "chest_xray": "radiology",
    "mri": "radiology",
    "ct_scan": "radiology",
    "histology": "histopathology",
    "gross": "other",
}
DOMAIN_OF_SOURCE = {"quilt": "histopathology", "report": "radiology"}


def options_in_prompt(prompt: str) -> list[str]:
    """Option texts listed one per line as "A: ...", "A. ...", "(A) ..." (consecutive letters from A)."""
    options: list[str] = []
    for line in prompt.splitlines():
        match = _OPTION_LINE.match(line)
        if match and ord(match.group(1)) - ord("A") == len(options):
            options.append(match.group(2))
    return options if len(options) >= 2 else []


def eval_family(task_name: str, question_type: str) -> str | None:
    if task_name in ("image_captioning", "image_generation", "visual_chat", "mm_out"):
        return task_name
    if question_type in VQA_TYPES:
        return "vqa"
    return None


def read_medmax_eval(
    path: Path, *, media: MediaStore, policy: ErrorPolicy, images: Path | None = None, **_: Any
) -> Iterator[dict]:
    """MedMax evaluation parquet, every family routed by task_name (docs/eval-families.md)."""
    root = images or (path if path.is_dir() else path.parent)
    ordinal = Counter[tuple[str, str]]()
    total = 0

    def build(file: Path, index: int, row: dict, n: int, rank: int) -> dict | None:
        task_name, qtype = str(row["task_name"]), str(row["question_type"])
        family = eval_family(task_name, qtype)
        where = f"{file.name}:{index}"
        if family is None:
            skip(policy, f"unknown MedMax eval family: {task_name}/{qtype}", where=where)
            return None
        prompt = str(row["prompt"] or "")
        raw_path = row.get("image_path")
        base = {
            "id": make_id("medmax_eval", task_name, qtype, n),
            "source": "medmax-eval",
            "license": "medmax-eval-mixed",
            "credential": False,
        }
        meta = {
            **split_meta(None, "test"),  # MedMax's evaluation release
            "eval_family": family,
            "eval_question_type": qtype,
            "eval_prompt": prompt,
            "eval_index": rank,
            "verbatim_prompt": True,
            "image_path": raw_path,
            "eval_row": f"{file}:{index}",
        }

        def image() -> dict[str, Any]:
            if not raw_path:
                raise RecordError(f"{task_name} row has no image_path")
            return image_file(media, root, str(raw_path), f"{where} image")

        answer = row.get("answer")
        answer = "" if answer is None else str(answer)
        if family == "vqa":
            options = options_in_prompt(prompt) if qtype == "mcq" else []
            return {
                **base,
                "kind": "qa",
                "question": prompt,
                "answer": answer,
                "question_type": VQA_TYPES[qtype],
                "images": [image()],
                **({"options": options} if options else {}),
                # The released prompt already holds the instruction (and the lettered options):
                # synthesize asks it word for word, as MedMax did.
                "meta": {"eval_task": f"{task_name}_{qtype}", **meta},
            }
        if family == "image_captioning":
            turns = [_turn("user", {"image": 0}, {"text": CAPTION_PROMPT})]
            if answer.strip():
                turns.append(_turn("assistant", {"text": answer}))
            return _instance(
                base, "captioning", [image()], turns, _source_domain(qtype, prompt, answer),
                {"eval_task": f"image_captioning_{qtype}", "eval_source": qtype, **meta},
            )  # fmt: skip
        if family == "image_generation":
            refs = [image()] if raw_path else []
            turns = [_turn("user", {"text": prompt})]
            if refs:
                turns.append(_turn("assistant", {"image": 0}))
            return _instance(
                base, "image_generation", refs, turns, _source_domain(qtype, prompt),
                {"eval_task": f"image_generation_{qtype}", "eval_source": qtype, **meta},
            )  # fmt: skip
        if family == "visual_chat":
            return _visual_chat(base, row, prompt, qtype, answer, image(), meta)
        # mm_out: the image is the ANSWER image, referenced only by the assistant turn.
        turns = [_turn("user", {"text": prompt}), _turn("assistant", {"text": answer}, {"image": 0})]
        return _instance(
            base, "interleaved", [image()], turns, _source_domain("", prompt, answer),
            {"eval_task": "mm_out", "reference_answer": answer, **meta},
        )  # fmt: skip

    def rows() -> Iterator[Row]:
        nonlocal total
        for file, index, row in parquet_rows(parquet_files(path), policy):
            key = (str(row.get("task_name")), str(row.get("question_type")))
            rank = ordinal[key]
            ordinal[key] += 1
            n = total
            total += 1
            yield f"{file}:{index}", lambda f=file, i=index, r=row, n=n, k=rank: build(f, i, r, n, k)

    for record in emit(rows(), policy):
        policy.report.count(f"eval {record['meta']['eval_family']}")
        yield record


def _turn(role: str, *parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": role, "content": list(parts)}


def _instance(
    base: dict[str, Any],
    task: str,
    images: list[dict[str, Any]],
    turns: list[dict[str, Any]],
    domain: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    return {**base, "kind": "instance", "task": task, "domain": domain, "images": images, "turns": turns,
            "meta": meta}  # fmt: skip


def _source_domain(source: str, *texts: str) -> str:
    from medmax_cli.synthesize.domain import classify_text

    return DOMAIN_OF_SOURCE.get(source) or classify_text(" ".join(texts))


def _visual_chat(
    base: dict[str, Any],
    row: dict[str, Any],
    prompt: str,
    qtype: str,
    answer: str,
    image: dict[str, Any],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """LLaVA-Med's protocol as MedMax ran it (evaluation/visual_chat.py)."""
    try:
        parsed = ast.literal_eval(answer)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise RecordError(f"visual_chat answer is not a dict literal ({type(exc).__name__})") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("gpt4_answer"), str):
        raise RecordError("visual_chat answer has no string 'gpt4_answer' (the reference answer)")
    question = prompt.replace(IMAGE, "").strip()
    if qtype == "detailed_description":
        user = [{"image": 0}, {"text": DETAIL_PROMPT}]
    elif prompt.endswith(IMAGE):
        user = [{"text": question}, {"image": 0}]
    else:
        user = [{"image": 0}, {"text": question}]
    flags = parsed.get("domain") if isinstance(parsed.get("domain"), dict) else {}
    llava_domain = next((d for d in LLAVA_DOMAINS if flags.get(d)), None)
    mention = parsed.get("in_text_mention")
    if isinstance(mention, list):
        mention = "\n".join(str(m.get("tokens", m) if isinstance(m, dict) else m) for m in mention)
    extra = {
        k: v
        for k, v in parsed.items()
        if k not in ("gpt4_answer", "fig_caption", "fig_label", "in_text_mention") and _json_safe(v)
    }
    return _instance(
        base,
        "visual_chat",
        [image],
        [_turn("user", *user), _turn("assistant", {"text": parsed["gpt4_answer"]})],
        DOMAIN_OF_LLAVA.get(llava_domain or "", "other"),
        {
            "eval_task": "visual_chat",
            "chat_type": qtype,
            "llava_domain": llava_domain,
            "caption": parsed.get("fig_caption"),
            "fig_label": parsed.get("fig_label"),
            "mention": mention,
            "reference_answer": parsed["gpt4_answer"],
            "eval_answer": extra,
            **meta,
        },
    )


def _json_safe(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True
