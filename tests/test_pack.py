"""medmax pack: sequences and labels, truncation, packing, shards, manifest, reader, command."""

from __future__ import annotations

import copy
import json
import random
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medmax_cli.pack.binpack import efficiency, first_fit_decreasing, pack_lengths
from medmax_cli.pack.reader import PackedShards, collate_packed
from medmax_cli.pack.sequence import IGNORE, Sample, build_prompt_ids, build_sequence
from medmax_cli.pack.shards import PackedRow, ShardWriter, make_row
from medmax_cli.pack.stage import PackSettings, pack_to_dir
from medmax_cli.pack.truncate import fit_length
from medmax_cli.records import RecordError
from medmax_cli.streams import ErrorPolicy

# The real Chameleon layout (tests may pin ids; library code reads them from the vocabulary).
BOS, EOS, PAD, EOI, BOI, SEP = 0, 2, 1, 8196, 8197, 8710
OFFSET = 4


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from medmax_cli.text.tokenizer import load_text_tokenizer

    return load_text_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def vocab(tiny_model_dir):
    from medmax_cli.text.vocab import ChameleonVocab

    return ChameleonVocab.from_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def vq(tiny_model_dir):
    try:
        from medmax_cli.vision.fingerprint import vq_fingerprint
    except ImportError:
        return "tiny-vq"
    return vq_fingerprint(tiny_model_dir)


def enc(tok, text):
    """Token ids of a text piece straight from the `tokenizers` library, no specials."""
    return tok.tokenizer.encode(text, add_special_tokens=False).ids


def image(codes, vq="tiny-vq"):
    return {"sha256": "0" * 64, "path": "x.png", "tokens": list(codes), "vq": vq}


def block(codes):
    return [BOI] + [c + OFFSET for c in codes] + [EOI]


def instance(rid, turns, images=(), task="vqa", source="test"):
    return {
        "id": rid,
        "task": task,
        "source": source,
        "license": "cc-by",
        "credential": False,
        "images": list(images),
        "turns": turns,
    }


def user(*parts):
    return {"role": "user", "content": list(parts)}


def assistant(*parts):
    return {"role": "assistant", "content": list(parts)}


# --------------------------------------------------------------------------- sequences


def test_one_turn_layout_is_medmax(tok, vocab):
    codes = [0, 1, 8191]
    inst = instance(
        "a", [user({"image": 0}, {"text": "Is there a lesion?"}), assistant({"text": "yes"})], [image(codes)]
    )
    s = build_sequence(inst, vocab=vocab, tokenizer=tok)
    q, a = enc(tok, "Is there a lesion?"), enc(tok, "yes")
    expected = [BOS] + block(codes) + q + [SEP] + a + [EOS]
    assert s.input_ids.dtype == np.int32 and s.labels.dtype == np.int32
    assert s.input_ids.tolist() == expected
    assert s.labels.tolist() == [IGNORE] * (1 + 5 + len(q) + 1) + a + [EOS]
    assert s.image_spans == [(1, 6)]
    assert (s.id, s.task, s.source) == ("a", "vqa", "test")


def test_multi_turn_labels_cover_each_answer_and_its_closer(tok, vocab):
    inst = instance(
        "m",
        [
            user({"text": "Describe the image."}),
            assistant({"text": "A liver."}),
            user({"text": "Any lesion?"}),
            assistant({"text": "no"}),
        ],
    )
    s = build_sequence(inst, vocab=vocab, tokenizer=tok)
    u1, a1, u2, a2 = (enc(tok, t) for t in ("Describe the image.", "A liver.", "Any lesion?", "no"))
    assert s.input_ids.tolist() == [BOS] + u1 + [SEP] + a1 + [SEP] + u2 + [SEP] + a2 + [EOS]
    ig = lambda n: [IGNORE] * n  # noqa: E731
    assert s.labels.tolist() == ig(1 + len(u1) + 1) + a1 + [SEP] + ig(len(u2) + 1) + a2 + [EOS]
    every = build_sequence(inst, vocab=vocab, tokenizer=tok, train_on="all")
    assert every.labels.tolist() == [IGNORE] + s.input_ids.tolist()[1:]


