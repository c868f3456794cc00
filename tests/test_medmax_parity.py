"""Parity with MedMax's own training data path: token ids and labels under `pack --train-on medmax`,
pixels under `tokenize-images --alpha drop`, and the high-bit-depth rule.

The references below restate (in our words, not copied) MedMax's code at
github.com/Hritikbansal/medmax commit 20b70558f286e6b221e955cee4cd7c2ef8c1635b:
- src/tokenization.py `main`: tokens = [BOS] + tokenizer.encode(text).ids + [EOS], each `<image>`
  (id 8711) replaced by [8197] + (codes + 4) + [8196];
- training/data.py `collate_fn`: labels = the tokens, with -100 up to and including the first 8710;
- src/image_tokenization.py `ImageDataset.__getitem__` + `VQVAEImageProcessor`: Image.open(path)
  .convert('RGB'), then the whitening step (a no-op on RGB), resize so the shortest side is 512
  (LANCZOS, round(scale * side)), centre crop, x / 255 * 2 - 1.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from medmax_cli.media import decode_image
from medmax_cli.pack.sequence import IGNORE, build_sequence
from medmax_cli.records import RecordError
from medmax_cli.streams import ErrorPolicy, parse_jsonl
from medmax_cli.vision.preprocess import bit_depth, preprocess

BOS, EOS, BOI, EOI, SEP, IMAGE = 0, 2, 8197, 8196, 8710, 8711


# --------------------------------------------------------------------------- MedMax, restated


def medmax_tokens(text: str, codes: list[list[int]], tokenizer) -> list[int]:
    """src/tokenization.py: BOS + ids of the whole text + EOS; `<image>` -> BOI, codes + 4, EOI."""
    blocks = iter(codes)
    out: list[int] = []
    for token in [BOS, *tokenizer.encode(text, add_special_tokens=False).ids, EOS]:
        out += [BOI, *[c + 4 for c in next(blocks)], EOI] if token == IMAGE else [token]
    return out


def medmax_labels(tokens: list[int]) -> list[int]:
    """training/data.py collate_fn: -100 through the first 8710, the tokens themselves after it."""
    first = tokens.index(SEP)
    return [IGNORE] * (first + 1) + tokens[first + 1 :]


def medmax_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """src/image_tokenization.py: convert('RGB') (alpha dropped), resize, crop, scale; [3, S, S]."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    image = image.resize((round(scale * image.size[0]), round(scale * image.size[1])), Image.LANCZOS)
    x0, y0 = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((x0, y0, x0 + size, y0 + size))
    return torch.from_numpy(np.array(image) / 255.0 * 2 - 1).permute(2, 0, 1).float()


# --------------------------------------------------------------------------- token ids and labels


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from medmax_cli.text.tokenizer import load_text_tokenizer

    return load_text_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def vocab(tiny_model_dir):
    from medmax_cli.text.vocab import ChameleonVocab

    return ChameleonVocab.from_model_dir(tiny_model_dir)


def _instance(turns, codes):
    images = [{"sha256": "0" * 64, "path": "x.png", "tokens": c, "vq": "v"} for c in codes]
    return {"id": "p", "task": "visual_chat", "source": "t", "license": "cc-by", "credential": False,
            "images": images, "turns": turns}  # fmt: skip


CASES = {
    # (turns as (role, parts) with "<image>" marking an image part, number of images)
    "vqa": [("user", ["<image>", "Is there a pleural effusion?"]), ("assistant", ["yes"])],
    "captioning": [("user", ["<image>", "Describe the figure."]), ("assistant", ["Axial CT of the chest."])],
    "image_generation": [("user", ["Generate a chest X-ray with cardiomegaly."]), ("assistant", ["<image>"])],
    "interleaved": [
        ("user", ["Explain step 2 with a figure."]),
        ("assistant", ["Step 2 shows", "<image>", "the stained section."]),
    ],
    "visual_chat_multi_turn": [
        ("user", ["<image>", "What modality is this?"]),
        ("assistant", ["An MRI."]),
        ("user", ["Which sequence?"]),
        ("assistant", ["T2-weighted."]),
    ],
}


