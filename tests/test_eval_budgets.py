"""Generation budgets per family as MedMax's evaluation scripts set them, and `make eval`'s settings.

MedMax (Hritikbansal/medmax at 20b7055; docs/generate.md cites each line) passes `max_gen_len` to
Anole's generator per task: closed and multiple choice 1, open 60, captioning and visual chat 4096,
image generation one image, mm_out 1024. Anole's `max_gen_len` bounds each text run (a new
`TextDecoder` after every image), and once the model samples BOI the image decoder always draws its
full block (1,024 codes, then EOI), so an mm_out answer holds images whatever the text budget.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import orjson
import pytest

from medmax_cli.generate.config import GenerateConfig
from medmax_cli.streams import parse_jsonl

ROOT = Path(__file__).resolve().parents[1]
EVAL_SH = ROOT / "examples" / "eval.sh"
SAMPLE = ROOT / "examples" / "sample"


def _vqa(qtype: str) -> dict:
    return {"task": "vqa", "question_type": qtype, "meta": {"eval_task": "x"}}


@pytest.mark.parametrize(
    ("record", "mode", "max_new", "segment"),
    [
        (_vqa("closed"), "text", 1, None),  # evaluation/vqa.py:30
        (_vqa("multiple_choice"), "text", 1, None),  # evaluation/vqa.py:60
        (_vqa("open"), "text", 60, None),  # evaluation/vqa.py:41
        ({"task": "captioning", "meta": {"eval_task": "x"}}, "text", None, None),  # image_text.py:32
        ({"task": "visual_chat", "meta": {"eval_task": "x"}}, "text", None, None),  # visual_chat.py:220
        (
            {"task": "interleaved", "meta": {"eval_task": "mm_out"}},
            "interleaved",
            None,
            1024,
        ),  # mm_out.py:187
    ],
)
def test_medmax_eval_budgets_per_family(record, mode, max_new, segment):
    """None = up to the context (MedMax's 4096 is Anole's whole max_seq_len)."""
    settings = GenerateConfig().settings_for(record, mode)
    assert (settings.preset, settings.max_new_tokens, settings.text_segment) == (
        "medmax-eval",
        max_new,
        segment,
    )


def test_text_run_tokens_flag_sets_the_per_run_budget_only():
    record = {"task": "interleaved", "meta": {"eval_task": "mm_out"}}
    settings = GenerateConfig(text_segment=512).settings_for(record, "interleaved")
    assert (settings.max_new_tokens, settings.text_segment) == (None, 512)
    with pytest.raises(ValueError, match="--text-run-tokens"):
        GenerateConfig(text_segment=0).check()


def eval_sh_flags(part: str) -> list[str]:
    """The generate flags examples/eval.sh passes for one part (`gen PART FLAGS...`), with each
    `${VAR:-default}` at its default (what `make eval` runs with no environment)."""
    lines = [line for line in EVAL_SH.read_text().splitlines() if re.match(rf"gen {part}\b", line)]
    assert len(lines) == 1, f"eval.sh must generate part {part} once"
    expanded = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", lines[0])
    return shlex.split(expanded)[2:]


def test_eval_sh_budgets_match_medmax():
    assert eval_sh_flags("short") == ["--max-new-tokens", "1"]
    assert eval_sh_flags("open") == ["--max-new-tokens", "60"]
    assert eval_sh_flags("long") == ["--max-new-tokens", "4096"]
    assert eval_sh_flags("image") == []
    # mm_out: MedMax's 1024 is per text run; a whole-answer cap of 1024 leaves no room for a
    # 1,026-token image block at Anole's size
    assert eval_sh_flags("mm_out") == ["--text-run-tokens", "1024"]


def anole_size_images(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model with Anole's 1,024 codes per image: the VQ-GAN is convolutional, so the same
    weights read at 128 px give a 32x32 grid (1,024 codes); the text model is untouched."""
    shutil.copytree(tiny_model_dir, out)
    info = json.loads((out / "medmax_model.json").read_text())
    info.update(tokens_per_image=1024, image_size=128)
    (out / "medmax_model.json").write_text(json.dumps(info))
    config = json.loads((out / "config.json").read_text())
    config["vq_config"]["resolution"] = 128
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.slow
def test_make_eval_mm_out_settings_draw_an_image(tiny_model_dir, tmp_path, medmax):
    """`make eval`'s mm_out settings (read from examples/eval.sh) on the tiny model yield an image.

    The tiny model's own images are 64 codes, so even a 1024-token cap on the whole answer fits one
    and hides the fault; it is run here with Anole's 1,024 codes per image (`anole_size_images`),
    where a whole-answer cap of 1024 can never hold the 1,026-token block (the rule below shows
    BOI is then never allowed), while MedMax's per-run budget always leaves it room. Nothing is
    biased: greedy decoding (MedMax's) of this random model samples BOI partway through the first
    text run, deterministically (fixed weights, argmax); the answer is the eval sample's mm_out item.
    """
    model = anole_size_images(tiny_model_dir, tmp_path / "model")
    media = tmp_path / "media"
    (media / "jats").mkdir(parents=True)
    record = next(
        orjson.loads(line)
        for line in (SAMPLE / "eval-families.jsonl").read_bytes().splitlines()
        if b'"mm_out"' in line
    )
    shutil.copy(SAMPLE / record["images"][0]["path"], media / "jats")
    flags = eval_sh_flags("mm_out")
    result = medmax(
        "generate", "--model", str(model), *flags, "--seed", "0", "--media-dir", str(media), "-q",
        input=orjson.dumps(record) + b"\n",
    )  # fmt: skip
    (pred,) = parse_jsonl(result.stdout)
    generation = pred["generation"]
    images = [part["image"] for part in pred["prediction"] if "image" in part]
    assert images, f"no image in the mm_out answer: {generation}"
    assert generation["settings"]["tokens_per_image"] == 1024
    assert generation["settings"]["text_segment"] == 1024 and generation["settings"]["max_new_tokens"] is None
    assert (media / pred["images"][images[0]]["path"]).is_file()  # a PNG in the media store
    assert generation["new_tokens"] > 1026  # the whole block: BOI, 1,024 codes, EOI, and text

    # the rule that made the old setting image-free: a block needs 1,026 of the 1,024 left
    import torch

    from medmax_cli.generate.decode import boi_last_step

    class Masks:
        context, image_block = 4096, 1026

    last = boi_last_step(torch.tensor([20]), torch.tensor([1024]), torch.tensor([True]), Masks())
    assert int(last) < 0
