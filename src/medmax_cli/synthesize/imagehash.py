"""Perceptual image hashes and a fast near-duplicate index.

pHash (64 bits): the image in greyscale shrunk to 32x32, its 2-D DCT, the 8x8 lowest frequencies
compared with their median (the DC term excluded from the median). Re-encoding, rescaling and mild
contrast changes keep almost every bit (0-2 bits change on the sample figures), while different
images differ by ~32. A difference hash (dHash) was tried first: on smooth images such as chest
radiographs it put a lateral and a posteroanterior view 2 bits apart, pHash puts them 8-10 apart.

`NearDupIndex` finds a stored hash within Hamming distance `t` without comparing against all of
them (multi-index hashing, see the class), which turns the naive O(n^2) scan into ~O(n).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image

from medmax_cli.media import MediaError, MediaStore, decode_image, safe_relative_path

V = TypeVar("V")
BITS = 64
MAX_THRESHOLD = 16


_N = 32
_K = np.arange(_N)
_DCT = np.cos(
    np.pi * (2 * _K[None, :] + 1) * _K[:, None] / (2 * _N)
)  # (32, 32) DCT-II basis, rows = frequency
_WEIGHTS = 1 << np.arange(63, -1, -1, dtype=np.uint64)  # bit i of the 64 -> its place value


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash of a Pillow image."""
    grey = image.convert("L").resize((_N, _N), Image.Resampling.LANCZOS, reducing_gap=2.0)
    pixels = np.asarray(grey, dtype=np.float64)  # (32, 32)
    low = (_DCT @ pixels @ _DCT.T)[:8, :8].reshape(64)  # (64,) lowest frequencies, DC first
    bits = low > np.median(low[1:])
    return int((bits.astype(np.uint64) * _WEIGHTS).sum(dtype=np.uint64))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _bands(n: int) -> list[tuple[int, int, int]]:
    """(shift, mask, width) of n contiguous bit bands that cover the 64 bits."""
    edges = [round(i * BITS / n) for i in range(n + 1)]
    return [(edges[i], (1 << (edges[i + 1] - edges[i])) - 1, edges[i + 1] - edges[i]) for i in range(n)]