def test_multi_image_and_generated_image_in_answer(tok, vocab):
    c0, c1, c2 = [5, 6], [7, 8, 9], [100, 200]
    inst = instance(
        "g",
        [
            user({"text": "Compare"}, {"image": 0}, {"text": "and"}, {"image": 1}),
            assistant({"text": "Here:"}, {"image": 2}),
        ],
        [image(c0), image(c1), image(c2)],
        task="interleaved",
    )
    s = build_sequence(inst, vocab=vocab, tokenizer=tok)
    cmp_, and_, here = enc(tok, "Compare"), enc(tok, "and"), enc(tok, "Here:")
    prompt = [BOS] + cmp_ + block(c0) + and_ + block(c1) + [SEP]
    answer = here + block(c2) + [EOS]
    assert s.input_ids.tolist() == prompt + answer
    assert s.labels.tolist() == [IGNORE] * len(prompt) + answer
    p0 = 1 + len(cmp_)
    p1 = p0 + 4 + len(and_)
    p2 = len(prompt) + len(here)
    assert s.image_spans == [(p0, p0 + 4), (p1, p1 + 5), (p2, p2 + 4)]
    for start, end in s.image_spans:
        assert s.input_ids[start] == BOI and s.input_ids[end - 1] == EOI


def test_pretokenised_medmax_row_used_as_is(tok, vocab):
    tokens = [BOS, BOI, 4, 5, EOI, 9000, 9001, SEP, 9002, 9003, EOS]
    row = {
        "id": "mm",
        "kind": "instance",
        "task": "vqa",
        "source": "medmax",
        "tokens": tokens,
        "turns": [user({"text": "ignored: tokens win"}), assistant({"text": "x"})],
    }
    s = build_sequence(row, vocab=vocab, tokenizer=tok)
    assert s.input_ids.tolist() == tokens
    assert s.labels.tolist() == [IGNORE] * 8 + [9002, 9003, EOS]
    assert s.image_spans == [(1, 5)]
    with pytest.raises(RecordError, match="no separator"):
        build_sequence({**row, "tokens": [BOS, 9000, EOS]}, vocab=vocab, tokenizer=tok)


def test_prompt_ids_for_generation(tok, vocab):
    inst = instance(
        "p", [user({"image": 0}, {"text": "Is there a lesion?"}), assistant({"text": "yes"})], [image([3])]
    )
    q = enc(tok, "Is there a lesion?")
    assert build_prompt_ids(inst, vocab=vocab, tokenizer=tok) == [BOS] + block([3]) + q + [SEP]
    assert build_prompt_ids(inst, vocab=vocab, tokenizer=tok, prompt_format="raw") == [BOS] + block([3]) + q
    # A trailing user turn (no answer yet) is all prompt.
    open_ = instance("o", [user({"text": "Is there a lesion?"})])
    assert build_prompt_ids(open_, vocab=vocab, tokenizer=tok) == [BOS] + q + [SEP]
    # A bare `tokenizers.Tokenizer` works too.
    assert build_prompt_ids(open_, vocab=vocab, tokenizer=tok.tokenizer) == [BOS] + q + [SEP]


def test_bad_instances_say_why(tok, vocab):
    no_tokens = instance(
        "n", [user({"image": 0}), assistant({"text": "x"})], [{"sha256": "0" * 64, "path": "a"}]
    )
    with pytest.raises(RecordError, match="no VQ tokens"):
        build_sequence(no_tokens, vocab=vocab, tokenizer=tok)
    with pytest.raises(RecordError, match="nothing to learn"):
        build_sequence(instance("u", [user({"text": "hi"})]), vocab=vocab, tokenizer=tok)
    bad_code = instance("b", [user({"image": 0}), assistant({"text": "x"})], [image([8192])])
    with pytest.raises(RecordError, match="tokens"):
        build_sequence(bad_code, vocab=vocab, tokenizer=tok)


