"""Image tokens that cannot be the model's (wrong grid length or codes, though tagged with its `vq`;
or another codebook under `generate --no-encode-images`): re-encoded or rejected with the reason,
never packed or prompted with. Tiny model: 64 codes per image (8x8 grid), 8192-entry codebook."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
from PIL import Image

from medmax_cli.records import RecordError
from medmax_cli.streams import ErrorPolicy
from medmax_cli.vision.fingerprint import vq_fingerprint
from medmax_cli.vision.spec import VQSpec
from medmax_cli.vision.tokencheck import token_problem
from medmax_cli.vision.tokenize import tokenize_images


@pytest.fixture(scope="module")
def vq(tiny_model_dir):
    return vq_fingerprint(tiny_model_dir)


@pytest.fixture(scope="module")
def tpi(tiny_model_dir):
    return VQSpec.from_model_dir(tiny_model_dir).tokens_per_image


def _png(seed):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _vqa(rid, image):
    return {
        "id": rid,
        "task": "vqa",
        "source": "test",
        "license": "cc-by",
        "credential": False,
        "images": [image],
        "turns": [
            {"role": "user", "content": [{"image": 0}, {"text": "What is shown?"}]},
            {"role": "assistant", "content": [{"text": "a liver lesion"}]},
        ],
    }


def test_token_problem_names_length_range_and_codebook():
    ok = {"tokens": list(range(64)), "vq": "v"}
    assert token_problem(ok, vq="v", tokens_per_image=64, n_codes=8192) is None
    short = token_problem({"tokens": [1] * 10, "vq": "v"}, vq="v", tokens_per_image=64, n_codes=8192)
    assert "has 10 tokens" in short and "64" in short
    high = token_problem({"tokens": [9000] * 64, "vq": "v"}, vq="v", tokens_per_image=64, n_codes=8192)
    assert "[0, 8192)" in high and "9000" in high
    assert "VQ 'w'" in token_problem(
        {"tokens": [1] * 64, "vq": "w"}, vq="v", tokens_per_image=64, n_codes=8192
    )
    floats = token_problem({"tokens": [1.5] * 64, "vq": "v"}, vq="v", tokens_per_image=64, n_codes=8192)
    assert "integers" in floats


def test_tokenize_images_reencodes_or_rejects_bad_tokens_with_the_right_tag(tiny_model_dir, media, vq, tpi):
    ref = media.put(_png(1))
    short = {**ref, "tokens": [5] * (tpi - 1), "vq": vq}  # cut short, but tagged with this codebook
    out_of_range = {**ref, "tokens": [8192] * tpi, "vq": vq}
    no_image = {"tokens": [5] * (tpi + 3), "vq": vq}  # nothing to re-encode from
    records = [_vqa("short", short), _vqa("range", out_of_range), _vqa("noimg", no_image)]
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="tokenize-images")
    got = list(tokenize_images(copy.deepcopy(records), model_dir=tiny_model_dir, media=media, policy=policy))
    assert [r["id"] for r in got] == ["short", "range"]
    for record in got:
        image = record["images"][0]
        assert len(image["tokens"]) == tpi and image["vq"] == vq and max(image["tokens"]) < 8192
    assert got[0]["images"][0]["tokens"] == got[1]["images"][0]["tokens"]  # same pixels, same codes
    assert policy.report.counts["re-encoded (bad tokens)"] == 2
    (reject,) = [json.loads(line) for line in rejects.getvalue().splitlines()]
    assert reject["record_id"] == "noimg"
    assert f"has {tpi + 3} tokens, but the model's VQ makes {tpi}" in reject["reason"]


def test_pack_rejects_wrong_length_tokens_with_a_reason(tmp_path, tiny_model_dir, vq, tpi, medmax):
    from medmax_cli.pack.reader import PackedShards

    good = _vqa("good", {"sha256": "0" * 64, "path": "x.png", "tokens": list(range(tpi)), "vq": vq})
    bad = _vqa("bad", {"sha256": "0" * 64, "path": "x.png", "tokens": list(range(tpi // 2)), "vq": vq})
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in (good, bad))
    out, rejects = tmp_path / "shards", tmp_path / "rejects.jsonl"
    medmax(
        "pack", "-o", str(out), "--model", str(tiny_model_dir), "--seq-len", "512",
        "--on-error", "skip", "--rejects", str(rejects), "-q", input=lines,
    )  # fmt: skip
    (row,) = PackedShards(out).iter_rows()
    assert row.meta["ids"] == ["good"]
    (reject,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert reject["record_id"] == "bad" and f"has {tpi // 2} tokens" in reject["reason"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from medmax_cli.generate.stage import setup_engine

    return setup_engine(tiny_model_dir, device="cpu", dtype="float32")


def test_generate_refuses_prompt_tokens_of_another_codebook_or_length(engine, vq, tpi):
    from medmax_cli.generate.config import GenerateConfig
    from medmax_cli.generate.stage import generate_stage

    records = [
        _vqa("other-vq", {"tokens": list(range(tpi)), "vq": "0123456789abcdef"}),
        _vqa("short", {"tokens": list(range(tpi - 8)), "vq": vq}),
        _vqa("ok", {"tokens": list(range(tpi)), "vq": vq}),
    ]
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="generate")
    out = list(generate_stage(records, engine=engine, config=GenerateConfig(max_new_tokens=2), policy=policy))
    assert [r["id"] for r in out] == ["ok"]
    reasons = {r["record_id"]: r["reason"] for r in map(json.loads, rejects.getvalue().splitlines())}
    assert "VQ '0123456789abcdef'" in reasons["other-vq"] and vq in reasons["other-vq"]
    assert f"has {tpi - 8} tokens" in reasons["short"]
    # a gold answer image is not part of the prompt: its tokens are not checked
    gold = _vqa("gold", {"tokens": list(range(tpi)), "vq": vq})
    gold["images"].append({"tokens": [1, 2], "vq": "elsewhere"})
    gold["turns"][1]["content"] = [{"image": 1}]
    (kept,) = generate_stage([gold], engine=engine, config=GenerateConfig(max_new_tokens=2, mode="text"))
    assert kept["id"] == "gold"
    with pytest.raises(RecordError, match="images\\[0\\]"):
        list(generate_stage(records[:1], engine=engine, config=GenerateConfig(max_new_tokens=2)))


def test_generate_command_no_encode_images_rejects_other_codebook(tmp_path, tiny_model_dir, tpi, medmax):
    record = _vqa("other-vq", {"tokens": list(range(tpi)), "vq": "0123456789abcdef"})
    result = medmax(
        "generate", "--model", str(tiny_model_dir), "--no-encode-images", "--device", "cpu",
        "--max-new-tokens", "2", "-q", input=json.dumps(record).encode() + b"\n", check=False,
    )  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 1 and result.stdout == b""
    assert "other-vq" in err and "0123456789abcdef" in err and "Traceback" not in err
