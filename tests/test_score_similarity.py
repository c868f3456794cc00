"""CLIP similarity: the cosine math with a tiny random encoder, the stage's coverage, open_clip."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from PIL import Image

from medmax_cli.score import similarity
from medmax_cli.score.stage import Scorer, score_records
from medmax_cli.score.summary import summarise


class TinyEncoder:
    """A random linear 'CLIP': 8x8 pixels -> 16 dims, bytes of text -> 16 dims (the Encoder protocol)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w_image = torch.randn(8 * 8 * 3, 16, generator=g)
        self.w_text = torch.randn(256, 16, generator=g)
        self.image_calls = 0

    def encode_image(self, images):
        self.image_calls += 1
        pixels = torch.stack(
            [
                torch.tensor(list(im.convert("RGB").resize((8, 8)).tobytes()), dtype=torch.float32)
                for im in images
            ]
        )  # [B, 192]
        return (pixels / 255.0 - 0.5) @ self.w_image  # [B, 16]

    def encode_text(self, texts):
        counts = torch.zeros(len(texts), 256)
        for i, text in enumerate(texts):
            for byte in text.encode():
                counts[i, byte] += 1
        return counts @ self.w_text  # [B, 16]


def _image(color) -> Image.Image:
    image = Image.new("RGB", (16, 16), color)
    image.putpixel((3, 5), (0, 0, 0))
    return image


def test_cosine_math():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    assert similarity.cosine(a, b).tolist() == pytest.approx([0.0, 1.0, -1.0])


def test_scores_match_a_hand_computation():
    enc = TinyEncoder()
    im, text = _image((200, 30, 30)), "a red square"
    expected = torch.nn.functional.cosine_similarity(enc.encode_image([im]), enc.encode_text([text]))[0]
    assert similarity.image_text_scores(enc, [im], [text])[0] == pytest.approx(float(expected), abs=1e-6)
    same, other = similarity.image_image_scores(enc, [im, im], [im.copy(), _image((10, 10, 240))])
    assert same == pytest.approx(1.0, abs=1e-6) and other < 0.999
    assert similarity.image_text_scores(enc, [], []) == []


def _instance(rid, task, media, *, user_image=None, generated=None, reference=None, text="a caption"):
    images, user, assistant = [], [{"text": "Describe the image."}], [{"text": "a reference"}]
    if user_image is not None:
        images.append(media.put_image(user_image))
        user.insert(0, {"image": len(images) - 1})
    if reference is not None:
        images.append(media.put_image(reference))
        assistant.append({"image": len(images) - 1})
    prediction = [{"text": text}]
    if generated is not None:
        images.append(media.put_image(generated))
        prediction.append({"image": len(images) - 1})
    return {
        "id": rid,
        "task": task,
        "domain": "radiology",
        "images": images,
        "turns": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        "prediction": prediction,
    }


def test_stage_similarity_tasks_and_coverage(media):
    enc = TinyEncoder()
    red, blue = _image((200, 30, 30)), _image((10, 10, 240))
    records = [
        _instance("cap", "captioning", media, user_image=red, text="red"),
        _instance("cap-noimage", "captioning", media, text="red"),
        _instance("gen", "image_generation", media, generated=blue),
        _instance("gen-none", "image_generation", media),  # produced no image: coverage, not zero
        _instance("inter", "interleaved", media, reference=red, generated=red),
    ]
    lines = {x["id"]: x for x in score_records(records, scorer=Scorer(encoder=enc, media=media))}
    assert lines["cap"]["score"] == pytest.approx(
        similarity.image_text_scores(enc, [red], ["red"])[0], abs=1e-6
    )
    assert lines["cap"]["metric"] == "clip_cosine"
    assert lines["gen"]["score"] == pytest.approx(
        similarity.image_text_scores(enc, [blue], ["Describe the image."])[0], abs=1e-6
    )
    assert lines["inter"]["score"] == pytest.approx(1.0, abs=1e-5)
    for rid in ("cap-noimage", "gen-none"):
        assert lines[rid]["status"] == "unscored" and lines[rid]["score"] is None
    summary = summarise(lines.values())
    assert summary["tasks"]["image_generation"]["coverage"] == 0.5
    assert summary["tasks"]["captioning"]["n"] == 2
    assert summary["macro"]["n_tasks"] == 0  # similarity tasks are not part of the 12-task VQA average


