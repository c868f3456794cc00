"""The score stage: predictions in, one scored line per item out.

A scored line: {"id", "eval_task", "task", "question_type", "metric", "rules", "score",
"status", "output", "gold", "parsed"?, "cluster"?, "judge"?, "reason"?, "extra"?, "credential"?}
("credential": true only when the item is credentialed; "extra":
second scores of the same item, each its own summary bucket: the text half of an interleaved
answer, the per-domain visual-chat score), where status is
- "scored": the rule (or judge / CLIP) gave a score;
- "missing": no prediction for the item: score 0, the item stays in n;
- "unscored": nothing could score it (an open item with no judge, a similarity item with
  no CLIP model or no image): score null, it lowers coverage;
- "judge_failed": the judge's verdict did not parse after retries (robust): score null, reported;
- "judge_error": a judge request got no reply (transport error, timeout, HTTP error status,
  no choices, null content): score null, never cached, asked again by the next run; the
  summary counts it apart and is not complete while any remain (MedMax has no number for it);
- "dropped": a judge reply MedMax's parser cannot score (medmax): score null, out of the mean
  as MedMax keeps it out, counted, and 0 in the summary's all-items figure;
- "unparsed": robust rules found no clear answer and no judge was asked: score null, counted;
- "rejected": (with --expect) the item's prediction was rejected as a bad record: score null.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from medmax_cli.egress import payload
from medmax_cli.media import MediaError, MediaStore
from medmax_cli.records import RecordError, text_of
from medmax_cli.score import rules_medmax, rules_robust
from medmax_cli.score.judge import (
    MEDMAX_CHAT_VERSION,
    MEDMAX_MM_OUT_VERSION,
    Judge,
    NotCached,
    Verdict,
    medmax_chat_messages,
    medmax_mm_out_messages,
)
from medmax_cli.score.similarity import Encoder
from medmax_cli.score.tasks import (
    CLOSED,
    METRIC_OF_TASK,
    MULTIPLE_CHOICE,
    OPEN,
    eval_task_of,
    question_type_of,
)
from medmax_cli.streams import RECORD_FAULTS, ErrorPolicy

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
    rejected: dict[str, str] = {}  # id -> reason, for items whose prediction a rule rejected
    count = policy.report.counts  # a Counter: one dict update per item, not a method call
    sends = scorer.judge is not None  # only the judge sends requests: declare the payload then

    def check_id(record: dict[str, Any]) -> list[dict[str, Any]]:
        rid = record.get("id")
        if type(rid) is not str or not rid:
            raise RecordError("prediction has no 'id'")
        if rid in seen:
            raise RecordError(f"duplicate id {rid!r}: each item must be scored once", record_id=rid)
        seen.add(rid)
        return [record]

    def one(record: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            if sends:
                with payload(record):  # the judge's requests carry this record (egress policy)
                    line = score_one(record, scorer)
            else:
                line = score_one(record, scorer)
        except RECORD_FAULTS as exc:
            rejected[record["id"]] = str(exc)  # check_id ran first: the id is a string
            raise
        count[line["status"]] += 1
        return [line]

    if workers > 1:
        yield from _threaded(records, check_id, one, policy, workers)
    else:
        for record in records:  # map_records(check_id) then map_records(one), in one loop
            try:
                check_id(record)
                (line,) = one(record)
            except RECORD_FAULTS as exc:
                policy.reject(exc, record)
                continue
            yield line
    for item in expected or ():
        rid = item.get("id")
        if rid in rejected:  # its prediction was set aside: the item stays in n, unscored
            policy.report.count("rejected")
            yield _rejected_line(item, scorer, rejected.pop(rid))
            continue
        if rid in seen:
            continue
        seen.add(rid)
        item = {k: v for k, v in item.items() if k != "prediction"}
        line = score_one(item, scorer)
        policy.report.count("missing")
        yield line


def score_stream(
    records: Iterable[dict[str, Any]],
    *,
    scorer: Scorer,
    write: Callable[[dict[str, Any]], None],
    policy: ErrorPolicy | None = None,
    expected: Iterable[dict[str, Any]] | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """The score command's pass: score every record, `write` its line, and keep the fields the
    summary reads (`summary.compact`, returned); one place, so the bench times what the command does."""
    from medmax_cli.score.summary import compact

    kept: list[dict[str, Any]] = []
    keep = kept.append
    for line in score_records(records, scorer=scorer, policy=policy, expected=expected, workers=workers):
        keep(compact(line))
        write(line)
    return kept


def _rejected_line(item: Mapping[str, Any], scorer: Scorer, reason: str) -> dict[str, Any]:
    task = str(item.get("task") or "vqa")
    return {
        "id": item["id"],
        "eval_task": eval_task_of(item),
        "task": task,
        "question_type": question_type_of(item) if task == "vqa" else None,
        "metric": METRIC_OF_TASK.get(task, "accuracy"),
        "rules": scorer.version,
        "score": None,
        "status": "rejected",
        "output": None,
        "gold": item.get("answer") if task == "vqa" else None,
        "cluster": _cluster(item),
        "reason": f"prediction rejected: {reason}",
        **_credential(item),
    }


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
        except RECORD_FAULTS as exc:
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


def _credential(record: Mapping[str, Any]) -> dict[str, Any]:
    """`credential: true` carried onto the scored line, which holds the item's output and gold text:
    without it a scores file of a credentialed eval set reads as open data (the report, a share)."""
    return {"credential": True} if record.get("credential") is True else {}


def score_one(record: Mapping[str, Any], scorer: Scorer) -> dict[str, Any]:
    """The scored line of one prediction (or of an expected item with no prediction)."""
    task = str(record.get("task") or "vqa")
    eval_task = eval_task_of(record)
    output = _output(record)
    line: dict[str, Any] = {
        "id": record["id"],
        "eval_task": eval_task,
        "task": task,
        "question_type": question_type_of(record, eval_task) if task == "vqa" else None,
        "metric": METRIC_OF_TASK.get(task, "accuracy"),
        "rules": scorer.version,
        "score": None,
        "status": "scored",
        "output": output,
        "gold": record.get("answer") if task == "vqa" else None,
        "cluster": _cluster(record),
        **_credential(record),
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
            line["extra"] = {f"{eval_task}_text": _interleaved_text(record, output, scorer)}
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
                rules_robust.closed_correct(output, gold)  # checks the gold
                line["parsed"] = rules_robust.closed_answer(output)
                ok = line["parsed"] == gold.strip().lower()
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
    if robust and line["parsed"] is None:
        _unparsed(record, output, gold, scorer, line)
        return
    line["score"] = 1.0 if ok else 0.0


def _unparsed(
    record: Mapping[str, Any], output: str, gold: str, scorer: Scorer, line: dict[str, Any]
) -> None:
    """Robust rules found no clear answer: no verdict, unless a judge is there to ask."""
    line.update(status="unparsed", reason="no clear answer in the output (robust rules never guess)")
    if scorer.judge is None or not output.strip():
        return
    options = record.get("options") or []
    letter = gold.strip().upper()
    index = ord(letter[:1] or "?") - ord("A")
    if line["question_type"] == MULTIPLE_CHOICE and 0 <= index < len(options):
        gold = f"{letter}. {options[index]}"
    _ask_correctness(record, output, gold, scorer, line)
    if line["status"] == "scored":
        line["parsed"] = "judge"


def _protocol(scorer: Scorer) -> str:
    """The judge's protocol (the command ties it to --rules): which prompts and parsing."""
    return scorer.judge.protocol if scorer.judge is not None else scorer.rules


