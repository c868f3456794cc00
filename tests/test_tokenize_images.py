"""The tokenize-images stage and the tokenize-images / detokenize commands on the tiny model."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
from PIL import Image

from medmax_cli.records import RecordError
from medmax_cli.streams import ErrorPolicy, parse_jsonl
from medmax_cli.vision.encoder import VQEncoder
from medmax_cli.vision.fingerprint import vq_fingerprint
from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.tokenize import tokenize_images


def _image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def _records(media, n: int, *, seed: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        refs = [media.put(_image_bytes(seed + i, "JPEG" if i % 2 else "PNG"))]
        if i % 3 == 0:
            refs.append(media.put(_image_bytes(seed + 1000 + i)))
        out.append({"id": f"r{i}", "kind": "figure", "caption": "c", "images": refs})
    return out


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return VQEncoder.from_model_dir(tiny_model_dir)


def _run(records, model_dir, media, tmp_path, *, policy=None, **kwargs):
    policy = policy or ErrorPolicy("fail", stage="tokenize-images")
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    return list(tokenize_images(records, model_dir=model_dir, media=media, policy=policy, **kwargs)), policy


def test_tokens_and_order_with_several_workers(tiny_model_dir, media, tmp_path, encoder):
    spec = VQSpec.from_model_dir(tiny_model_dir)
    vq = vq_fingerprint(tiny_model_dir)
    records = _records(media, 14)
    serial, _ = _run(
        orjson.loads(orjson.dumps(records)),
        tiny_model_dir,
        media,
        tmp_path,
        encoder=encoder,
        workers=0,
        batch_size=4,
        cache_dir=tmp_path / "c0",
    )
    parallel, policy = _run(
        orjson.loads(orjson.dumps(records)),
        tiny_model_dir,
        media,
        tmp_path,
        encoder=encoder,
        workers=3,
        batch_size=5,
        prefetch=7,
        cache_dir=tmp_path / "c1",
    )
    assert [r["id"] for r in parallel] == [r["id"] for r in records]
    assert parallel == serial
    for record in parallel:
        for image in record["images"]:
            assert image["vq"] == vq and len(image["tokens"]) == spec.tokens_per_image
            assert all(0 <= t < spec.num_embeddings for t in image["tokens"])
    assert policy.report.counts["encoded"] == sum(len(r["images"]) for r in records)


def test_tokens_equal_a_direct_encode(tiny_model_dir, media, tmp_path, encoder):
    import torch

    from medmax_cli.vision.preprocess import preprocess

    record = _records(media, 1, seed=7)[0]
    (out,), _ = _run([record], tiny_model_dir, media, tmp_path, encoder=encoder)
    pixels = torch.stack([preprocess(media.open(ref), 32) for ref in out["images"]])
    assert [im["tokens"] for im in out["images"]] == encoder.encode(pixels).tolist()


def test_cache_hit_never_calls_the_encoder(tiny_model_dir, media, tmp_path, encoder):
    records = _records(media, 3, seed=20)
    first, _ = _run(orjson.loads(orjson.dumps(records)), tiny_model_dir, media, tmp_path, encoder=encoder)
    calls = encoder.calls
    again, policy = _run(
        orjson.loads(orjson.dumps(records)), tiny_model_dir, media, tmp_path, encoder=encoder
    )
    assert encoder.calls == calls and again == first
    assert policy.report.counts["cached"] == 4 and "encoded" not in policy.report.counts

    class NoEncoder:  # a full cache hit does not even build an encoder
        def __getattr__(self, name):
            raise AssertionError("encoder used on a cache hit")

    third, _ = _run(orjson.loads(orjson.dumps(records)), tiny_model_dir, media, tmp_path, encoder=NoEncoder())
    assert third == first


def test_repeated_image_is_encoded_once_in_a_run(tiny_model_dir, media, tmp_path, encoder):
    ref = media.put(_image_bytes(42))
    records = [{"id": f"d{i}", "kind": "figure", "caption": "", "images": [dict(ref)]} for i in range(5)]
    out, policy = _run(records, tiny_model_dir, media, tmp_path, encoder=encoder, workers=2, batch_size=8)
    assert policy.report.counts["encoded"] == 1 and policy.report.counts["duplicates"] == 4
    assert len({tuple(r["images"][0]["tokens"]) for r in out}) == 1


def test_existing_tokens_for_this_codebook_are_kept(tiny_model_dir, media, tmp_path):
    vq = vq_fingerprint(tiny_model_dir)
    codes = list(range(VQSpec.from_model_dir(tiny_model_dir).tokens_per_image))  # a whole grid
    records = [{"id": "t", "kind": "figure", "caption": "", "images": [{"tokens": codes, "vq": vq}]}]
    out, policy = _run(records, tiny_model_dir, media, tmp_path, encoder=object())
    assert out[0]["images"][0]["tokens"] == codes and policy.report.counts["kept"] == 1


def test_unreadable_images_are_rejected_with_a_reason(tiny_model_dir, media, tmp_path, encoder):
    good = _records(media, 3, seed=30)
    (media.root / "bad").mkdir(parents=True)
    (media.root / "bad" / "corrupt.png").write_bytes(b"garbage" * 20)
    truncated = _image_bytes(31)
    (media.root / "bad" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    records = [
        good[0],
        {"id": "corrupt", "kind": "figure", "caption": "", "images": [{"path": "bad/corrupt.png"}]},
        good[1],
        {"id": "cut", "kind": "figure", "caption": "", "images": [{"path": "bad/truncated.png"}]},
        {"id": "url", "kind": "figure", "caption": "", "images": [{"url": "http://x/y.png"}]},
        good[2],
    ]
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="tokenize-images")
    out, _ = _run(records, tiny_model_dir, media, tmp_path, policy=policy, encoder=encoder, workers=2)
    assert [r["id"] for r in out] == ["r0", "r1", "r2"]
    entries = [orjson.loads(line) for line in rejects.getvalue().splitlines()]
    reasons = {e["record_id"]: e["reason"] for e in entries}
    assert set(reasons) == {"corrupt", "cut", "url"}
    assert "bad/corrupt.png" in reasons["corrupt"] and "not an image" in reasons["corrupt"]
    assert "corrupt or truncated" in reasons["cut"]
    assert "no 'path'" in reasons["url"]
    with pytest.raises(RecordError, match="bad/corrupt.png"):
        _run(records, tiny_model_dir, media, tmp_path, encoder=encoder)


def test_real_commands_tokenize_then_detokenize(tiny_model_dir, media, tmp_path, medmax):
    records = _records(media, 4, seed=50)
    records.append({"id": "broken", "kind": "figure", "caption": "", "images": [{"path": "no/such.png"}]})
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    env = {"MEDMAX_MEDIA": str(media.root)}
    result = medmax(
        "tokenize-images",
        str(src),
        "--model",
        str(tiny_model_dir),
        "--workers",
        "2",
        "--batch-size",
        "3",
        "--on-error",
        "skip",
        "--rejects",
        str(tmp_path / "rejects.jsonl"),
        env=env,
    )
    out = parse_jsonl(result.stdout)
    assert [r["id"] for r in out] == ["r0", "r1", "r2", "r3"]
    assert all("tokens" in im for r in out for im in r["images"])
    assert b"rejected 1" in result.stderr
    assert "no/such.png" in (tmp_path / "rejects.jsonl").read_text()
    decoded = medmax(
        "detokenize", "--model", str(tiny_model_dir), "--device", "cpu", input=result.stdout, env=env
    )
    back = parse_jsonl(decoded.stdout)
    assert [r["id"] for r in back] == ["r0", "r1", "r2", "r3"]
    for record in back:
        for image in record["images"]:
            png = Image.open(media.root / image["decoded"]["path"])
            assert png.format == "PNG" and png.size == (32, 32)
    bad = medmax(
        "tokenize-images", str(src), "--model", str(tiny_model_dir), "--dtype", "fp16", env=env, check=False
    )
    assert bad.returncode == 2 and b"--dtype" in bad.stderr


def test_detokenize_decodes_matching_tokens_and_rejects_others(tiny_model_dir, media, encoder):
    import torch

    from medmax_cli.vision.detokenize import detokenize

    spec = VQSpec.from_model_dir(tiny_model_dir)
    vq = vq_fingerprint(tiny_model_dir)
    codes = encoder.encode(torch.rand(1, 3, spec.resolution, spec.resolution) * 2 - 1)[0].tolist()
    records = [
        {"id": "ok", "kind": "figure", "caption": "", "images": [{"tokens": codes, "vq": vq}]},
        {
            "id": "foreign",
            "kind": "figure",
            "caption": "",
            "images": [{"tokens": codes, "vq": "0123456789abcdef"}],
        },
        {"id": "short", "kind": "figure", "caption": "", "images": [{"tokens": codes[:-1], "vq": vq}]},
        {"id": "again", "kind": "figure", "caption": "", "images": [{"tokens": codes, "vq": vq}]},
        {"id": "plain", "kind": "figure", "caption": "", "images": []},
    ]
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="detokenize")
    out = list(detokenize(records, model_dir=tiny_model_dir, media=media, policy=policy, batch_size=2))
    assert [r["id"] for r in out] == ["ok", "again", "plain"]
    decoded = out[0]["images"][0]["decoded"]
    assert decoded == out[1]["images"][0]["decoded"]  # same codes, same PNG, stored once
    assert Image.open(media.root / decoded["path"]).size == (spec.resolution, spec.resolution)
    reasons = {e["record_id"]: e["reason"] for e in map(orjson.loads, rejects.getvalue().splitlines())}
    assert "codebook '0123456789abcdef'" in reasons["foreign"]
    assert f"has {spec.tokens_per_image - 1} tokens" in reasons["short"]
