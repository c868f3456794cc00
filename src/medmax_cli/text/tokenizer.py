"""The text tokenizer of a model directory, loaded with the `tokenizers` library and used in batches.

Chameleon/Anole directories ship the text tokenizer as `tokenizer.json` (Hugging Face conversions)
or `text_tokenizer.json` / `tokenizer/text_tokenizer.json` (the original release). We load it with
`tokenizers` directly (no transformers wrapper: it is the fast path, and pack calls it millions of
times), encode many texts per call (see `TextTokenizer`), and never let it add special tokens:
BOS/SEP/EOS are placed by `medmax_cli.pack.sequence`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from itertools import chain, islice
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 64 << 20  # all caches of one TextTokenizer together (pack splits it over workers)


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


def word_split_is_exact(tokenizer) -> bool:
    """Can text be encoded word by word (split at single spaces) with the same ids as a whole?

    True for a byte-level BPE with GPT-2 pre-tokenisation, no normaliser and no dropout (the tiny
    model's tokenizer; Hugging Face's byte-level BPEs): its regex never joins characters across a
    single space between two non-space characters, and the space goes with the following word, so
    "a b c" == "a" + " b" + " c". Anything else is tokenised text by text.
    """
    if tokenizer.normalizer is not None or tokenizer.pre_tokenizer is None:
        return False
    try:
        pre = json.loads(tokenizer.pre_tokenizer.__getstate__())
        model = json.loads(tokenizer.model.__getstate__())
    except (TypeError, ValueError, AttributeError):
        return False
    return (
        pre.get("type") == "ByteLevel"
        and pre.get("add_prefix_space") is False
        and pre.get("use_regex", True) is True
        and model.get("type") == "BPE"
        and model.get("dropout") is None
    )


class TextTokenizer:
    """A `tokenizers.Tokenizer` that encodes text without special tokens, many texts at a time.

    Where `word_split_is_exact` holds, texts whose only whitespace is single spaces between words are
    encoded word by word from a cache (each distinct word goes through the real tokenizer once, in
    batches): the tokenizer's regex pre-tokenisation is what costs, and instruction text repeats its
    words. The first `verify` texts that take this path are also encoded whole and compared; any
    difference turns the word path off. Other texts use `encode_batch_fast` with a per-text cache.
    The caches together stay within about `cache_bytes` (see `BoundedCache`): memory does not grow
    with the corpus, only the hit rate depends on the budget.
    """

    def __init__(
        self, tokenizer, path: Path | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES, verify: int = 256
    ):
        self.tokenizer = tokenizer
        self.path = path
        self.cache_bytes = cache_bytes
        # texts repeat less than words: they get a quarter of the budget, words the rest
        self._texts = BoundedCache(cache_bytes // 4)
        self._first = BoundedCache(cache_bytes // 4)  # word at the start of a text
        self._spaced = BoundedCache(cache_bytes // 2)  # word after a space: ids of " " + word
        self._word_path = word_split_is_exact(tokenizer)
        self._to_verify = verify if self._word_path else 0
        specials = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self._specials = re.compile("|".join(re.escape(t) for t in specials)) if specials else None

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
        out: list[list[int] | None] = [None] * len(texts)
        by_words: list[tuple[int, list[str]]] = []
        whole: list[int] = []
        for i, text in enumerate(texts):
            if self._word_path and not (self._specials and self._specials.search(text)):
                words = text.split(" ")
                if words == text.split():  # single spaces between words, no other whitespace
                    by_words.append((i, words))
                    continue
            whole.append(i)
        if by_words:
            self._encode_words(texts, by_words, out)
        missing = sorted({texts[i] for i in whole if texts[i] not in self._texts})
        if missing:
            self._texts.put_many(missing, self._encode_whole(missing), evict=False)
        for i in whole:
            out[i] = self._texts[texts[i]]
        self._texts.evict()  # after the lookups: it may drop entries this batch just used
        return out  # type: ignore[return-value]

    def _encode_words(self, texts: Sequence[str], by_words: list[tuple[int, list[str]]], out: list) -> None:
        first, spaced = self._first, self._spaced
        new_first = sorted({w[0] for _, w in by_words if w[0] not in first})
        seen: set[str] = set()
        for _, words in by_words:
            seen.update(words)  # C-level; the first word is in there too (harmless: a few extra encodes)
        new_spaced = sorted(seen.difference(spaced))
        # entries go in now, eviction waits until this batch has looked up all of its words
        if new_first:
            first.put_many(new_first, self._encode_whole(new_first), evict=False)
        if new_spaced:
            spaced.put_many(new_spaced, self._encode_whole([" " + w for w in new_spaced]), evict=False)
        lookup = spaced.__getitem__
        for i, words in by_words:
            out[i] = first[words[0]] + list(chain.from_iterable(map(lookup, islice(words, 1, None))))
        first.evict()
        spaced.evict()
        if self._to_verify > 0:
            check = by_words[: self._to_verify]
            self._to_verify -= len(check)
            truth = self._encode_whole([texts[i] for i, _ in check])
            if any(out[i] != ids for (i, _), ids in zip(check, truth, strict=True)):
                log.warning("word-by-word tokenisation differs from the tokenizer's; encoding whole texts")
                self._word_path = False
                self._to_verify = 0
                redo = [i for i, _ in by_words]
                for i, ids in zip(redo, self._encode_whole([texts[i] for i in redo]), strict=True):
                    out[i] = ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def load_text_tokenizer(model_dir: str | Path) -> TextTokenizer:
    """The text tokenizer of `model_dir` (see `TOKENIZER_FILES`)."""
    return TextTokenizer.from_model_dir(model_dir)