def _build(case, n_codes):
    rng = np.random.default_rng(len(case))
    turns, codes, texts = [], [], []
    for role, parts in CASES[case]:
        content = []
        for part in parts:
            if part == "<image>":
                codes.append(rng.integers(0, n_codes, 16).tolist())
                content.append({"image": len(codes) - 1})
            else:
                content.append({"text": part})
        turns.append({"role": role, "content": content})
        texts.append("".join(p for p in parts))
    return _instance(turns, codes), "<reserved08706>".join(texts), codes


@pytest.mark.parametrize("case", sorted(CASES))
def test_token_ids_and_medmax_labels_equal_medmax_code(case, tok, vocab):
    inst, text, codes = _build(case, vocab.n_codes)
    reference = medmax_tokens(text, codes, tok.tokenizer)
    ours = build_sequence(inst, vocab=vocab, tokenizer=tok, train_on="medmax")
    assert ours.input_ids.tolist() == reference
    assert ours.labels.tolist() == medmax_labels(reference)
    assistant = build_sequence(inst, vocab=vocab, tokenizer=tok, train_on="assistant")
    if case == "visual_chat_multi_turn":  # MedMax trains the second user turn too; `assistant` masks it
        assert assistant.labels.tolist() != ours.labels.tolist()
        second_user = slice(ours.labels.tolist().index(SEP, reference.index(SEP) + 1) + 1, None)
        assert np.count_nonzero(ours.labels[second_user] != IGNORE) > np.count_nonzero(
            assistant.labels[second_user] != IGNORE
        )
    else:  # one user turn and one answer: the rules agree
        assert assistant.labels.tolist() == ours.labels.tolist()


def test_medmax_rule_needs_a_separator(tok, vocab):
    inst = _instance([{"role": "user", "content": [{"text": "only a prompt"}]}], [])
    with pytest.raises(RecordError, match="separator"):
        build_sequence(inst, vocab=vocab, tokenizer=tok, train_on="medmax")


def test_pack_records_the_label_rule_and_alpha(tmp_path, tok, vocab):
    from medmax_cli.pack.reader import PackedShards
    from medmax_cli.pack.stage import PackSettings, pack_to_dir

    inst, _, _ = _build("visual_chat_multi_turn", vocab.n_codes)
    policy = ErrorPolicy("fail", stage="pack")
    manifest = pack_to_dir(
        [inst],
        tmp_path / "s",
        vocab=vocab,
        tokenizer=tok,
        settings=PackSettings(train_on="medmax"),
        policy=policy,
    )
    assert manifest["settings"]["train_on"] == "medmax" and manifest["settings"]["alpha"] == "white"
    (row,) = PackedShards(tmp_path / "s").iter_rows(shuffle=False)
    assert (
        row.labels.tolist()
        == build_sequence(inst, vocab=vocab, tokenizer=tok, train_on="medmax").labels.tolist()
    )


def test_pack_refuses_tokens_of_another_alpha_rule(tmp_path, tok, vocab):
    from medmax_cli.pack.stage import PackSettings, pack_to_dir

    inst, _, _ = _build("vqa", vocab.n_codes)
    inst["images"][0]["alpha"] = "drop"  # made by tokenize-images --alpha drop
    with pytest.raises(RecordError, match="--alpha drop"):
        pack_to_dir([inst], tmp_path / "w", vocab=vocab, tokenizer=tok, settings=PackSettings(),
                    policy=ErrorPolicy("fail", stage="pack"))  # fmt: skip
    manifest = pack_to_dir([inst], tmp_path / "d", vocab=vocab, tokenizer=tok,
                           settings=PackSettings(alpha="drop"), policy=ErrorPolicy("fail", stage="pack"))  # fmt: skip
    assert manifest["samples"] == 1 and manifest["settings"]["alpha"] == "drop"


# --------------------------------------------------------------------------- alpha


