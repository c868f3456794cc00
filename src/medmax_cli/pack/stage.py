"""The pack pipeline as library code: records -> samples -> packed rows -> shards + manifest.

samples(records)  batches of instances, images encoded on the fly if needed, one tokenizer call
                  per batch, length policy; bad records go through the error policy
rows(samples)     best-fit-decreasing packing (or one sample per row), seeded row shuffle
pack_to_dir(...)  writes the shards, then the manifest (last), and returns the manifest
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from medmax_cli.pack.binpack import OnePerRow, StreamPacker
from medmax_cli.pack.manifest import PackStats, build_manifest, write_manifest
from medmax_cli.pack.sequence import TRAIN_ON, Sample, build_sequences, text_tokenizer
from medmax_cli.pack.shards import PackedRow, ShardWriter, clear_outputs, lock_output_dir, make_row
from medmax_cli.pack.truncate import fit_length
from medmax_cli.records import RecordError, validate
from medmax_cli.streams import RECORD_FAULTS, ErrorPolicy

log = logging.getLogger(__name__)

ImageEncoder = Callable[[list[dict[str, Any]]], Iterable[dict[str, Any]]]


@dataclass(frozen=True)
class PackSettings:
    seq_len: int = 4096  # row capacity in tokens (Chameleon's context)
    pack: bool = True  # False: one sample per row, input order (MedMax parity)
    pack_buffer: int = 2000  # samples collected before a best-fit-decreasing round
    seed: int = 0  # row shuffle
    train_on: str = "assistant"  # "assistant" | "all" | "medmax": which tokens carry labels
    alpha: str = "white"  # alpha rule every image's tokens must have been made with ("white" | "drop")
    max_count: int = 1000  # rows per shard
    max_size: int = 1 << 30  # bytes per shard
    batch_size: int = 256  # instances per tokenizer call
    shard: str | None = None  # "i/n" input partition this run packed (recorded only)

    def check(self) -> None:
        if self.seq_len < 2:
            raise ValueError("seq_len must be at least 2")
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}")
        if self.alpha not in ("white", "drop"):
            raise ValueError("alpha must be white or drop")
        if self.pack_buffer < 1 or self.batch_size < 1 or self.max_count < 1 or self.max_size < 1:
            raise ValueError("pack_buffer, batch_size, max_count and max_size must be positive")


def validate_instance(record: Any) -> dict[str, Any]:
    """`records.validate`, with image token lists left to `_with_codes` (one numpy pass per image).

    Token lists are most of the bytes of a tokenised instance, and the schema's per-element check was
    the largest cost of pack; the rest of the record goes through the schema unchanged. Every record
    that reaches the tokenizer passes `_with_codes` after this, which checks each token list against
    the model (integers, the VQ's grid length, codes in range) while converting it once.
    """
    images = record.get("images") if isinstance(record, dict) else None
    if not isinstance(images, list) or not any(isinstance(im, dict) and "tokens" in im for im in images):
        return validate(record)
    light = dict(record)
    light["images"] = [
        {**im, "tokens": []} if isinstance(im, dict) and isinstance(im.get("tokens"), list) else im
        for im in images
    ]
    validate(light)
    return record


def _needs_encoding(record: dict[str, Any], expected_vq: str | None) -> bool:
    """Does any image lack tokens, or carry tokens of another codebook than the model's?"""
    if record.get("tokens") is not None:
        return False
    for image in record.get("images") or []:
        if not isinstance(image, dict):
            continue
        if image.get("tokens") is None or (expected_vq is not None and image.get("vq") != expected_vq):
            return True
    return False


def _with_codes(
    record: dict[str, Any],
    expected_vq: str | None,
    tokens_per_image: int | None = None,
    n_codes: int | None = None,
    vocab: Any = None,
) -> dict[str, Any]:
    """The record (a shallow copy) with each image's tokens as an int64 array, after checking they are
    the model's: its codebook tag, its grid length, codes in range. The caller's record is untouched;
    the arrays serialise back to the same JSON lists (rejects use orjson's numpy support)."""
    from medmax_cli.vision.tokencheck import checked_codes

    images = record.get("images")
    if record.get("tokens") is not None:
        if vocab is not None:  # the image blocks of a pre-tokenised row, with the model's VQ grid
            from medmax_cli.pack.sequence import _pretokenised

            _pretokenised(record, vocab, tokens_per_image)
        return record
    if not images:
        return record
    converted = list(images)
    for i, image in enumerate(images):
        if not isinstance(image, dict) or image.get("tokens") is None:
            continue
        codes, problem = checked_codes(
            image, vq=expected_vq, tokens_per_image=tokens_per_image, n_codes=n_codes
        )
        if problem:
            raise RecordError(f"images[{i}] {problem} (re-run tokenize-images with this model)")
        converted[i] = {**image, "tokens": codes}
    return {**record, "images": converted}


def _encode_batch(
    batch: list[dict[str, Any]], encode_images: ImageEncoder | None, expected_vq: str | None
) -> list[dict[str, Any]]:
    """The batch with every image tokenised by the model's VQ; records the encoder rejected (through
    the error policy) are left out. Without an encoder the batch comes back as it is."""
    needing = [r for r in batch if _needs_encoding(r, expected_vq)]
    if not needing or encode_images is None:
        return batch
    encoded = iter(list(encode_images(needing)))
    pending = next(encoded, None)
    out = []
    for record in batch:
        if not _needs_encoding(record, expected_vq):
            out.append(record)
        elif pending is not None and pending.get("id") == record.get("id"):
            out.append(pending)
            pending = next(encoded, None)
        # else: the encoder rejected it through the policy
    return out


def _ready_batches(
    records: Iterable[dict[str, Any]],
    *,
    settings: PackSettings,
    policy: ErrorPolicy,
    encode_images: ImageEncoder | None,
    expected_vq: str | None,
    check: bool,
    tokens_per_image: int | None = None,
    n_codes: int | None = None,
    vocab: Any = None,
) -> Iterator[list[dict[str, Any]]]:
    """Batches of valid records whose images all carry tokens of the model's codebook."""
    iterator = iter(records)
    while raw := list(islice(iterator, settings.batch_size)):
        batch = []
        for record in raw:
            try:
                batch.append(validate_instance(record) if check else record)
            except RECORD_FAULTS as exc:
                policy.reject(exc, record)
        ready = []
        for record in _encode_batch(batch, encode_images, expected_vq):
            try:
                ready.append(_with_codes(record, expected_vq, tokens_per_image, n_codes, vocab))
            except RECORD_FAULTS as exc:
                policy.reject(exc, record)
        yield ready


def build_batch(
    batch: list[dict[str, Any]], *, vocab, tokenizer, settings: PackSettings
) -> list[Sample | RecordError]:
    """Sequences of a batch (one tokenizer call), length policy applied; errors in their slots."""
    out: list[Sample | RecordError] = []
    results = build_sequences(batch, vocab=vocab, tokenizer=tokenizer, train_on=settings.train_on)
    for record, result in zip(batch, results, strict=True):
        if not isinstance(result, RecordError) and (problem := _check_alpha(record, settings.alpha)):
            result = problem
        if not isinstance(result, RecordError):
            try:
                result = fit_length(result, settings.seq_len)
            except RecordError as exc:
                result = exc
        out.append(result)
    return out


def _check_alpha(record: dict[str, Any], alpha: str) -> RecordError | None:
    """Image tokens made with another alpha rule than the pack's are refused: one pack, one rule."""
    if record.get("tokens") is not None:
        return None
    for i, image in enumerate(record.get("images") or []):
        if isinstance(image, dict) and image.get("tokens") is not None:
            made = str(image.get("alpha", "white"))
            if made != alpha:
                return RecordError(
                    f"images[{i}] tokens were made with --alpha {made}, this pack uses --alpha {alpha} "
                    f"(pack with --alpha {made}, or re-run tokenize-images with --alpha {alpha})"
                )
    return None


_WORKER: dict[str, Any] = {}


def _worker_init(vocab, tokenizer, settings: PackSettings, cache_bytes: int | None = None) -> None:
    from medmax_cli.text.tokenizer import TextTokenizer

    wrapped = TextTokenizer(tokenizer, cache_bytes=cache_bytes) if cache_bytes else text_tokenizer(tokenizer)
    _WORKER.update(vocab=vocab, tokenizer=wrapped, settings=settings)


def _worker_build(batch: list[dict[str, Any]]) -> list[Sample | RecordError]:
    return build_batch(batch, **_WORKER)


def samples(
    records: Iterable[dict[str, Any]],
    *,
    vocab,
    tokenizer,
    settings: PackSettings,
    policy: ErrorPolicy,
    encode_images: ImageEncoder | None = None,
    expected_vq: str | None = None,
    check: bool = True,
    workers: int = 0,
    tokens_per_image: int | None = None,
) -> Iterator[Sample]:
    """Samples that fit `settings.seq_len` (truncated when needed), in input order.

    `check` validates each record against the schema (`validate_instance`); pass False only for
    records already validated. `workers` > 0 tokenises and assembles batches in that many processes
    (order kept, at most 2 batches per worker in flight); reading, validation, image encoding and
    the error policy stay in this process, so the output is the same for any `workers`.
    `tokens_per_image`: the model's VQ grid; image token lists of another length are rejected."""
    tokenizer = text_tokenizer(tokenizer)
    ready_batches = _ready_batches(
        records,
        settings=settings,
        policy=policy,
        encode_images=encode_images,
        expected_vq=expected_vq,
        check=check,
        tokens_per_image=tokens_per_image,
        n_codes=int(vocab.n_codes),
        vocab=vocab,
    )

    def emit(batch: list[dict[str, Any]], results: list[Sample | RecordError]) -> Iterator[Sample]:
        for record, result in zip(batch, results, strict=True):
            if isinstance(result, RecordError):
                policy.reject(result, record)
            else:
                yield result

    if workers <= 0:
        for batch in ready_batches:
            yield from emit(batch, build_batch(batch, vocab=vocab, tokenizer=tokenizer, settings=settings))
        return
    import multiprocessing

    # spawn, not fork: the parent may hold torch and tokenizers thread pools.
    context = multiprocessing.get_context("spawn")
    # the tokenizer cache budget is split over the workers, so memory does not grow with --workers
    budget = getattr(tokenizer, "cache_bytes", None)
    share = max(budget // workers, 4 << 20) if budget else None
    with context.Pool(
        workers, initializer=_worker_init, initargs=(vocab, tokenizer.tokenizer, settings, share)
    ) as pool:
        window: deque = deque()
        for batch in ready_batches:
            window.append((batch, pool.apply_async(_worker_build, (batch,))))
            while len(window) > 2 * workers:
                done, result = window.popleft()
                yield from emit(done, result.get())
        while window:
            done, result = window.popleft()
            yield from emit(done, result.get())


def rows(items: Iterable[Sample], settings: PackSettings) -> Iterator[PackedRow]:
    """Packed rows: best-fit-decreasing over `pack_buffer` samples, or one sample per row."""
    packer = (
        StreamPacker(settings.seq_len, settings.pack_buffer, settings.seed)
        if settings.pack
        else OnePerRow(settings.seq_len)
    )
    for sample in items:
        for group in packer.add(sample, len(sample)):
            yield make_row(group)
    for group in packer.flush():
        yield make_row(group)


def pack_to_dir(records: Iterable[dict[str, Any]], out_dir: str | Path, **options: Any) -> dict[str, Any]:
    """`write_pack` holding the exclusive lock of `out_dir` from clearing it to writing the manifest,
    so two runs into one directory cannot interleave (`shards.OutputDirLocked` for the second)."""
    with lock_output_dir(out_dir) as out:
        return write_pack(records, out, **options)


def write_pack(
    records: Iterable[dict[str, Any]],
    out_dir: str | Path,
    *,
    vocab,
    tokenizer,
    settings: PackSettings,
    policy: ErrorPolicy,
    model: dict[str, Any] | None = None,
    encode_images: ImageEncoder | None = None,
    check: bool = True,
    workers: int = 0,
) -> dict[str, Any]:
    """Write shards and then the manifest to `out_dir`; returns the manifest (use `pack_to_dir`).

    A previous run's manifest and shards in `out_dir` are removed first. If anything fails, the
    shard being written is deleted and no manifest is written, so the directory never looks finished.
    `check` validates records against the schema here (read them with `check=False`: this is faster).
    `workers`: processes that tokenise and assemble (see `samples`); the output does not depend on it.
    """
    settings.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clear_outputs(out)
    model = model or {}
    stats = PackStats(settings.seq_len)
    report = policy.report

    def counted(stream: Iterable[Sample]) -> Iterator[Sample]:
        for sample in stream:
            stats.add_sample(sample)
            yield sample

    with ShardWriter(out, max_count=settings.max_count, max_size=settings.max_size) as writer:
        for row in rows(
            counted(
                samples(
                    records,
                    vocab=vocab,
                    tokenizer=tokenizer,
                    settings=settings,
                    policy=policy,
                    encode_images=encode_images,
                    expected_vq=model.get("vq_fingerprint"),
                    check=check,
                    workers=workers,
                    tokens_per_image=model.get("tokens_per_image"),
                )
            ),
            settings,
        ):
            writer.write(row)
            stats.add_row(row)
    shards = writer.shards
    report.count("samples", stats.samples)
    if stats.truncated:
        report.count("truncated", stats.truncated)
    report.count("rows", stats.rows)
    report.count("shards", len(shards))
    # What the shards depend on; batch_size and workers only change how fast they are made.
    data_settings = {k: v for k, v in asdict(settings).items() if k != "batch_size"}
    special = {name: int(getattr(vocab, name)) for name in ("bos", "eos", "pad", "sep", "boi", "eoi")}
    manifest = build_manifest(
        settings={**data_settings, "special_ids": special, "n_codes": int(vocab.n_codes)},
        model=model,
        stats=stats,
        shards=shards,
        rejected=dict(report.dropped),
    )
    write_manifest(out, manifest)
    log.info(
        "packed %d samples into %d rows (efficiency %.1f%%)",
        stats.samples,
        stats.rows,
        100 * stats.efficiency,
    )
    return manifest
