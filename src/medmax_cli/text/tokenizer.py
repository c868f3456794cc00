"""The text tokenizer of a model directory, loaded with the `tokenizers` library and used in batches.

Chameleon/Anole directories ship the text tokenizer as `tokenizer.json` (Hugging Face conversions)
or `text_tokenizer.json` / `tokenizer/text_tokenizer.json` (the original release). We load it with
`tokenizers` directly (no transformers wrapper: it is the fast path, and pack calls it millions of
times), encode many texts per call (see `TextTokenizer`), and never let it add special tokens:
BOS/SEP/EOS are placed by `medmax_cli.pack.sequence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DEFAULT_CACHE_BYTES = 64 << 20  # the text cache of one TextTokenizer (pack splits it over workers)


def entry_bytes(key: str, ids: list[int]) -> int:
    """What one cache entry holds in CPython, roughly: the key str (~49 B + 1-4 B a character), the
    list (56 B + 8 B a slot) and its int objects (28 B each above 256; small ints are shared)."""
    return 105 + len(key) + 36 * len(ids)


class BoundedCache(dict):
    """A str -> ids dict bounded by an estimate of its bytes, not its entries: per-text entries
    vary from a word (~150 B) to a multi-paragraph caption (~50 KB), so an entry count bounds
    nothing (issue 16: 854 MB at 20k instances). Over budget, the oldest half is dropped."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evicted = 0

    def put_many(self, keys: Sequence[str], values: Sequence[list[int]], evict: bool = True) -> None:
        for key, ids in zip(keys, values, strict=True):
            if key not in self:
                self.bytes += entry_bytes(key, ids)
            self[key] = ids
        if evict:
            self.evict()

    def evict(self) -> None:
        if self.bytes > self.max_bytes:
            self.shrink(self.max_bytes // 2)

    def shrink(self, target: int) -> None:
        """Drop the oldest entries (insertion order) until at most `target` bytes remain."""
        drop = []
        total = self.bytes
        for key in self:
            if total <= target:
                break
            total -= entry_bytes(key, self[key])
            drop.append(key)
        for key in drop:
            del self[key]
        self.evicted += len(drop)
        self.bytes = total

    def clear(self) -> None:
        super().clear()
        self.bytes = 0


TOKENIZER_FILES = ("tokenizer.json", "text_tokenizer.json", "tokenizer/text_tokenizer.json")


def find_tokenizer_file(model_dir: str | Path) -> Path:
    """The first of `TOKENIZER_FILES` that exists in `model_dir`; FileNotFoundError otherwise."""
    root = Path(model_dir)
    for name in TOKENIZER_FILES:
        path = root / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{root}: no text tokenizer (looked for {', '.join(TOKENIZER_FILES)})")


class TextTokenizer:
    """A `tokenizers.Tokenizer` that encodes text without special tokens, many texts at a time.

    Texts go through `encode_batch_fast` whole, with a per-text cache: instruction templates and
    short answers repeat across a corpus. The cache stays within about `cache_bytes` (see
    `BoundedCache`): memory does not grow with the corpus, only the hit rate depends on the budget.
    (A word-by-word cache for byte-level BPEs was measured and removed: on bench/pack.py's realistic
    texts it made pack 0.87x as fast as this plain path.)
    """

    def __init__(self, tokenizer, path: Path | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.tokenizer = tokenizer
        self.path = path
        self.cache_bytes = cache_bytes
        self._texts = BoundedCache(cache_bytes)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> TextTokenizer:
        from tokenizers import Tokenizer

        path = find_tokenizer_file(model_dir)
        tok = Tokenizer.from_file(str(path))
        tok.no_padding()
        tok.no_truncation()
        return cls(tok, path)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def _encode_whole(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS added), as the tokenizer gives for the whole text."""
        cache = self._texts
        missing = sorted({text for text in texts if text not in cache})
        if missing:
            cache.put_many(missing, self._encode_whole(missing), evict=False)
        out = [cache[text] for text in texts]
        cache.evict()  # after the lookups: it may drop entries this batch just used
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def load_text_tokenizer(model_dir: str | Path) -> TextTokenizer:
    """The text tokenizer of `model_dir` (see `TOKENIZER_FILES`)."""
    return TextTokenizer.from_model_dir(model_dir)