def test_image_missing_from_the_store_is_coverage_not_a_crash(media):
    record = _instance("gen", "image_generation", media, generated=_image((1, 2, 3)))
    record["images"][0] = {"path": "ab/" + "0" * 64 + ".png"}
    line = next(score_records([record], scorer=Scorer(encoder=TinyEncoder(), media=media)))
    assert line["status"] == "unscored" and "not in the media store" in line["reason"]


def test_without_a_clip_model_similarity_items_are_unscored(media):
    line = next(
        score_records([_instance("c", "captioning", media, user_image=_image((5, 5, 5)))], scorer=Scorer())
    )
    assert line["status"] == "unscored" and "--clip-model" in line["reason"]


def test_missing_open_clip_names_the_extra(tmp_path, monkeypatch):
    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed")
    with pytest.raises(ImportError, match=r"medmax-cli\[clip\]"):
        similarity.load_encoder(tmp_path)


# open_clip imports torchvision. PyPI's torchvision 0.28.0 (the release that pins torch 2.13.0) links
# libtorch_cuda/libc10_cuda, which the CPU torch wheel the test environment uses does not ship: its
# import fails ("operator torchvision::nms does not exist"), and installed beside CPU torch it also
# breaks `from transformers import ChameleonProcessor`. So the test environment has no open_clip and
# `make test` skips this test with that reason; it is marked `gpu` so that bench/gpu.sh's `-m gpu`
# step runs it on the GPU machine, whose image has torch 2.11 with its torchvision 0.26 and where
# bench/gpu-wheels.sh's carried wheels add open_clip_torch and ftfy: see docs/score.md, "Testing the
# BiomedCLIP path". (The model runs on the CPU there too: the check is the open_clip path, not CUDA.)
OPEN_CLIP_SKIP = (
    "open_clip not installed: it imports torchvision, and PyPI has no CPU torchvision wheel pairing "
    "with the CPU torch here; runs on the GPU machine (bench/gpu.sh, -m gpu)"
)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason=OPEN_CLIP_SKIP)
def test_open_clip_tiny_random_model(tmp_path):
    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    open_clip.factory._MODEL_CONFIGS["medmax-test-tiny"] = cfg
    model = open_clip.create_model("medmax-test-tiny")
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    enc = similarity.load_encoder(tmp_path)
    red = _image((200, 30, 30))
    score = similarity.image_text_scores(enc, [red], ["a red square"])[0]
    # MedMax's CLIPSimilarity: each embedding divided by its norm, then the dot product
    with torch.no_grad():
        a = model.encode_image(enc.preprocess(red)[None])
        t = model.encode_text(open_clip.get_tokenizer("medmax-test-tiny")(["a red square"]))
        expected = ((a / a.norm(dim=-1, keepdim=True)) @ (t / t.norm(dim=-1, keepdim=True)).t()).item()
    assert score == pytest.approx(expected, abs=1e-5)
    assert similarity.image_image_scores(enc, [_image((9, 9, 9))], [_image((9, 9, 9))])[0] == pytest.approx(
        1, abs=1e-5
    )


def test_interleaved_text_half_is_its_own_bucket(media):
    from medmax_cli.score.judge import Judge

    red = _image((200, 30, 30))
    record = _instance("inter", "interleaved", media, reference=red, generated=red, text="a mass")
    replies = iter(["9 6", "oops", "9 3"])
    judge = Judge(lambda messages: next(replies), model="fake", retries=0)
    other = {**_instance("inter2", "interleaved", media, reference=red, generated=red), "id": "inter2"}
    lines = list(
        score_records([record, other], scorer=Scorer(encoder=TinyEncoder(), media=media, judge=judge))
    )
    assert lines[0]["extra"] == {"interleaved_text": pytest.approx(6 / 9)}
    # the verdict did not parse: no score, and its status goes to the summary
    assert lines[1]["extra"] == {"interleaved_text": {"score": None, "status": "judge_failed"}}
    summary = summarise(lines)
    text = summary["tasks"]["interleaved_text"]
    assert (text["n"], text["scored"], text["metric"], text["judge_failed"]) == (2, 1, "relative_score", 1)
    assert summary["tasks"]["interleaved"]["mean"] == pytest.approx(1.0, abs=1e-5)
