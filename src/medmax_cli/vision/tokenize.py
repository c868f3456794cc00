"""The `tokenize-images` stage: give every image of every record its VQ codes, in order.

    records -> plan (cache lookup) -> decode + resize in worker threads -> batched encoder -> records

The main thread reads records, looks their images up in the token cache and submits the misses
to a thread pool (Pillow decodes and resizes with the GIL released), keeping `prefetch` images in
flight, so the pool prepares the next batch while the encoder runs the current one. Records leave
in input order as soon as all their images have codes. An image seen twice (same sha256) is
encoded once: later copies wait on the first, and the cache remembers it across runs.

An image that cannot be read or decoded makes its record a reject with the reason (the policy
decides: stop, or set aside and go on); no placeholder pixels are ever encoded.

`alpha` ("white" | "drop", see `preprocess.to_rgb`) changes the codes of transparent images, so it
is part of the token cache key (`cache_key`) and written to the image reference as `"alpha": "drop"`
(absent = white); tokens made with the other setting are re-encoded, or refused without a `path`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmax_cli.media import MediaStore, decode_image, sha256_bytes
from medmax_cli.records import RecordError
from medmax_cli.streams import RECORD_FAULTS, ErrorPolicy, record_fault
from medmax_cli.vision.cache import TokenCache, default_cache_dir
from medmax_cli.vision.fingerprint import vq_fingerprint
from medmax_cli.vision.preprocess import ALPHA_MODES, preprocess_uint8
from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.tokencheck import token_problem

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A record waiting for the codes of `waiting` images (output leaves in this order)."""

    record: dict[str, Any]
    waiting: int = 0
    error: Exception | None = None


@dataclass
class _Job:
    """One distinct image to encode and the (record, image index) pairs that wait for it."""

    future: Future
    waiters: list[tuple[_Pending, int]] = field(default_factory=list)
    path: Any = None  # the image file, whose size and mtime the cache records with its codes


class _InlineExecutor:
    """`workers=0`: decode in the calling thread, with the executor's interface."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # delivered through the future, like a pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


# Version of the pixel path inside the cache key: bump when preprocessing changes some images' codes
# (2: high-bit-depth images scaled by their own bit depth).
PIXELS_VERSION = 2


def cache_key(vq: str, alpha: str = "white") -> str:
    """The token cache's codebook key: the fingerprint, the pixel-path version and the alpha rule."""
    return f"{vq}/p{PIXELS_VERSION}/{alpha}"


def image_alpha(ref: dict[str, Any]) -> str:
    """The alpha rule an image's tokens were made with (records written before the option: white)."""
    return str(ref.get("alpha", "white"))


def load_pixels(
    media: MediaStore, ref: dict[str, Any], size: int, what: str, alpha: str = "white"
) -> tuple[str, np.ndarray]:
    """Worker job: read, verify, decode and preprocess one image -> (sha256, uint8 [size, size, 3])."""
    data = media.read_bytes(ref, what=what, verify=True)
    image = decode_image(data, what=what).image
    return ref.get("sha256") or sha256_bytes(data), preprocess_uint8(image, size, alpha)


