"""The text tokenizer's caches stay within their byte budget and never change the ids (issue 16)."""

from __future__ import annotations

import random
import tracemalloc

import pytest


@pytest.fixture(scope="module")
def raw(tiny_model_dir):
    from medmax_cli.text.tokenizer import load_text_tokenizer

    return load_text_tokenizer(tiny_model_dir).tokenizer


def corpus(n: int, seed: int = 0) -> list[str]:
    """Distinct texts of both kinds: single-spaced (word path) and multi-paragraph (whole path)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)] + ["lesion", "μm", "Größe", "肝", "(arrow)", "T2-weighted"]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) + f" case{i}"
        if i % 3 == 0:
            text = text.replace(" ", "\n\n", 2)  # newlines: not the word path
        out.append(text)
    return out


def test_caches_stay_within_the_byte_budget_and_keep_the_ids(raw):
    from medmax_cli.text.tokenizer import TextTokenizer

    budget = 96 << 10
    tok = TextTokenizer(raw, cache_bytes=budget, verify=0)
    assert tok._word_path
    texts = corpus(2000)
    expected = [e.ids for e in raw.encode_batch(texts, add_special_tokens=False)]
    got = []
    for start in range(0, len(texts), 128):
        got += tok.encode_batch(texts[start : start + 128])
        assert sum(c.bytes for c in (tok._texts, tok._first, tok._spaced)) <= budget
    for cache in (tok._texts, tok._first, tok._spaced):  # the running estimate is the sum of what is held
        assert cache.bytes == sum(len(k) + 105 + 36 * len(v) for k, v in cache.items())
    assert got == expected
    assert tok._texts.evicted > 0 and tok._spaced.evicted > 0  # the budget did bind
    assert tok.encode_batch(texts[::-1]) == expected[::-1]  # after eviction: still the tokenizer's ids


def test_entry_estimate_is_close_to_what_python_allocates(raw):
    """The byte estimate must track real memory (within 2x), or the budget bounds nothing."""
    from medmax_cli.text.tokenizer import BoundedCache, entry_bytes

    texts = corpus(400, seed=1)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = BoundedCache(1 << 30)
    keys = [t + "!" for t in texts]  # fresh strs; ids and their ints made here, as pack makes them
    cache.put_many(keys, [e.ids for e in raw.encode_batch(keys, add_special_tokens=False)])
    del keys
    allocated = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    estimate = sum(entry_bytes(k, v) for k, v in cache.items())
    assert 0.5 < estimate / allocated < 2.0, (estimate, allocated)