# --------------------------------------------------------------------------- truncation


def _synthetic_sample(rng: random.Random) -> Sample:
    """Random text runs and image blocks, a supervised tail."""
    ids, spans = [BOS], []
    for _ in range(rng.randint(1, 5)):
        ids += [9000] * rng.randint(0, 7)
        if rng.random() < 0.7:
            n = rng.randint(1, 9)
            spans.append((len(ids), len(ids) + n + 2))
            ids += [BOI] + [4] * n + [EOI]
    ids += [SEP]
    prompt = len(ids)
    ids += [9001] * rng.randint(1, 6) + [EOS]
    arr = np.array(ids, dtype=np.int32)
    labels = arr.copy()
    labels[:prompt] = IGNORE
    return Sample(arr, labels, spans, id="s")


def test_truncation_never_cuts_an_image_block():
    rng = random.Random(0)
    kept = rejected = 0
    for _ in range(400):
        s = _synthetic_sample(rng)
        seq_len = rng.randint(2, len(s) + 3)
        try:
            t = fit_length(s, seq_len)
        except RecordError as exc:
            assert "too long" in str(exc)
            rejected += 1
            continue
        kept += 1
        assert len(t) <= seq_len
        assert t.input_ids.tolist() == s.input_ids[: len(t)].tolist()
        assert (t.labels != IGNORE).any()
        ids = t.input_ids.tolist()
        assert ids.count(BOI) == ids.count(EOI)  # no half image
        for start, end in s.image_spans:  # every block is wholly in or wholly out
            assert end <= len(t) or start >= len(t)
        assert t.truncated == (len(s) > seq_len)
    assert kept and rejected


def test_truncation_example_moves_cut_to_image_start():
    ids = np.array([BOS, 9000, SEP, 9001, 9001, BOI, 4, 4, 4, EOI, 9001, EOS], dtype=np.int32)
    labels = ids.copy()
    labels[:3] = IGNORE
    s = Sample(ids, labels, [(5, 10)])
    t = fit_length(s, 8)  # 8 would fall inside the block [5, 10)
    assert t.input_ids.tolist() == [BOS, 9000, SEP, 9001, 9001] and t.image_spans == []
    prompt_only = Sample(ids, np.full_like(ids, IGNORE), [(5, 10)])
    with pytest.raises(RecordError, match="no supervised token"):
        fit_length(prompt_only, 8)


# --------------------------------------------------------------------------- packing


def test_packer_keeps_every_item_once_and_fits():
    rng = np.random.default_rng(1)
    lengths = (rng.choice(3, 3000, p=[0.1, 0.8, 0.1]) * 130 + rng.integers(3, 90, 3000)).tolist()
    rows = pack_lengths(lengths, 512, buffer_size=200, seed=3)
    flat = sorted(i for row in rows for i in row)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    ours, ffd = efficiency(lengths, rows, 512), efficiency(lengths, first_fit_decreasing(lengths, 512), 512)
    assert ours > 0.8 and ffd >= ours - 0.02
    assert pack_lengths(lengths, 512, buffer_size=200, seed=3) == rows  # deterministic


def _corpus(n, vq, seed=0, codes_per_image=64):
    rng = random.Random(seed)
    words = "lesion liver chest radiograph nodule hypodense tissue axial slice shows a the of".split()
    out = []
    for i in range(n):
        k = rng.choice([0, 1, 1, 1, 2])
        images = [image([rng.randrange(8192) for _ in range(codes_per_image)], vq) for _ in range(k)]
        q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))
        a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        parts = [{"image": j} for j in range(k)] + [{"text": q}]
        out.append(
            instance(
                f"r{i:04d}",
                [user(*parts), assistant({"text": a})],
                images,
                task=rng.choice(["vqa", "captioning"]),
                source=rng.choice(["pmc", "vqa_rad"]),
            )
        )
    return out