def tokenize_images(
    records: Iterable[dict[str, Any]],
    *,
    model_dir: str | Path,
    media: MediaStore,
    policy: ErrorPolicy,
    batch_size: int = 32,
    device: str = "cpu",
    dtype: str = "fp32",
    workers: int = 0,
    cache_dir: str | Path | None = None,
    encoder: Any = None,
    compile: bool = False,
    prefetch: int | None = None,
    alpha: str = "white",
) -> Iterator[dict[str, Any]]:
    """Yield the records with `images[i].tokens` (codes 0..K-1) and `images[i].vq` filled in.

    Images that already carry tokens for this model's codebook are left alone, unless the tokens
    cannot be this codebook's (wrong length for its grid, codes out of range): those are encoded
    again from the image, or the record is rejected when it has no image to encode. `encoder` (a
    `VQEncoder`) is built from `model_dir` on the first cache miss when not given. `compile`
    wraps it in torch.compile and pads the last batch so shapes never change.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {', '.join(ALPHA_MODES)}, got {alpha!r}")
    spec = VQSpec.from_model_dir(model_dir)
    vq = vq_fingerprint(model_dir)
    key_vq = cache_key(vq, alpha)
    tpi = spec.tokens_per_image  # a kept or cached token list must have exactly this length
    report = policy.report
    prefetch = prefetch or max(2 * batch_size, batch_size + 2 * workers)
    max_window = 4 * prefetch + 64
    cache = TokenCache(cache_dir if cache_dir is not None else default_cache_dir(media.root))
    pool: Any = (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medmax-img")
        if workers > 0
        else _InlineExecutor()
    )
    state: dict[str, Any] = {"encoder": encoder, "inflight": None}  # inflight: (batch, EncodeHandle)

    window: deque[_Pending] = deque()
    queue: deque[tuple[str, _Job]] = deque()  # in submission order
    jobs: dict[str, _Job] = {}  # key -> job, while in flight
    ready: list[tuple[str, str, np.ndarray]] = []  # (key, sha256, pixels) decoded, not yet encoded

    def give(pending: _Pending, index: int, codes: list[int]) -> None:
        image = pending.record["images"][index]
        image["tokens"] = codes
        image["vq"] = vq
        if alpha == "white":
            image.pop("alpha", None)
        else:
            image["alpha"] = alpha
        pending.waiting -= 1

    def plan(record: dict[str, Any]) -> _Pending:
        try:
            return plan_images(record)
        except RECORD_FAULTS as exc:  # a field of the wrong type: this record is rejected, not the run
            pending = _Pending(record)
            pending.error = record_fault(exc, record)
            return pending

    def plan_images(record: dict[str, Any]) -> _Pending:
        pending = _Pending(record)
        images = record.get("images") or []
        todo: list[tuple[int, dict[str, Any]]] = []
        for index, ref in enumerate(images):
            bad = None  # why tokens tagged with this codebook cannot be kept (wrong length, codes)
            if ref.get("tokens") is not None and ref.get("vq") == vq:
                bad = token_problem(ref, vq=vq, tokens_per_image=tpi, n_codes=spec.num_embeddings)
                if bad is None and image_alpha(ref) == alpha:
                    report.count("kept")
                    continue
            if not ref.get("path"):
                if bad is not None:
                    reason = f"images[{index}] {bad}, and no 'path' in the media store to re-encode"
                elif ref.get("tokens") is not None and ref.get("vq") == vq:
                    reason = (
                        f"images[{index}] has tokens made with --alpha {image_alpha(ref)}, not this run's "
                        f"--alpha {alpha}, and no 'path' in the media store to re-encode"
                    )
                elif ref.get("tokens") is not None:
                    reason = (
                        f"images[{index}] has tokens from codebook {ref.get('vq')!r}, not this model's "
                        f"{vq!r}, and no 'path' in the media store to re-encode"
                    )
                else:
                    reason = f"images[{index}] has no 'path' in the media store (fetch the image first)"
                pending.error = RecordError(reason)
                return pending
            if bad is not None:
                log.warning("images[%d] of %s: %s: re-encoding it", index, record.get("id"), bad)
                report.count("re-encoded (bad tokens)")
            todo.append((index, ref))
        # a hit only for the file the codes were made from (size+mtime, else its content hash)
        hits = cache.get_verified(
            [(ref["sha256"], media.path_of(ref)) for _, ref in todo if ref.get("sha256")], key_vq
        )
        for index, ref in todo:
            pending.waiting += 1
            sha = ref.get("sha256")
            if sha in hits and len(hits[sha]) != tpi:  # a damaged cache entry: encode again
                del hits[sha]
            if sha in hits:
                report.count("cached")
                give(pending, index, hits[sha])
                continue
            key = sha or f"path:{ref['path']}"
            job = jobs.get(key)
            if job is None:
                what = f"images[{index}] {ref['path']}"
                job = _Job(pool.submit(load_pixels, media, ref, spec.resolution, what, alpha))
                job.path = media.path_of(ref)  # its size and mtime go into the cache with the codes
                jobs[key] = job
                queue.append((key, job))
            else:
                report.count("duplicates")
            job.waiters.append((pending, index))
        return pending

    def launch_ready() -> None:
        """Send the next batch to the encoder; then hand out the codes of the batch before it."""
        import torch

        if state["encoder"] is None:
            from medmax_cli.vision.encoder import VQEncoder

            state["encoder"] = VQEncoder.from_model_dir(
                model_dir, device=device, dtype=dtype, compile=compile
            )
        batch = ready[:batch_size]
        del ready[: len(batch)]
        pixels = torch.from_numpy(np.stack([p for _, _, p in batch]))  # uint8 [B, S, S, 3]
        n = pixels.shape[0]
        if compile and n < batch_size:  # a fixed shape keeps the compiled graph
            pixels = torch.cat([pixels, pixels.new_zeros((batch_size - n, *pixels.shape[1:]))])
        if state["encoder"].device.type == "cuda":
            pixels = pixels.pin_memory()
        handle = state["encoder"].submit_uint8(pixels)
        finish_inflight()  # the previous batch ran while this one was being stacked
        state["inflight"] = (batch, handle)

    def finish_inflight() -> None:
        if state["inflight"] is None:
            return
        batch, handle = state["inflight"]
        state["inflight"] = None
        codes = handle.result()[: len(batch)].tolist()  # len(batch) x [N] ints
        cache.put_many(
            [(sha, c, jobs[key].path) for (key, sha, _), c in zip(batch, codes, strict=True)], key_vq
        )
        for (key, _, _), c in zip(batch, codes, strict=True):
            for pending, index in jobs.pop(key).waiters:
                give(pending, index, c)
        report.count("encoded", len(batch))

    def collect_head() -> None:
        key, job = queue.popleft()
        try:
            sha, pixels = job.future.result()
        except RECORD_FAULTS as exc:
            for pending, _ in jobs.pop(key).waiters:
                pending.error = pending.error or record_fault(exc, pending.record)
                pending.waiting -= 1
            return
        ready.append((key, sha, pixels))

    it = iter(records)
    exhausted = False
    try:
        while True:
            while not exhausted and len(queue) < prefetch and len(window) < max_window:
                record = next(it, None)
                if record is None:
                    exhausted = True
                    break
                window.append(plan(record))
            if queue:
                collect_head()
            if ready and (len(ready) >= batch_size or not queue):
                launch_ready()
            elif not queue:
                finish_inflight()  # nothing left to overlap it with
            while window and window[0].waiting == 0:
                pending = window.popleft()
                if pending.error is not None:
                    policy.reject(pending.error, pending.record)
                    continue
                yield pending.record
            if exhausted and not queue and not ready and state["inflight"] is None and not window:
                return
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        cache.close()
