"""The text tokenizer of a model directory, loaded with the `tokenizers` library and used in batches.

Chameleon/Anole directories ship the text tokenizer as `tokenizer.json` (Hugging Face conversions)
or `text_tokenizer.json` / `tokenizer/text_tokenizer.json` (the original release). We load it with
`tokenizers` directly (no transformers wrapper: it is the fast path, and pack calls it millions of
times) and never let it add special tokens: BOS/SEP/EOS are placed by `medmax_cli.pack.sequence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    """A `tokenizers.Tokenizer` that encodes text without special tokens, one batch at a time.

    Repeated strings (system prompts, fixed questions, empty parts) are common in instruction
    data, so a small cache keyed by the text avoids re-encoding them.
    """

    def __init__(self, tokenizer, path: Path | None = None, cache_size: int = 65536):
        self.tokenizer = tokenizer
        self.path = path
        self._cache: dict[str, list[int]] = {}
        self._cache_size = cache_size

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

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS added); one `encode_batch` call for the unseen ones."""
        cache = self._cache
        todo = sorted({t for t in texts if t not in cache})
        if todo:
            if len(cache) + len(todo) > self._cache_size:
                cache.clear()
                todo = sorted(set(texts))
            encodings = self.tokenizer.encode_batch(todo, add_special_tokens=False)
            for text, enc in zip(todo, encodings, strict=True):
                cache[text] = enc.ids
        return [cache[t] for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def load_text_tokenizer(model_dir: str | Path) -> TextTokenizer:
    """The text tokenizer of `model_dir` (see `TOKENIZER_FILES`)."""
    return TextTokenizer.from_model_dir(model_dir)