def _pack(records, out, tok, vocab, vq, workers=0, **kw):
    settings = PackSettings(**{"seq_len": 512, "pack_buffer": 64, "max_count": 16, **kw})
    policy = ErrorPolicy("fail", stage="pack")
    return pack_to_dir(
        iter(records),
        out,
        vocab=vocab,
        tokenizer=tok,
        settings=settings,
        policy=policy,
        model={"dir": "tiny", "vq_fingerprint": vq},
        workers=workers,
    )


def test_pack_to_dir_round_trip_whole_samples_once(tmp_path, tok, vocab, vq):
    records = _corpus(200, vq)
    manifest = _pack(records, tmp_path / "s", tok, vocab, vq)
    expected = {r["id"]: build_sequence(r, vocab=vocab, tokenizer=tok) for r in records}
    shards = PackedShards(tmp_path / "s", verify=True)
    seen = Counter()
    tokens = supervised = 0
    for row in shards.iter_rows(shuffle=False):
        assert len(row) <= 512 and row.boundaries[0] == 0 and row.boundaries[-1] == len(row)
        assert np.all(np.diff(row.boundaries) > 0)
        for k, rid in enumerate(row.meta["ids"]):
            a, b = int(row.boundaries[k]), int(row.boundaries[k + 1])
            assert row.input_ids[a:b].tolist() == expected[rid].input_ids.tolist()
            assert row.labels[a:b].tolist() == expected[rid].labels.tolist()
            assert row.meta["tasks"][k] == expected[rid].task
            seen[rid] += 1
        tokens += len(row)
        supervised += int((row.labels != IGNORE).sum())
    assert seen == Counter({r["id"]: 1 for r in records})  # multiset in == out
    assert manifest["samples"] == 200 and manifest["tokens"] == tokens
    assert manifest["supervised_tokens"] == supervised
    assert sum(manifest["by_task"].values()) == 200
    assert manifest["efficiency"] == pytest.approx(tokens / (manifest["rows"] * 512), abs=1e-6)
    assert manifest["efficiency"] > 0.9
    assert len(manifest["shards"]) > 1 and sum(s["rows"] for s in manifest["shards"]) == manifest["rows"]


def test_no_pack_is_one_sample_per_row_in_order(tmp_path, tok, vocab, vq):
    records = _corpus(30, vq)
    manifest = _pack(records, tmp_path / "s", tok, vocab, vq, pack=False)
    rows = list(PackedShards(tmp_path / "s").iter_rows(shuffle=False))
    assert manifest["rows"] == 30 and [r.meta["ids"] for r in rows] == [[r["id"]] for r in records]


def test_same_input_and_seed_give_identical_bytes(tmp_path, tok, vocab, vq):
    records = _corpus(120, vq)
    _pack(records, tmp_path / "a", tok, vocab, vq, seed=7)
    _pack(
        records, tmp_path / "b", tok, vocab, vq, seed=7, batch_size=16, workers=2
    )  # any batching, 2 processes
    _pack(records, tmp_path / "c", tok, vocab, vq, seed=8)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() != (
        tmp_path / "c" / "shard-000000.tar"
    ).read_bytes()


def test_failed_run_leaves_nothing_that_looks_complete(tmp_path, tok, vocab, vq):
    records = _corpus(100, vq)

    def dying():
        yield from records[:90]
        raise RuntimeError("killed")

    out = tmp_path / "s"
    _pack(records, out, tok, vocab, vq)  # a previous finished run in the same directory
    with pytest.raises(RuntimeError):
        _pack(dying(), out, tok, vocab, vq, pack_buffer=8, max_count=4)
    assert not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="manifest"):
        PackedShards(out)


