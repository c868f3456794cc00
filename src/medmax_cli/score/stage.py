"""The score stage: predictions in, one scored line per item out.

A scored line: {"id", "eval_task", "task", "question_type", "metric", "rules", "score",
"status", "output", "gold", "parsed"?, "cluster"?, "judge"?, "reason"?, "extra"?} ("extra":
second scores of the same item, each its own summary bucket: the text half of an interleaved
answer, the per-domain visual-chat score), where status is
- "scored": the rule (or judge / CLIP) gave a score;
- "missing": no prediction for the item: score 0, the item stays in n;
- "unscored": nothing could score it (an open item with no judge, a similarity item with
  no CLIP model or no image): score null, it lowers coverage;
- "judge_failed": the judge's verdict did not parse after retries: score null, reported.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from medmax_cli.egress import payload
from medmax_cli.media import MediaError, MediaStore
from medmax_cli.records import RecordError, text_of
from medmax_cli.score import rules_medmax, rules_robust
from medmax_cli.score.judge import Judge, NotCached
from medmax_cli.score.similarity import Encoder
from medmax_cli.score.tasks import (
    CLOSED,
    METRIC_OF_TASK,
    MULTIPLE_CHOICE,
    OPEN,
    eval_task_of,
    question_type_of,
)
from medmax_cli.streams import ErrorPolicy, map_records

log = logging.getLogger(__name__)

RULE_SETS = {"medmax": rules_medmax.VERSION, "robust": rules_robust.VERSION}


@dataclass
class Scorer:
    """What scores an item: the rule set, and optionally a judge, a CLIP encoder, a media store."""

    rules: str = "medmax"
    judge: Judge | None = None
    encoder: Encoder | None = None
    media: MediaStore | None = None

    def __post_init__(self) -> None:
        if self.rules not in RULE_SETS:
            raise ValueError(f"rules must be one of {', '.join(RULE_SETS)}; got {self.rules!r}")

    @property
    def version(self) -> str:
        return RULE_SETS[self.rules]


class InputHash:
    """sha256 over the canonical JSON (sorted keys) of every input record, in order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def wrap(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            self._hash.update(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
            self.count += 1
            yield record

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def score_records(
    records: Iterable[dict[str, Any]],
    *,
    scorer: Scorer,
    policy: ErrorPolicy | None = None,
    expected: Iterable[dict[str, Any]] | None = None,
    workers: int = 1,
) -> Iterator[dict[str, Any]]:
    """Score every prediction; then every `expected` item never seen scores 0 as "missing".

    A duplicate id is an error (it would count an item twice), sent through `policy`.
    With `workers` > 1, items are scored by a thread pool (judge calls in flight at once),
    in windows, and written in input order.
    """
    policy = policy or ErrorPolicy()
    seen: set[str] = set()

    def check_id(record: dict[str, Any]) -> list[dict[str, Any]]:
        rid = record.get("id")
        if not isinstance(rid, str) or not rid:
            raise RecordError("prediction has no 'id'")
        if rid in seen:
            raise RecordError(f"duplicate id {rid!r}: each item must be scored once", record_id=rid)
        seen.add(rid)
        return [record]

    def one(record: dict[str, Any]) -> list[dict[str, Any]]:
        with payload(record):  # the judge's requests carry this record (egress policy)
            line = score_one(record, scorer)
        policy.report.count(line["status"])
        return [line]

    if workers <= 1:
        yield from map_records(map_records(records, check_id, policy), one, policy)
    else:
        yield from _threaded(records, check_id, one, policy, workers)
    for item in expected or ():
        if item.get("id") in seen:
            continue
        seen.add(item["id"])
        item = {k: v for k, v in item.items() if k != "prediction"}
        line = score_one(item, scorer)
        policy.report.count("missing")
        yield line


def _threaded(
    records: Iterable[dict[str, Any]], check: Any, fn: Any, policy: ErrorPolicy, workers: int
) -> Iterator[dict[str, Any]]:
    """map_records(check) then map_records(fn) on a thread pool: windows of 4 x workers items,
    results and errors handled in input order (so `fail` stops at the first bad record)."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    def attempt(step: Any, record: dict[str, Any]) -> list[dict[str, Any]] | Exception:
        try:
            return step(record)
        except (RecordError, MediaError) as exc:
            return exc

    iterator = iter(records)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="score") as pool:
        while window := list(islice(iterator, 4 * workers)):
            checked = [attempt(check, record) for record in window]  # in order: ids are stateful
            futures = [
                None if isinstance(c, Exception) else pool.submit(attempt, fn, r)
                for r, c in zip(window, checked, strict=True)
            ]
            for record, c, future in zip(window, checked, futures, strict=True):
                result = c if future is None else future.result()
                if isinstance(result, Exception):
                    policy.reject(result, record)
                else:
                    yield from result


# --------------------------------------------------------------------------- one item


def _last_text(record: Mapping[str, Any], role: str) -> str:
    for turn in reversed(record.get("turns") or []):
        if turn.get("role") == role:
            return text_of(turn.get("content") or [])
    return ""


def _output(record: Mapping[str, Any]) -> str | None:
    """The prediction's text (None: no prediction). Checks the content list, since the command
    reads records without the full schema check (score validates only the fields it reads)."""
    prediction = record.get("prediction")
    if prediction is None:
        return None
    if isinstance(prediction, str):
        return prediction
    if not isinstance(prediction, list):
        raise RecordError("field 'prediction' must be a content list")
    texts = []
    for part in prediction:
        text = part.get("text") if type(part) is dict else None
        if type(text) is str:
            texts.append(text)
        elif type(part) is not dict or "image" not in part:
            raise RecordError("prediction parts must be {'text': str} or {'image': int}")
    return "".join(texts)


def _image_index(content: Any) -> int | None:
    for part in content or []:
        if isinstance(part, Mapping) and "image" in part:
            return int(part["image"])
    return None


def _cluster(record: Mapping[str, Any]) -> str | None:
    images = record.get("images") or []
    if images and isinstance(images[0], dict):
        return images[0].get("sha256") or images[0].get("path") or images[0].get("url")
    return None


def score_one(record: Mapping[str, Any], scorer: Scorer) -> dict[str, Any]:
    """The scored line of one prediction (or of an expected item with no prediction)."""
    task = str(record.get("task") or "vqa")
    eval_task = eval_task_of(record)
    output = _output(record)
    line: dict[str, Any] = {
        "id": record["id"],
        "eval_task": eval_task,
        "task": task,
        "question_type": question_type_of(record) if task == "vqa" else None,
        "metric": METRIC_OF_TASK.get(task, "accuracy"),
        "rules": scorer.version,
        "score": None,
        "status": "scored",
        "output": output,
        "gold": record.get("answer") if task == "vqa" else None,
        "cluster": _cluster(record),
    }
    if output is None:
        line.update(score=0.0, status="missing")
        return line
    if task == "vqa":
        _score_vqa(record, output, scorer, line)
    elif task == "visual_chat":
        _score_chat(record, output, scorer, line)
    elif task in ("captioning", "image_generation", "interleaved"):
        if task == "interleaved":
            line["extra"] = {"interleaved_text": _interleaved_text(record, output, scorer)}
        _score_similarity(record, task, output, scorer, line)
    else:
        line.update(status="unscored", reason=f"no metric for task {task!r}")
    return line


def _score_vqa(record: Mapping[str, Any], output: str, scorer: Scorer, line: dict[str, Any]) -> None:
    gold = record.get("answer")
    if not isinstance(gold, str):
        raise RecordError("a vqa item needs a string 'answer' (the gold answer)")
    qtype = line["question_type"]
    robust = scorer.rules == "robust"
    try:
        if qtype == CLOSED:
            if robust:
                line["parsed"] = rules_robust.closed_answer(output)
                ok = rules_robust.closed_correct(output, gold)
            else:
                ok = rules_medmax.closed_correct(output, gold)
        elif qtype == MULTIPLE_CHOICE:
            if robust:
                line["parsed"] = rules_robust.mc_answer(output, record.get("options"), gold)
                ok = line["parsed"] == gold.strip().upper()
            else:
                ok = rules_medmax.mc_correct(output, gold)
        elif qtype == OPEN:
            _score_open(record, output, gold, scorer, line)
            return
        else:
            raise RecordError(f"vqa item has no question_type (closed, open, multiple_choice): {qtype!r}")
    except ValueError as exc:
        raise RecordError(str(exc)) from None
    line["score"] = 1.0 if ok else 0.0


def _score_open(
    record: Mapping[str, Any], output: str, gold: str, scorer: Scorer, line: dict[str, Any]
) -> None:
    if not output.strip():
        line["score"] = 0.0  # nothing to judge: an empty answer is wrong
        return
    if scorer.rules == "robust" and rules_robust.open_exact(output, gold):
        line.update(score=1.0, parsed="exact")
        return
    if scorer.judge is None:
        line.update(status="unscored", reason="open question needs a judge (--judge-url, --judge-model)")
        return
    meta = record.get("meta") or {}
    # the bare question (synthesize keeps it in meta) rather than the prompt with its answer instructions
    question = str(meta.get("question") or record.get("question") or _last_text(record, "user"))
    try:
        verdict = scorer.judge.correctness(line["id"], question, gold, output)
    except NotCached as exc:
        line.update(status="unscored", reason=str(exc))
        return
    line.update(score=verdict.score, judge=verdict.as_dict())
    if verdict.status != "ok":
        line.update(status="judge_failed", reason="judge verdict did not parse after retries")


def _score_chat(record: Mapping[str, Any], output: str, scorer: Scorer, line: dict[str, Any]) -> None:
    if scorer.judge is None:
        line.update(status="unscored", reason="visual chat needs a judge (--judge-url, --judge-model)")
        return
    context = _context(record)
    reference = _last_text(record, "assistant")
    line["gold"] = reference
    try:
        verdict = scorer.judge.relative(line["id"], context, _last_text(record, "user"), reference, output)
    except NotCached as exc:
        line.update(status="unscored", reason=str(exc))
        return
    line.update(score=verdict.score, judge=verdict.as_dict())
    if verdict.status != "ok":
        line.update(status="judge_failed", reason="judge scores did not parse after retries")
    if record.get("domain"):  # LLaVA-Med reports the relative score per domain too
        line["extra"] = {f"visual_chat_{record['domain']}": verdict.score}


def _score_similarity(
    record: Mapping[str, Any], task: str, output: str, scorer: Scorer, line: dict[str, Any]
) -> None:
    from medmax_cli.score import similarity

    if scorer.encoder is None:
        line.update(status="unscored", reason="similarity needs a CLIP model (--clip-model DIR)")
        return
    media = scorer.media or MediaStore()
    images = record.get("images") or []
    generated = _image_index(record.get("prediction"))

    def load(index: int | None, what: str):
        if index is None or not 0 <= index < len(images):
            return None
        try:
            return media.open(images[index], what=f"record {line['id']!r} {what}")
        except MediaError as exc:
            line["reason"] = str(exc)
            return None

    if task == "captioning":
        # reference-free: the input image against the generated caption
        image = load(_image_index(_user_content(record)), "input image")
        if image is None or not output.strip():
            line.update(status="unscored", reason=line.get("reason") or "no input image or empty caption")
            return
        line["score"] = similarity.image_text_scores(scorer.encoder, [image], [output])[0]
    elif task == "image_generation":
        image = load(generated, "generated image")
        if image is None:
            line.update(status="unscored", reason=line.get("reason") or "no generated image")
            return
        line["score"] = similarity.image_text_scores(scorer.encoder, [image], [_last_text(record, "user")])[0]
    else:  # interleaved: generated image against the reference image of the gold answer
        reference_index = None
        for turn in reversed(record.get("turns") or []):
            if turn.get("role") == "assistant":
                reference_index = _image_index(turn.get("content"))
                break
        image, reference = load(generated, "generated image"), load(reference_index, "reference image")
        if image is None or reference is None:
            line.update(status="unscored", reason=line.get("reason") or "no generated or reference image")
            return
        line["score"] = similarity.image_image_scores(scorer.encoder, [image], [reference])[0]


def _context(record: Mapping[str, Any]) -> str:
    """What the judge sees of the image: the caption and the sentences that mention the figure."""
    meta = record.get("meta") or {}
    parts = [meta.get("caption"), meta.get("mention"), meta.get("context")]
    mentions = meta.get("mentions")
    if isinstance(mentions, list):
        parts += [m if isinstance(m, str) else (m or {}).get("sentence") for m in mentions]
    return "\n".join(str(p) for p in parts if p)


def _interleaved_text(record: Mapping[str, Any], output: str, scorer: Scorer) -> float | None:
    """The text half of an interleaved answer: the judge's relative score (None: unscored)."""
    if scorer.judge is None or not output.strip():
        return 0.0 if scorer.judge is not None else None
    context = _context(record)
    try:
        verdict = scorer.judge.relative(
            f"{record['id']}:text",
            context,
            _last_text(record, "user"),
            _last_text(record, "assistant"),
            output,
        )
    except NotCached:
        return None
    return verdict.score


def _user_content(record: Mapping[str, Any]) -> list[Any]:
    for turn in record.get("turns") or []:
        if turn.get("role") == "user":
            return list(turn.get("content") or [])
    return []