def _question(record: Mapping[str, Any], scorer: Scorer) -> str:
    """What the judge is told the question was. medmax: the prompt as MedMax passes it (the eval
    row's `prompt`, whitespace included: meta.eval_prompt, else the user turn as asked); robust:
    the bare question (synthesize keeps it in meta) rather than the prompt with its instructions."""
    meta = record.get("meta") or {}
    if _protocol(scorer) == "medmax":
        raw = meta.get("eval_prompt")
        return raw if isinstance(raw, str) else _last_text(record, "user")
    return str(meta.get("question") or record.get("question") or _last_text(record, "user"))


def _score_open(
    record: Mapping[str, Any], output: str, gold: str, scorer: Scorer, line: dict[str, Any]
) -> None:
    if scorer.rules == "robust":
        if not output.strip():
            line["score"] = 0.0  # nothing to judge: an empty answer is wrong
            return
        if rules_robust.open_exact(output, gold):
            line.update(score=1.0, parsed="exact")
            return
    if scorer.judge is None:
        line.update(status="unscored", reason="open question needs a judge (--judge-url, --judge-model)")
        return
    _ask_correctness(record, output, gold, scorer, line)  # medmax: every answer goes to the judge


def _ask_correctness(
    record: Mapping[str, Any], output: str, gold: str, scorer: Scorer, line: dict[str, Any]
) -> None:
    assert scorer.judge is not None
    try:
        verdict = scorer.judge.correctness(line["id"], _question(record, scorer), gold, output)
    except NotCached as exc:
        line.update(status="unscored", reason=str(exc))
        return
    _apply_verdict(verdict, line)