def test_killed_process_leaves_no_complete_looking_shard(tmp_path, tiny_model_dir, tok, vocab, vq):
    """SIGKILL mid-run: finished shards are whole tars, the open one only has a temporary name,
    and there is no manifest; a rerun cleans up."""
    out = tmp_path / "s"
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in _corpus(60, vq))
    cmd = [
        sys.executable,
        "-m",
        "medmax_cli",
        "pack",
        "-",
        "-o",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--seq-len",
        "512",
        "--pack-buffer",
        "2",
        "--max-count",
        "2",
        "--batch-size",
        "1",
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(lines[: len(lines) // 2])
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.is_dir() and any(out.glob("shard-*.tar"))):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdin.close()
        proc.stderr.close()
    assert not (out / "manifest.json").exists()
    finished = sorted(out.glob("shard-*.tar"))
    assert finished
    for path in finished:
        with tarfile.open(path) as archive:
            names = archive.getnames()
        assert len(names) == 8 and names == sorted(names)  # 2 whole rows of 4 members
    leftovers = [p.name for p in out.iterdir() if p not in finished and p.name != ".lock"]
    assert all(n.startswith(".shard-") and n.endswith(".tmp") for n in leftovers)
    _pack(_corpus(60, vq), out, tok, vocab, vq)  # a rerun starts clean
    assert (out / "manifest.json").exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_shards_read_by_webdataset_and_tar(tmp_path, tok, vocab, vq):
    import webdataset as wds

    records = _corpus(40, vq)
    manifest = _pack(records, tmp_path / "s", tok, vocab, vq)
    urls = [str(tmp_path / "s" / s["name"]) for s in manifest["shards"]]
    count = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        assert sample["__key__"].startswith("row-")
        ids, labels, bounds = sample["input_ids.npy"], sample["labels.npy"], sample["boundaries.npy"]
        assert ids.dtype == np.int32 and ids.shape == labels.shape and bounds[-1] == len(ids)
        assert len(sample["json"]["ids"]) == len(bounds) - 1
        count += 1
    assert count == manifest["rows"]
    listing = subprocess.run(["tar", "-tvf", urls[0]], check=True, capture_output=True, text=True).stdout
    assert "row-000000000.input_ids.npy" in listing and "1970-01-01" in listing


# --------------------------------------------------------------------------- reader


def _write_rows(out: Path, lengths: list[int], max_count: int) -> None:
    from medmax_cli.pack.manifest import PackStats, build_manifest, write_manifest

    stats = PackStats(64)
    with ShardWriter(out, max_count=max_count) as writer:
        for i, n in enumerate(lengths):
            s = Sample(np.full(n, i, dtype=np.int32), np.full(n, i, dtype=np.int32), id=f"x{i}")
            row = make_row([s])
            writer.write(row)
            stats.add_row(row)
    write_manifest(out, build_manifest(settings={"seq_len": 64}, model={}, stats=stats, shards=writer.shards))


@pytest.mark.parametrize("n_rows,max_count", [(23, 4), (5, 10), (1, 1)])
def test_reader_gives_every_rank_the_same_number_of_rows(tmp_path, n_rows, max_count):
    _write_rows(tmp_path, [3 + i % 5 for i in range(n_rows)], max_count)
    shards = PackedShards(tmp_path)
    assert shards.num_rows == n_rows
    for world in (1, 2, 3, 4, 8):
        for workers in (1, 2, 3):
            per_rank = []
            union = Counter()
            for rank in range(world):
                got = []
                for w in range(workers):
                    rows = list(shards.iter_rows(rank, world, w, workers, epoch=1, seed=5))
                    got += [int(r.input_ids[0]) for r in rows]
                    assert all(r.meta["ids"] == [f"x{int(r.input_ids[0])}"] for r in rows)
                per_rank.append(len(got))
                union.update(got)
            assert per_rank == [shards.rows_per_rank(world)] * world
            assert set(union) == set(range(n_rows))  # every row at least once
            assert (
                sum(union.values()) - n_rows == shards.rows_per_rank(world) * world - n_rows
            )  # wrapped extras
    a = [int(r.input_ids[0]) for r in shards.iter_rows(epoch=0, seed=1)]
    b = [int(r.input_ids[0]) for r in shards.iter_rows(epoch=0, seed=1)]
    assert a == b and sorted(a) == list(range(n_rows))


def test_collate_packed_positions_documents_padding():
    row = PackedRow(
        np.array([0, 11, 12, 0, 21], dtype=np.int32),
        np.array([-100, 11, 12, -100, 21], dtype=np.int32),
        np.array([0, 3, 5], dtype=np.int32),
        {"ids": ["a", "b"]},
    )
    short = PackedRow(
        np.array([0, 31], dtype=np.int32),
        np.array([-100, 31], dtype=np.int32),
        np.array([0, 2], dtype=np.int32),
        {"ids": ["c"]},
    )
    batch = collate_packed([row, short], pad_id=PAD, seq_len=6)
    assert batch["input_ids"].tolist() == [[0, 11, 12, 0, 21, PAD], [0, 31, PAD, PAD, PAD, PAD]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, 21, -100], [-100, 31, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 0, 0, 0, 0]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 1, 1, -1], [0, 0, -1, -1, -1, -1]]
    assert collate_packed([short], pad_id=PAD)["input_ids"].shape == (1, 2)
    with pytest.raises(ValueError):
        collate_packed([row], pad_id=PAD, seq_len=4)