def _roundtrip(image: Image.Image, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return decode_image(buffer.getvalue()).image


def _transparent_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (45, 70, 4), dtype=np.uint8)
    rgba[:, :20, 3] = 0  # a transparent band: its colour survives `drop`, becomes white under `white`
    la = np.stack(
        [rng.integers(0, 256, (60, 40)), np.where(np.arange(40) < 15, 0, 255)[None].repeat(60, 0)], -1
    )
    palette = Image.fromarray(rng.integers(0, 8, (50, 50), dtype=np.uint8), "P")
    palette.putpalette(rng.integers(0, 256, 8 * 3, dtype=np.uint8).tolist())
    palette.info["transparency"] = 2
    return {
        "rgba_png": _roundtrip(Image.fromarray(rgba, "RGBA"), "PNG"),
        "la_png": _roundtrip(Image.fromarray(la.astype(np.uint8), "LA"), "PNG"),
        "palette_png": _roundtrip(palette, "PNG"),
        "rgba_webp": _roundtrip(Image.fromarray(rgba, "RGBA"), "WEBP"),
    }


@pytest.mark.parametrize("name", ["rgba_png", "la_png", "palette_png", "rgba_webp"])
def test_alpha_drop_equals_medmax_training_pixels(name):
    image = _transparent_images()[name]
    assert image.mode in ("RGBA", "LA", "P")
    drop = preprocess(image, 32, alpha="drop")
    assert torch.equal(drop, medmax_pixels(image, 32))
    assert not torch.equal(drop, preprocess(image, 32, alpha="white"))  # the rules really differ here
    opaque = Image.fromarray(np.asarray(image.convert("RGB")), "RGB")
    assert torch.equal(preprocess(opaque, 32, alpha="drop"), preprocess(opaque, 32, alpha="white"))


def test_tokenize_images_alpha_is_in_the_cache_key_and_the_record(tiny_model_dir, media, tmp_path):
    from medmax_cli.vision.encoder import VQEncoder
    from medmax_cli.vision.spec import VQSpec
    from medmax_cli.vision.tokenize import tokenize_images

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(_transparent_images()["rgba_png"]), "RGBA").save(buffer, format="PNG")
    ref = media.put(buffer.getvalue())
    encoder = VQEncoder.from_model_dir(tiny_model_dir)
    size = VQSpec.from_model_dir(tiny_model_dir).resolution

    def run(alpha, images):
        policy = ErrorPolicy("fail", stage="tokenize-images")
        record = {"id": "a", "kind": "figure", "caption": "c", "images": images}
        (out,) = tokenize_images([record], model_dir=tiny_model_dir, media=media, policy=policy,
                                 cache_dir=tmp_path / "cache", encoder=encoder, alpha=alpha)  # fmt: skip
        return out["images"][0], policy.report

    drop, _ = run("drop", [dict(ref)])
    assert drop["alpha"] == "drop"
    expected = encoder.encode(medmax_pixels(decode_image(media.read_bytes(ref)).image, size)[None])[0]
    assert drop["tokens"] == expected.tolist()  # MedMax's training pixels through the VQ encoder
    calls = encoder.calls
    white, report = run("white", [dict(ref)])  # same image, same cache: not served the drop codes
    assert "alpha" not in white and white["tokens"] != drop["tokens"] and encoder.calls == calls + 1
    again, report = run("white", [dict(drop)])  # drop tokens are re-encoded for a white run (cached now)
    assert again["tokens"] == white["tokens"] and encoder.calls == calls + 1
    with pytest.raises(RecordError, match="--alpha drop"):
        run("white", [{k: v for k, v in drop.items() if k != "path"}])  # cannot re-encode: refused


# --------------------------------------------------------------------------- high bit depth


def _png16(values: np.ndarray) -> Image.Image:
    image = _roundtrip(Image.fromarray(values.astype(np.uint16)), "PNG")
    assert image.mode == "I;16"
    return image