def _apply_verdict(verdict: Verdict, line: dict[str, Any]) -> None:
    line.update(score=verdict.score, status="scored", judge=verdict.as_dict())
    line.pop("reason", None)
    if verdict.status == "judge_failed":
        line.update(status="judge_failed", reason="judge verdict did not parse after retries")
    elif verdict.status == "judge_error":
        line.update(
            status="judge_error",
            reason=f"judge request failed: {verdict.error} (not cached; a rerun asks again)",
        )
    elif verdict.status == "dropped":
        line.update(status="dropped", reason="judge reply MedMax's parser cannot score (MedMax drops it)")


def _score_chat(record: Mapping[str, Any], output: str, scorer: Scorer, line: dict[str, Any]) -> None:
    meta = record.get("meta") or {}
    reference = str(meta.get("reference_answer") or _last_text(record, "assistant"))
    line["gold"] = reference
    if scorer.judge is None:
        line.update(status="unscored", reason="visual chat needs a judge (--judge-url, --judge-model)")
        return
    try:
        if _protocol(scorer) == "medmax":
            messages = medmax_chat_messages(
                str(meta.get("fig_label") or ""),
                str(meta.get("caption") or ""),
                str(meta.get("mention") or _mentions(meta)),
                _question(record, scorer),
                reference,
                output.strip(),  # visual_chat.py strips the generated text
            )
            verdict = scorer.judge.medmax_review(line["id"], messages, MEDMAX_CHAT_VERSION)
        else:
            question = _last_text(record, "user")
            verdict = scorer.judge.relative(line["id"], _context(record), question, reference, output)
    except NotCached as exc:
        line.update(status="unscored", reason=str(exc))
        return
    _apply_verdict(verdict, line)
    # MedMax reports the relative score per question type and per LLaVA-Med domain too
    medmax = _protocol(scorer) == "medmax"
    buckets = [meta.get("chat_type"), meta.get("llava_domain")] if medmax else [record.get("domain")]
    extra = {f"{line['eval_task']}_{b}": _extra(verdict.score, line["status"]) for b in buckets if b}
    if extra:
        line["extra"] = extra


def _extra(score: float | None, status: str) -> float | None | dict[str, Any]:
    """A second score of an item: the bare value when scored, else with its status."""
    return score if status == "scored" else {"score": score, "status": status}


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
        # MedMax scores an empty caption too (image_text.py); robust leaves it unscored
        if image is None or (scorer.rules == "robust" and not output.strip()):
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


def _mentions(meta: Mapping[str, Any]) -> str:
    """The in-text mentions of a figure record (synthesize's `meta.mentions`), one per line."""
    mentions = meta.get("mentions")
    if not isinstance(mentions, list):
        return ""
    texts = [m if isinstance(m, str) else (m or {}).get("sentence") for m in mentions]
    return "\n".join(str(t) for t in texts if t)


def _interleaved_text(record: Mapping[str, Any], output: str, scorer: Scorer) -> Any:
    """The text half of an interleaved answer: the judge's relative score (None: unscored).
    medmax: mm_out.py's review of every item (text parts joined by spaces), dropped when MedMax
    could not read the scores; robust: LLaVA-Med's review, an empty text scores 0."""
    if scorer.judge is None:
        return None
    meta = record.get("meta") or {}
    reference = str(meta.get("reference_answer") or _last_text(record, "assistant"))
    try:
        if _protocol(scorer) == "medmax":
            parts = [p["text"] for p in record.get("prediction") or [] if isinstance(p, dict) and "text" in p]
            messages = medmax_mm_out_messages(_question(record, scorer), reference, " ".join(parts))
            verdict = scorer.judge.medmax_review(f"{record['id']}:text", messages, MEDMAX_MM_OUT_VERSION)
        else:
            if not output.strip():
                return 0.0
            verdict = scorer.judge.relative(
                f"{record['id']}:text", _context(record), _last_text(record, "user"), reference, output
            )
    except NotCached:
        return None
    status = {"ok": "scored"}.get(verdict.status, verdict.status)
    return _extra(verdict.score, status)


def _user_content(record: Mapping[str, Any]) -> list[Any]:
    for turn in record.get("turns") or []:
        if turn.get("role") == "user":
            return list(turn.get("content") or [])
    return []