# --------------------------------------------------------------------------- command


def test_pack_command_writes_shards_and_rejects_with_reason(tmp_path, tiny_model_dir, vq, medmax):
    records = _corpus(40, vq)
    too_long = instance(  # a prompt of 8 whole image blocks of 66 tokens leaves no room in 512
        "long",
        [user(*({"image": i} for i in range(8))), assistant({"text": "x"})],
        [image(range(64), vq)] * 8,
    )
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in [*records, too_long])
    out = tmp_path / "shards"
    result = medmax(
        "pack",
        "-o",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--seq-len",
        "512",
        "--on-error",
        "skip",
        "--rejects",
        str(tmp_path / "rej.jsonl"),
        input=lines,
    )
    assert result.stdout == b""
    assert b"efficiency" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 40 and manifest["settings"]["seq_len"] == 512
    assert manifest["model"]["tokenizer_fingerprint"]
    rejected = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [r["record_id"] for r in rejected] == ["long"] and "too long" in rejected[0]["reason"]
    assert PackedShards(out, verify=True).num_rows == manifest["rows"]


def test_pack_command_refuses_bad_flags(tmp_path, tiny_model_dir, medmax):
    result = medmax(
        "pack",
        "-o",
        str(tmp_path / "s"),
        "--model",
        str(tiny_model_dir),
        "--train-on",
        "users",
        input=b"",
        check=False,
    )
    assert result.returncode == 2 and b"--train-on" in result.stderr
    result = medmax(
        "pack",
        "-o",
        str(tmp_path / "s"),
        "--model",
        str(tiny_model_dir),
        "--max-size",
        "lots",
        input=b"",
        check=False,
    )
    assert result.returncode == 2


def test_tokenizer_batches_match_single_encodes(tok):
    texts = ["Is there a lesion?", "", "yes", "Is there a lesion?", "Axial CT slice"]
    assert tok.encode_batch(texts) == [enc(tok, t) for t in texts]