def test_12_bit_image_stored_as_16_bit_keeps_its_contrast():
    ramp = np.tile(np.linspace(0, 4095, 32).round(), (32, 1))  # a 12-bit radiograph's full range
    image = _png16(ramp)
    assert bit_depth(np.asarray(image)) == 12
    x = preprocess(image, 32)
    levels = ((x[0] + 1) / 2 * 255).round()
    assert levels.min() == 0 and levels.max() == 255  # full contrast, as an 8-bit image of it
    assert levels[0, 16].item() == round(ramp[0, 16] * 255 / 4095)
    # the old rule (divide by 257 whatever the depth) left it nearly black
    assert ramp.max() / 257 < 16


def test_16_bit_full_range_and_8_bit_values_in_16_bit():
    full = _png16(np.tile(np.linspace(0, 65535, 32).round(), (32, 1)))
    assert bit_depth(np.asarray(full)) == 16
    levels = ((preprocess(full, 32)[0] + 1) / 2 * 255).round()
    assert levels.min() == 0 and levels.max() == 255 and levels[0, 16].item() == round(33825 / 257)
    small = _png16(np.full((32, 32), 200))  # an 8-bit image saved as 16-bit keeps its values
    assert bit_depth(np.asarray(small)) == 8
    assert ((preprocess(small, 32)[0] + 1) / 2 * 255).round().unique().tolist() == [200.0]


def test_commands_tokenize_drop_then_pack_medmax(tiny_model_dir, media, tmp_path, medmax):
    """The real commands piped: tokenize-images --alpha drop, then pack refuses to mix rules unless
    told --alpha drop, and records --train-on medmax and the alpha rule in the manifest."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(_transparent_images()["rgba_png"]), "RGBA").save(buffer, format="PNG")
    ref = media.put(buffer.getvalue())
    turns = [
        {"role": "user", "content": [{"image": 0}, {"text": "What modality?"}]},
        {"role": "assistant", "content": [{"text": "An MRI."}]},
        {"role": "user", "content": [{"text": "Which sequence?"}]},
        {"role": "assistant", "content": [{"text": "T2."}]},
    ]
    record = {"id": "c1", "task": "visual_chat", "source": "t", "license": "cc-by", "credential": False,
              "images": [ref], "turns": turns}  # fmt: skip
    env = {"MEDMAX_MEDIA": str(media.root)}
    model = ("--model", str(tiny_model_dir))
    tokens = medmax("tokenize-images", *model, "--alpha", "drop", "--workers", "0",
                    input=(json.dumps(record) + "\n").encode(), env=env)  # fmt: skip
    assert parse_jsonl(tokens.stdout)[0]["images"][0]["alpha"] == "drop"
    mixed = medmax("pack", "-o", str(tmp_path / "w"), *model, input=tokens.stdout, env=env, check=False)
    assert mixed.returncode != 0 and b"--alpha drop" in mixed.stderr
    medmax("pack", "-o", str(tmp_path / "d"), *model, "--alpha", "drop", "--train-on", "medmax",
           input=tokens.stdout, env=env)  # fmt: skip
    settings = json.loads((tmp_path / "d" / "manifest.json").read_text())["settings"]
    assert settings["alpha"] == "drop" and settings["train_on"] == "medmax"


def test_a_rejected_instance_is_written_as_it_came_in(tmp_path, tok, vocab):
    """pack checks image tokens into arrays before the alpha rule; a record rejected after that goes
    to the rejects file with its token lists as they were, and the caller's record is not changed."""
    import copy
    import io

    import orjson

    from medmax_cli.pack.stage import PackSettings, pack_to_dir

    inst, _, _ = _build("vqa", vocab.n_codes)
    inst["images"][0]["alpha"] = "drop"
    before = copy.deepcopy(inst)
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects=rejects, stage="pack")
    manifest = pack_to_dir(
        [inst], tmp_path / "w", vocab=vocab, tokenizer=tok, settings=PackSettings(), policy=policy
    )
    assert manifest["samples"] == 0 and inst == before
    (entry,) = [orjson.loads(line) for line in rejects.getvalue().splitlines()]
    assert "--alpha drop" in entry["reason"] and entry["raw"] == before
