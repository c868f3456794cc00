"""The synthesize stage: source records -> task instances, filtered, decontaminated and mixed.

    records -> builders (per record, in input order; LLM calls run concurrently, results in order)
            -> decontamination -> exact dedup -> near-duplicate images -> mixing -> instances

Everything not emitted is accounted for: bad records go through the error policy; instances a
builder or filter declines are counted by reason in the run report and written to the rejects
file when there is one (they are decisions, not errors, so they never stop the run).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from medmax_cli.llm import ChatClient
from medmax_cli.media import MediaStore
from medmax_cli.records import TASKS, RecordError, make_id, reason_class, record_kind
from medmax_cli.streams import RECORD_FAULTS, ErrorPolicy
from medmax_cli.synthesize import captioning, image_generation, interleaved, report, visual_chat, vqa
from medmax_cli.synthesize.common import BuildContext, Drop, new_instance
from medmax_cli.synthesize.decontaminate import DEFAULT_EXCLUDE_BY, EvalIndex
from medmax_cli.synthesize.domain import domain_of
from medmax_cli.synthesize.filters import ExactDedup, NearDupFilter
from medmax_cli.synthesize.imagehash import ImageHasher, default_hash_workers
from medmax_cli.synthesize.mixing import mix_stream

log = logging.getLogger(__name__)

LLM_TASKS = ("visual_chat",)
SKIPPED = "visual_chat skipped (no --llm-url)"
UNUSED = "records with no selected task"
FIGURE_BUILDERS = (  # order of the instances made from one figure
    ("captioning", captioning.build),
    ("image_generation", image_generation.build),
    ("interleaved", interleaved.build),
)
Output = dict[str, Any] | Drop


def drop(policy: ErrorPolicy, raw: Any, reason: str, *, skipped: bool = False) -> None:
    """Count a declined instance under its reason's class ("bucket: detail" -> bucket) and write
    it to the rejects file (if any) with the full reason; never raises. `skipped`: a user's
    filter said no (e.g. --tasks), counted apart from rejects."""
    record_id = raw.get("id") if isinstance(raw, dict) else None
    head, _, rest = reason.partition(": ")
    # "vqa: empty answer" -> class "vqa: empty answer": a builder's rule, not just its task
    cls = f"{head}: {reason_class(rest)}" if head in TASKS and rest else reason_class(reason)
    if skipped:
        policy.skip(cls, reason, record_id=record_id, raw=raw)
        return
    policy.report.drop(reason, cls=cls)
    policy.write_entry(cls, reason, raw, where=None, record_id=record_id)


def figure_texts(record: dict[str, Any]) -> list[str]:
    article = record.get("article") or {}
    texts = [
        str(record.get("caption") or ""),
        str(article.get("title") or ""),
        str(article.get("journal") or ""),
    ]
    texts += [str(m.get("sentence") or "") for m in record.get("mentions") or [] if isinstance(m, dict)]
    return texts


def build_record(
    record: dict[str, Any], *, tasks: Sequence[str], ctx: BuildContext, client: ChatClient | None
) -> list[Output]:
    """Every instance (or Drop) one source record gives for the selected tasks."""
    kind = record_kind(record)
    if kind == "instance" and "turns" in record:
        if record.get("task") in tasks:
            return [record]
        return [
            Drop(f"task not selected: {record.get('task')} (--tasks)", str(record.get("task")), skipped=True)
        ]
    if kind == "instance":  # a released row without turns (e.g. MedMax's pre-tokenised rows)
        return [record]
    if not record.get("images"):
        raise RecordError(f"{kind} record has no images: every MedMax task needs one")
    outputs: list[Output] = []
    if kind == "figure":
        domain = domain_of(record, *figure_texts(record))
        for task, builder in FIGURE_BUILDERS:
            if task in tasks:
                outputs.extend(builder(record, ctx, domain))
        if "visual_chat" in tasks and client is not None:
            outputs.extend(visual_chat.build(record, ctx, domain, client))
    elif kind == "qa":
        if "vqa" in tasks:
            domain = domain_of(
                record,
                str(record.get("question", "")),
                str(record.get("answer", "")),
                *map(str, record.get("options") or []),
            )
            outputs.extend(vqa.build(record, ctx, domain))
    elif kind == "report":
        if "report_understanding" in tasks:
            outputs.extend(report.build(record, ctx, domain_of(record, str(record["report"]))))
    elif kind == "chat":
        if "visual_chat" in tasks:
            outputs.extend(_chat(record))
    else:
        raise RecordError(f"cannot synthesize from a {kind!r} record")
    return outputs


def _chat(record: dict[str, Any]) -> list[Output]:
    """A ready-made conversation becomes a visual_chat instance as is: `turns` when the record has
    them, else the readers' `conversation` ([{"role", "text"}], PubMedVision and LLaVA-Med) with
    each `<image>` placeholder made an image part (the record's images in order; with no
    placeholder at all they open the first user turn). Text is kept verbatim."""
    turns = record.get("turns")
    if not turns and isinstance(record.get("conversation"), list) and record["conversation"]:
        turns = _conversation_turns(record["conversation"], len(record.get("images") or []))
        if isinstance(turns, Drop):
            return [turns]
    if not isinstance(turns, list) or not turns:
        return [Drop("chat record has no turns", "visual_chat")]
    texts = [p.get("text", "") for t in turns for p in t.get("content", []) if isinstance(p, dict)]
    return [new_instance(record, "visual_chat", None, domain=domain_of(record, *texts), turns=turns)]


IMAGE_PLACEHOLDER = "<image>"


def _conversation_turns(conversation: list[Any], n_images: int) -> list[dict[str, Any]] | Drop:
    turns: list[dict[str, Any]] = []
    image = 0
    for turn_ in conversation:
        if not isinstance(turn_, dict) or turn_.get("role") not in ("user", "assistant"):
            return Drop("visual_chat: conversation turn is not {role, text}", "visual_chat")
        content: list[dict[str, Any]] = []
        for j, piece in enumerate(str(turn_.get("text") or "").split(IMAGE_PLACEHOLDER)):
            if j > 0:
                content.append({"image": image})
                image += 1
            if piece:
                content.append({"text": piece})
        turns.append({"role": turn_["role"], "content": content})
    if image == 0 and n_images and turns and turns[0]["role"] == "user":
        turns[0]["content"] = [{"image": i} for i in range(n_images)] + turns[0]["content"]
        image = n_images
    if image != n_images:
        return Drop(
            f"visual_chat: conversation has {image} {IMAGE_PLACEHOLDER} placeholder(s) for {n_images} image(s)",
            "visual_chat",
        )
    return turns


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """fn over items with up to `workers` threads, lazily, results in input order."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medmax-synth") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def synthesize(
    records: Iterable[dict[str, Any]],
    *,
    policy: ErrorPolicy | None = None,
    tasks: Sequence[str] = TASKS,
    seed: int = 0,
    client: ChatClient | None = None,
    media: MediaStore | None = None,
    hasher: ImageHasher | None = None,
    exclude: EvalIndex | None = None,
    dedup: bool = True,
    near_dup_bits: int | None = 4,
    min_caption_words: int = 5,
    max_caption_words: int = 400,
    ratio: dict[str, float] | None = None,
    max_per_task: int | None = None,
    hash_workers: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Task instances from source records (see the module doc for the order of the steps).

    `near_dup_bits` None turns the near-duplicate filter off; `exclude` comes from `load_exclude`;
    `hasher` (default: one reading `media`) computes the image hashes and caches them by sha256;
    `hash_workers` threads (default `default_hash_workers`) hash images ahead of the filters.
    """
    policy = policy or ErrorPolicy()
    report = policy.report
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose among {', '.join(TASKS)}")
    ctx = BuildContext(seed=seed, min_caption_words=min_caption_words, max_caption_words=max_caption_words)
    exact = ExactDedup() if dedup else None
    # one hasher for the training images, shared by the near-duplicate filter and decontamination:
    # each image is hashed once, by `hash_workers` threads ahead of the filters
    hasher = hasher or ImageHasher(media)
    near = NearDupFilter(hasher, near_dup_bits) if near_dup_bits is not None else None
    hashing = near is not None or exclude is not None
    hash_workers = default_hash_workers() if hash_workers is None else hash_workers

    def work(record: dict[str, Any]) -> tuple[dict[str, Any], list[Output] | None, Exception | None]:
        try:
            outputs = build_record(record, tasks=tasks, ctx=ctx, client=client)
        except RECORD_FAULTS as exc:
            return record, None, exc
        if hashing and hash_workers > 1:
            for output in outputs:
                if not isinstance(output, Drop):
                    for ref in output.get("images") or []:
                        if not isinstance(ref, dict) or not (ref.get("sha256") or ref.get("path")):
                            continue
                        if exclude is None or ref.get("sha256") not in exclude.shas:  # else no decode
                            hasher.lookup(ref)  # into the cache, in this worker thread
        return record, outputs, None

    def filtered() -> Iterator[dict[str, Any]]:
        workers = client.settings.concurrency if client is not None and "visual_chat" in tasks else 1
        if hashing:
            workers = max(workers, hash_workers)
        for record, outputs, error in ordered_map(work, records, workers):
            if error is not None:
                policy.reject(error, record)
                continue
            if client is None and "visual_chat" in tasks and record_kind(record) == "figure":
                report.count(SKIPPED)
            elif not outputs:
                report.count(UNUSED)
            for output in outputs or []:
                if isinstance(output, Drop):
                    drop(policy, record, output.reason, skipped=output.skipped)
                    continue
                # A record passed through as is (a released MedMax row, an eval instance) is a task
                # instance already: rows of different tasks may share an image or an answer, and
                # dedup is for the instances built here, so only decontamination applies to it.
                built = output is not record
                reason = (
                    (exclude.check(output, hasher) if exclude else None)
                    or (exact.check(output) if exact and built else None)
                    or (near.check(output) if near and built else None)
                )
                if reason:
                    drop(policy, output, reason)
                    continue
                yield output

    if ratio is None and max_per_task is None:
        for instance in filtered():
            report.count(str(instance.get("task", "instance")))
            yield instance
    else:
        # streamed through a spill file: memory stays flat in the corpus size (issue 16)
        for instance, reason in mix_stream(filtered(), ratio=ratio, max_per_task=max_per_task, seed=seed):
            if reason is not None:
                drop(policy, instance, reason)
                continue
            report.count(str(instance.get("task", "instance")))
            yield instance
    skipped = report.counts.get(SKIPPED, 0)
    if skipped:
        log.warning(
            "synthesize: %d figures not turned into visual_chat instances: that task needs an LLM "
            "endpoint (--llm-url, --llm-model)",
            skipped,
        )
    if client is not None:
        report.count("llm requests", client.requests)
        report.count("llm cache hits", client.cache_hits)
    if exclude is not None:
        report.extra["contamination"] = exclude.contamination_table()


def load_exclude(
    records: Iterable[dict[str, Any]],
    hasher: ImageHasher,
    near_dup_bits: int | None,
    by: str = DEFAULT_EXCLUDE_BY,
    name: str | None = None,
) -> EvalIndex:
    """The decontamination index of an evaluation set (exact image match only when bits is None)."""
    index = EvalIndex(hasher, near_dup_bits if near_dup_bits is not None else 0, by=by)
    return index.add_records(records, name=name)


__all__ = ["synthesize", "load_exclude", "build_record", "ordered_map", "make_id"]