def test_images_without_tokens_are_encoded_on_the_fly(
    tmp_path, tiny_model_dir, tok, vocab, vq, media, medmax
):
    pytest.importorskip("medmax_cli.vision.tokenize")
    from PIL import Image

    from medmax_cli.pack.stage import PackSettings, samples
    from medmax_cli.vision.tokenize import tokenize_images

    info = json.loads((tiny_model_dir / "medmax_model.json").read_text())
    rng = np.random.default_rng(0)
    refs = [
        media.put_image(Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))) for _ in range(2)
    ]
    raw = instance(
        "raw", [user({"image": 0}, {"text": "What is shown?"}), assistant({"text": "a liver"})], [refs[0]]
    )
    stale = instance(
        "stale", [user({"image": 0}), assistant({"text": "x"})], [{**image([1], "old"), **refs[1]}]
    )
    policy = ErrorPolicy("fail", stage="pack")

    def encode(records):
        return tokenize_images(records, model_dir=tiny_model_dir, media=media, policy=policy, batch_size=4)

    got = list(
        samples(
            copy.deepcopy([raw, stale]),
            vocab=vocab,
            tokenizer=tok,
            settings=PackSettings(seq_len=512),
            policy=policy,
            encode_images=encode,
            expected_vq=vq,
        )
    )
    assert [s.id for s in got] == ["raw", "stale"]
    for s in got:
        ((start, end),) = s.image_spans
        assert end - start == info["tokens_per_image"] + 2  # re-encoded with the model's VQ, whole block
    # Without an encoder, tokens of another codebook are refused with the reason.
    with pytest.raises(RecordError, match="VQ 'old'"):
        list(
            samples(
                [stale],
                vocab=vocab,
                tokenizer=tok,
                settings=PackSettings(seq_len=512),
                policy=policy,
                expected_vq=vq,
            )
        )
    # The command does the same: synthesize-style records straight into pack.
    lines = json.dumps(raw).encode() + b"\n"
    out = tmp_path / "s"
    medmax(
        "pack",
        "-o",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--seq-len",
        "512",
        "--media-dir",
        str(media.root),
        "--device",
        "cpu",
        input=lines,
    )
    (row,) = PackedShards(out).iter_rows()
    assert row.input_ids.tolist() == got[0].input_ids.tolist()


def test_cached_tokenisation_equals_the_tokenizer(tok):
    """Through its text cache (cold, then warm) pack's tokenizer gives exactly the tokenizer's ids."""
    from medmax_cli.text.tokenizer import TextTokenizer

    rng = random.Random(3)
    pieces = [
        "lesion",
        "Liver",
        "CT",
        "3E",
        "12.5mm",
        "it's",
        "we'll",
        "don't",
        "'s",
        "(arrow)",
        "a,b",
        "T2-weighted",
        "μm",
        "Größe",
        "肝",
        "🙂",
        "--",
        "'",
        "<image>",
        "<s>",
        "x<eoss>y",
        "",
        " ",
        "  ",
        "\n",
        "\t",
        "\u00a0",
    ]
    texts = []
    for _ in range(400):
        words = [rng.choice(pieces) for _ in range(rng.randint(0, 12))]
        texts.append(rng.choice([" ", " ", " ", "  ", "\n"]).join(words))
    texts += ["", " lead", "trail ", "a  b", "Is there a lesion?", "x\n y", "y \nz"]
    fresh = TextTokenizer(tok.tokenizer)
    expected = [e.ids for e in tok.tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert fresh.encode_batch(texts) == expected
    assert fresh.encode_batch(texts[::-1]) == expected[::-1]  # from the warm cache


def test_shard_bytes_equal_what_tarfile_writes(tmp_path):
    """The writer's hand-made USTAR headers are byte for byte what the tarfile module writes."""
    import io as _io

    from medmax_cli.pack.shards import ROW_KEY, row_members, tar_member_info

    rows = [
        make_row([Sample(np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32), id=f"s{n}")])
        for n in (1, 127, 128, 1000, 70000)
    ]
    with ShardWriter(tmp_path, max_count=100) as writer:
        for row in rows:
            writer.write(row)
    buffer = _io.BytesIO()
    with tarfile.TarFile(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, row in enumerate(rows):
            for name, data in row_members(ROW_KEY % i, row):
                tar.addfile(tar_member_info(name, len(data)), _io.BytesIO(data))
    assert (tmp_path / "shard-000000.tar").read_bytes() == buffer.getvalue()


def test_reader_verify_catches_a_changed_shard(tmp_path):
    _write_rows(tmp_path, [5, 6, 7], max_count=2)
    PackedShards(tmp_path, verify=True)
    shard = tmp_path / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        PackedShards(tmp_path, verify=True)
