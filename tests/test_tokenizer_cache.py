"""The text tokenizer's cache stays within its byte budget and never changes the ids (issue 16)."""

from __future__ import annotations

import random
import tracemalloc

import pytest


@pytest.fixture(scope="module")
def raw(tiny_model_dir):
    from medmax_cli.text.tokenizer import load_text_tokenizer

    return load_text_tokenizer(tiny_model_dir).tokenizer


def corpus(n: int, seed: int = 0) -> list[str]:
    """Distinct texts, single-spaced and multi-paragraph."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)] + ["lesion", "μm", "Größe", "肝", "(arrow)", "T2-weighted"]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) + f" case{i}"
        if i % 3 == 0:
            text = text.replace(" ", "\n\n", 2)
        out.append(text)
    return out


def test_cache_stays_within_the_byte_budget_and_keeps_the_ids(raw):
    from medmax_cli.text.tokenizer import TextTokenizer

    budget = 96 << 10
    tok = TextTokenizer(raw, cache_bytes=budget)
    texts = corpus(2000)
    expected = [e.ids for e in raw.encode_batch(texts, add_special_tokens=False)]
    got = []
    for start in range(0, len(texts), 128):
        got += tok.encode_batch(texts[start : start + 128])
        assert tok._texts.bytes <= budget
    # the running estimate is the sum of what is held
    assert tok._texts.bytes == sum(len(k) + 105 + 36 * len(v) for k, v in tok._texts.items())
    assert got == expected
    assert tok._texts.evicted > 0  # the budget did bind
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