class NearDupIndex(Generic[V]):
    """Hashes with a payload; `nearest(h)` returns the closest stored one within the threshold.

    Multi-index hashing in two regimes, both exact (no pair within t bits is ever missed):
    - small n: t+1 bands probed at their exact value; two hashes within t bits agree on at least one
      band (pigeonhole). Cheap probes, but the candidates per probe grow as n / 2**(64/(t+1)).
    - large n: m = (t+2)//2 wider bands, each probed at its value and at every value one bit away;
      two hashes within t bits differ by at most t//m <= 1 bit in some band (if every band differed
      by 2 or more they would differ by >= 2m > t). ~64+m probes, almost no stray candidates.
    The index switches (rebuilding its tables once) when the first regime's expected candidates
    per query exceed the second's probes, so the search stays near O(n) at any size.
    """

    def __init__(self, threshold: int):
        if not 0 <= threshold <= MAX_THRESHOLD:
            raise ValueError(f"near-duplicate threshold must be 0..{MAX_THRESHOLD} bits, got {threshold}")
        self.threshold = threshold
        self._hashes: list[int] = []
        self._values: list[V] = []
        wide = (threshold + 2) // 2
        self._switch_at = (
            (64 + wide) * 2 ** (BITS / (threshold + 1)) / (threshold + 1) if threshold else float("inf")
        )
        self._configure(threshold + 1, 0)

    def _configure(self, n_bands: int, radius: int) -> None:
        self.radius = radius
        self._bands = _bands(n_bands)
        self._tables: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._bands]
        for slot, value_hash in enumerate(self._hashes):
            for table, (shift, mask, _) in zip(self._tables, self._bands, strict=True):
                table[(value_hash >> shift) & mask].append(slot)

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, value_hash: int, value: V) -> None:
        slot = len(self._hashes)
        self._hashes.append(value_hash)
        self._values.append(value)
        for table, (shift, mask, _) in zip(self._tables, self._bands, strict=True):
            table[(value_hash >> shift) & mask].append(slot)
        if self.radius == 0 and len(self._hashes) > self._switch_at:
            self._configure((self.threshold + 2) // 2, 1)

    def nearest(self, value_hash: int) -> tuple[V, int] | None:
        """(payload, distance) of the closest stored hash within the threshold (earliest on ties)."""
        best: tuple[int, int] | None = None  # (distance, slot)
        hashes, threshold = self._hashes, self.threshold
        for table, (shift, mask, width) in zip(self._tables, self._bands, strict=True):
            key = (value_hash >> shift) & mask
            probes = [key] if self.radius == 0 else [key, *(key ^ (1 << j) for j in range(width))]
            for probe in probes:
                for slot in table.get(probe, ()):
                    distance = (hashes[slot] ^ value_hash).bit_count()
                    if distance <= threshold and (best is None or (distance, slot) < best):
                        best = (distance, slot)
        return None if best is None else (self._values[best[1]], best[0])


def default_hash_workers() -> int:
    """Threads that hash images: decoding and resizing release the GIL in Pillow."""
    return max(1, min(4, os.cpu_count() or 1))


class ImageHasher:
    """pHash and sha256 of record images, read from the media store (cached by sha256 or path).

    `extra_roots` are other folders an image `path` may be relative to (e.g. the folder of an
    --exclude file that was never imported into the store). Unreadable images give None.
    Thread-safe, and each image is hashed once even when several threads ask for it at the same
    time (the later ones wait for the first); `hashed` counts the images actually decoded.
    """

    def __init__(self, media: MediaStore | None, extra_roots: Iterable[Path] = ()):
        self.media = media
        self.extra_roots = [Path(r) for r in extra_roots]
        self._cache: dict[str, tuple[str | None, int | None]] = {}
        self._pending: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.unreadable = 0
        self.hashed = 0

    def _bytes(self, ref: Mapping[str, Any]) -> bytes | None:
        if self.media is not None and ref.get("path"):
            try:
                return self.media.read_bytes(ref)
            except MediaError:
                pass
        for root in self.extra_roots:
            try:
                return safe_relative_path(root, str(ref.get("path") or "")).read_bytes()
            except (MediaError, OSError):
                continue
        return None

    def _compute(self, ref: Mapping[str, Any]) -> tuple[str | None, int | None]:
        data = self._bytes(ref)
        sha = ref.get("sha256") or (hashlib.sha256(data).hexdigest() if data is not None else None)
        value: int | None = None
        if data is not None:
            try:
                value = phash(decode_image(data, what=str(ref.get("path"))).image)
            except MediaError:
                value = None
        return sha, value

    def lookup(self, ref: Mapping[str, Any]) -> tuple[str | None, int | None]:
        """(sha256, phash) of an image reference; either may be None when the bytes are missing."""
        key = ref.get("sha256") or f"path:{ref.get('path')}"
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            event = self._pending.get(key)
            owner = event is None
            if owner:
                event = self._pending[key] = threading.Event()
        if not owner:
            event.wait()
            return self._cache.get(key) or self.lookup(ref)  # owner failed: try ourselves
        result: tuple[str | None, int | None] | None = None
        try:
            result = self._compute(ref)
        finally:
            with self._lock:
                if result is not None:
                    self._cache[key] = result
                    self.hashed += 1
                    if result[1] is None:
                        self.unreadable += 1
                del self._pending[key]
            event.set()
        return result

    def phash_of(self, ref: Mapping[str, Any]) -> int | None:
        return self.lookup(ref)[1]

    def prefetch(self, refs: Iterable[Mapping[str, Any]], workers: int | None = None) -> None:
        """Hash these images with `workers` threads (default `default_hash_workers`), for later
        `lookup`s to find in the cache. Unreadable images are cached as such, never raised."""
        workers = default_hash_workers() if workers is None else workers
        todo = [r for r in refs if isinstance(r, Mapping) and (r.get("sha256") or r.get("path"))]
        if workers <= 1 or len(todo) <= 1:
            for ref in todo:
                self.lookup(ref)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medmax-hash") as pool:
            window: deque = deque()
            for ref in todo:
                window.append(pool.submit(self.lookup, ref))
                if len(window) >= 4 * workers:
                    window.popleft().result()
            for future in window:
                future.result()
