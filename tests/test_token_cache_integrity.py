"""Issue 24 class 7: tokens and caches. Pre-tokenised instances get the image-block check that
images[].tokens get (length, codes only inside BOI/EOI, blocks closed); a warm token cache serves
codes only for the file they were made from; several processes opening one fresh cache never fail
with "database is locked"."""

from __future__ import annotations

import io
import multiprocessing
import os

import numpy as np
import orjson
import pytest
from PIL import Image

from medmax_cli.pack.sequence import build_prompt_ids, build_sequence
from medmax_cli.pack.stage import PackSettings, samples
from medmax_cli.records import RecordError
from medmax_cli.streams import ErrorPolicy, RunReport
from medmax_cli.vision.cache import TokenCache

BOS, EOS, EOI, BOI, SEP, OFFSET = 0, 2, 8196, 8197, 8710, 4  # the real Chameleon layout


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from medmax_cli.text.tokenizer import load_text_tokenizer

    return load_text_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def vocab(tiny_model_dir):
    from medmax_cli.text.vocab import ChameleonVocab

    return ChameleonVocab.from_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def grid(tiny_model_dir):
    from medmax_cli.vision.tokencheck import model_tokens_per_image

    return model_tokens_per_image(tiny_model_dir)


def row(tokens):
    turns = [{"role": "user", "content": [{"text": "q"}]}, {"role": "assistant", "content": [{"text": "a"}]}]
    return {
        "id": "mm",
        "kind": "instance",
        "task": "vqa",
        "source": "medmax",
        "tokens": tokens,
        "turns": turns,
    }


def codes(n):
    return [OFFSET + (i % 50) for i in range(n)]


BAD_BLOCKS = {
    "text token inside a block": lambda g: [BOS, BOI, *codes(g - 1), 9000, EOI, 9001, SEP, 9002, EOS],
    "block never closed": lambda g: [BOS, BOI, *codes(g), 9001, SEP, 9002, EOS],
    "image code outside a block": lambda g: [BOS, 9000, OFFSET + 3, SEP, 9002, EOS],
    "empty block": lambda g: [BOS, BOI, EOI, 9001, SEP, 9002, EOS],
    "special token inside a block": lambda g: [BOS, BOI, *codes(g - 1), SEP, EOI, 9001, SEP, 9002, EOS],
    "not integers": lambda g: [BOS, "x", SEP, 9002, EOS],
    "a string": lambda g: "abc",
}


@pytest.mark.parametrize("case", sorted(BAD_BLOCKS))
def test_bad_pretokenised_image_blocks_are_refused(case, tok, vocab, grid):
    tokens = BAD_BLOCKS[case](grid)
    with pytest.raises(RecordError, match="pre-tokenised 'tokens'"):
        build_sequence(row(tokens), vocab=vocab, tokenizer=tok)
    # generate's prompt from a row with tokens only: the same check
    with pytest.raises(RecordError, match="pre-tokenised 'tokens'"):
        build_prompt_ids({**row(tokens), "turns": []}, vocab=vocab, tokenizer=tok)


def pack_samples(records, tok, vocab, grid, policy):
    return list(
        samples(records, vocab=vocab, tokenizer=tok, settings=PackSettings(seq_len=512), policy=policy,
                tokens_per_image=grid)
    )  # fmt: skip


def test_pack_refuses_a_pretokenised_block_of_the_wrong_length(tok, vocab, grid):
    good = [BOS, BOI, *codes(grid), EOI, 9001, SEP, 9002, EOS]
    short = [BOS, BOI, *codes(grid - 2), EOI, 9001, SEP, 9002, EOS]
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, RunReport("pack"))
    out = pack_samples([row(good), {**row(short), "id": "short"}], tok, vocab, grid, policy)
    assert [s.id for s in out] == ["mm"]
    entry = orjson.loads(rejects.getvalue())
    assert entry["record_id"] == "short" and f"holds {grid - 2} codes" in entry["reason"]
    assert f"makes {grid} per image" in entry["reason"]


# --------------------------------------------------------------------------- the token cache


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_hit_is_served_only_for_the_file_it_was_made_from(tmp_path):
    import hashlib

    image = tmp_path / "a.png"
    image.write_bytes(png(1))
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    with TokenCache(tmp_path / "cache") as cache:
        cache.put_many([(sha, [1, 2, 3], image)], "vq")
        assert cache.get_verified([(sha, image)], "vq") == {sha: [1, 2, 3]}
        os.utime(image, ns=(1, 1))  # touched, same content: hashed once, served, stamp renewed
        assert cache.get_verified([(sha, image)], "vq") == {sha: [1, 2, 3]}
        image.write_bytes(png(2))  # replaced by another image under the same name
        assert cache.get_verified([(sha, image)], "vq") == {}
        image.unlink()
        assert cache.get_verified([(sha, image)], "vq") == {}


def test_a_warm_cache_does_not_hide_a_replaced_image(tiny_model_dir, media, tmp_path):
    from medmax_cli.vision.tokenize import tokenize_images

    ref = media.put(png(3))
    record = {"id": "r", "kind": "figure", "caption": "c", "images": [ref]}

    def run(policy):
        return list(
            tokenize_images([orjson.loads(orjson.dumps(record))], model_dir=tiny_model_dir, media=media,
                            policy=policy, cache_dir=tmp_path / "cache")
        )  # fmt: skip

    assert len(run(ErrorPolicy("fail"))) == 1  # the cache is warm now
    path = media.path_of(ref)
    path.chmod(0o644)
    path.write_bytes(png(4))  # the stored file no longer is the image the record names
    rejects = io.BytesIO()
    assert run(ErrorPolicy("skip", rejects, RunReport("t"))) == []
    assert b"does not match its sha256" in rejects.getvalue()


def test_the_wal_switch_waits_for_a_lock_another_process_holds(tmp_path, monkeypatch):
    """SQLite answers `PRAGMA journal_mode=WAL` with "database is locked" at once, without the busy
    timeout, while another connection holds a write lock on a fresh database: the cache retries."""
    import sqlite3

    from medmax_cli.vision import cache as cache_module

    (tmp_path / "cache").mkdir()
    holder = sqlite3.connect(tmp_path / "cache" / cache_module.CACHE_FILE, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")  # what a second process creating the cache holds for a moment
    retries = []

    def release(seconds):
        retries.append(seconds)
        if holder.in_transaction:
            holder.execute("COMMIT")

    monkeypatch.setattr(cache_module, "_sleep", release)
    with TokenCache(tmp_path / "cache") as cache:
        cache.put_many([("a" * 64, [1, 2])], "vq")
        assert cache.get("a" * 64, "vq") == [1, 2]
    assert retries  # it met the lock and waited instead of failing
    holder.close()


def _open_and_use(directory: str, index: int, start, results) -> None:
    start.wait()
    try:
        with TokenCache(directory) as cache:
            cache.put_many([(f"{index:064x}", [index, index + 1])], "vq")
            assert cache.get(f"{index:064x}", "vq") == [index, index + 1]
        results.put((index, "ok"))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put((index, f"{type(exc).__name__}: {exc}"))


def test_several_processes_open_one_fresh_cache_at_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    n = 6
    workers = [
        context.Process(target=_open_and_use, args=(str(tmp_path / "cache"), i, start, results))
        for i in range(n)
    ]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = dict(results.get(timeout=120) for _ in range(n))
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == {i: "ok" for i in range(n)}
    with TokenCache(tmp_path / "cache") as cache:
        assert len(cache) == n
