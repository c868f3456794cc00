"""The non-VQA MedMax eval families scored as MedMax scores them (evaluation/image_text.py,
visual_chat.py, mm_out.py), on records in the shape `medmax fetch medmax-eval` writes
(docs/eval-families.md) plus the prediction `medmax generate` adds."""

from __future__ import annotations

import pytest
from PIL import Image

from medmax_cli.score import similarity
from medmax_cli.score.judge import Judge, medmax_chat_messages, medmax_mm_out_messages
from medmax_cli.score.stage import Scorer, score_records
from medmax_cli.score.summary import markdown_table, summarise
from test_score_similarity import TinyEncoder


def _image(color) -> Image.Image:
    image = Image.new("RGB", (16, 16), color)
    image.putpixel((2, 7), (0, 0, 0))
    return image


def _base(rid, task, images, turns, meta):
    return {
        "id": rid,
        "kind": "instance",
        "source": "medmax-eval",
        "license": "medmax-eval-mixed",
        "credential": False,
        "task": task,
        "domain": "radiology",
        "images": images,
        "turns": turns,
        "meta": {"verbatim_prompt": True, **meta},
    }


def captioning(media, rid, src, image, caption):
    turns = [
        {"role": "user", "content": [{"image": 0}, {"text": "Please describe this picture."}]},
        {"role": "assistant", "content": [{"text": "the released reference caption"}]},
    ]
    meta = {"eval_task": f"image_captioning_{src}", "eval_family": "image_captioning", "eval_source": src}
    record = _base(rid, "captioning", [media.put_image(image)], turns, {**meta, "eval_prompt": ""})
    record["prediction"] = [{"text": caption}]
    return record


def image_generation(media, rid, src, prompt, generated):
    turns = [{"role": "user", "content": [{"text": prompt}]}]
    meta = {"eval_task": f"image_generation_{src}", "eval_family": "image_generation", "eval_index": 0}
    record = _base(rid, "image_generation", [], turns, {**meta, "eval_prompt": prompt})
    if generated is None:
        record["prediction"] = []
    else:
        record["images"] = [media.put_image(generated)]
        record["prediction"] = [{"image": 0}]
    return record


def visual_chat(media, rid, chat_type, llava_domain, answer):
    prompt = "<image>\nWhat does the CT show?"
    turns = [
        {"role": "user", "content": [{"text": "What does the CT show?"}, {"image": 0}]},
        {"role": "assistant", "content": [{"text": "A 3 cm hypodense mass."}]},
    ]
    meta = {
        "eval_task": "visual_chat",
        "eval_family": "visual_chat",
        "chat_type": chat_type,
        "llava_domain": llava_domain,
        "caption": "CT of the liver.",
        "fig_label": "Figure 1",
        "mention": "Figure 1 shows the mass.",
        "reference_answer": "A 3 cm hypodense mass.",
        "eval_prompt": prompt,
    }
    record = _base(rid, "visual_chat", [media.put_image(_image((90, 90, 90)))], turns, meta)
    record["prediction"] = [{"text": f"  {answer}\n"}]
    return record


def mm_out(media, rid, reference_image, texts, generated):
    turns = [
        {"role": "user", "content": [{"text": "Show a liver CT."}]},
        {"role": "assistant", "content": [{"text": "Here is a liver CT."}, {"image": 0}]},
    ]
    meta = {"eval_task": "mm_out", "eval_family": "mm_out", "reference_answer": "Here is a liver CT."}
    record = _base(
        rid,
        "interleaved",
        [media.put_image(reference_image)],
        turns,
        {**meta, "eval_prompt": "Show a liver CT."},
    )
    prediction = [{"text": t} for t in texts]
    if generated is not None:
        record["images"].append(media.put_image(generated))
        prediction.insert(1, {"image": 1})
    record["prediction"] = prediction
    return record


def test_captioning_and_image_generation_are_biomedclip_cosines(media):
    enc = TinyEncoder()
    red, blue = _image((200, 30, 30)), _image((10, 10, 240))
    records = [
        captioning(media, "c1", "pmc_oa", red, "a red square"),
        captioning(media, "c2", "pmc_oa", blue, ""),  # MedMax scores an empty caption too
        captioning(media, "c3", "quilt", blue, "blue"),
        image_generation(media, "g1", "report", "Chest X-ray.", blue),
        image_generation(media, "g2", "report", "Chest X-ray.", None),  # no image: coverage
    ]
    lines = {x["id"]: x for x in score_records(records, scorer=Scorer(encoder=enc, media=media))}
    cos = similarity.image_text_scores(
        enc, [red, blue, blue, blue], ["a red square", "", "blue", "Chest X-ray."]
    )
    assert [lines[k]["score"] for k in ("c1", "c2", "c3", "g1")] == pytest.approx(cos, abs=1e-6)
    assert lines["g2"]["status"] == "unscored"
    tasks = summarise(lines.values())["tasks"]
    # one bucket per MedMax source, as image_text.py reports them
    assert tasks["image_captioning_pmc_oa"]["n"] == 2
    assert tasks["image_captioning_pmc_oa"]["mean"] == pytest.approx((cos[0] + cos[1]) / 2, abs=1e-6)
    assert (tasks["image_generation_report"]["n"], tasks["image_generation_report"]["coverage"]) == (2, 0.5)
    assert tasks["image_captioning_quilt"]["metric"] == "clip_cosine"


def test_visual_chat_medmax_review_and_buckets(media):
    asked = []
    replies = iter(["8 6\nThe second is vaguer.", "10 5", "Assistant 1: 8, Assistant 2: 6"])

    def chat(messages):
        asked.append(messages)
        return next(replies)

    judge = Judge(chat, model="j", protocol="medmax", retries=3)
    records = [
        visual_chat(media, "v1", "conversation", "ct_scan", "A mass."),
        visual_chat(media, "v2", "detailed_description", "ct_scan", "A lesion."),
        visual_chat(media, "v3", "conversation", None, "Unclear."),
    ]
    lines = {x["id"]: x for x in score_records(records, scorer=Scorer(judge=judge))}
    # visual_chat.py's prompt: label, caption, mention, the row's prompt, GPT-4 answer, stripped output
    assert asked[0] == medmax_chat_messages(
        "Figure 1", "CT of the liver.", "Figure 1 shows the mass.", "<image>\nWhat does the CT show?",
        "A 3 cm hypodense mass.", "A mass.",
    )  # fmt: skip
    assert len(asked) == 3  # one call each: MedMax never re-asks
    assert lines["v1"]["score"] == pytest.approx(6 / 8) and lines["v2"]["score"] == pytest.approx(5 / 10)
    assert lines["v3"]["status"] == "dropped"  # MedMax's unpacking of that line fails
    assert lines["v1"]["extra"] == {"visual_chat_conversation": 0.75, "visual_chat_ct_scan": 0.75}
    tasks = summarise(lines.values())["tasks"]
    assert tasks["visual_chat"]["mean"] == pytest.approx((0.75 + 0.5) / 2)  # x100 = MedMax's relative score
    assert tasks["visual_chat"]["dropped"] == 1
    assert tasks["visual_chat_ct_scan"]["mean"] == pytest.approx((0.75 + 0.5) / 2)
    assert (tasks["visual_chat_conversation"]["n"], tasks["visual_chat_conversation"]["dropped"]) == (2, 1)
    assert "visual_chat_detailed_description" in tasks
    assert "75.0" in markdown_table({**summarise([lines["v1"]])})


def test_mm_out_text_and_image_halves(media):
    enc = TinyEncoder()
    red = _image((200, 30, 30))
    asked = []

    def chat(messages):
        asked.append(messages)
        return "8 4"

    judge = Judge(chat, model="j", protocol="medmax")
    records = [
        mm_out(media, "m1", red, ["Here is", "a CT."], red),
        mm_out(media, "m2", red, ["No picture."], None),  # text only: the image half lacks it
    ]
    lines = {x["id"]: x for x in score_records(records, scorer=Scorer(judge=judge, encoder=enc, media=media))}
    # mm_out.py: the text parts joined by spaces, against the reference text, empty [Context]
    assert asked[0] == medmax_mm_out_messages("Show a liver CT.", "Here is a liver CT.", "Here is a CT.")
    assert lines["m1"]["score"] == pytest.approx(1.0, abs=1e-5)  # generated image == answer image
    assert lines["m1"]["extra"] == {"mm_out_text": 0.5}
    assert lines["m2"]["status"] == "unscored" and lines["m2"]["extra"] == {"mm_out_text": 0.5}
    tasks = summarise(lines.values())["tasks"]
    # image_score over the items that made an image (num_images = scored), text over all
    assert (tasks["mm_out"]["n"], tasks["mm_out"]["scored"]) == (2, 1)
    assert (tasks["mm_out_text"]["scored"], tasks["mm_out_text"]["mean"]) == (2, 0.5)


def test_visual_chat_medmax_prompt_for_a_synthesized_record(media):
    """A visual-chat instance built by synthesize (no MedMax eval meta): caption and mentions from
    the figure, the user turn as the question."""
    asked = []
    judge = Judge(lambda m: asked.append(m) or "7 7", model="j", protocol="medmax")
    record = visual_chat(media, "s1", None, None, "A mass.")
    record["meta"] = {"caption": "CT.", "mentions": [{"sentence": "Fig 1 shows it."}, "And here."]}
    (line,) = score_records([record], scorer=Scorer(judge=judge))
    assert asked[0] == medmax_chat_messages(
        "", "CT.", "Fig 1 shows it.\nAnd here.", "What does the CT show?", "A 3 cm hypodense mass.", "A mass."
    )
    assert line["score"] == 1.0 and "extra" not in line


def test_fetch_medmax_eval_parquet_to_medmax_scores(tmp_path, medmax):
    """MedMax's eval parquet (columns task_name, question_type, prompt, answer, image_path) through
    `fetch medmax-eval | synthesize`, then scored under --rules medmax: each family reaches the
    judge with exactly the fields MedMax's scripts pass."""
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medmax_cli.media import MediaStore
    from medmax_cli.score.judge import medmax_open_messages

    (tmp_path / "images").mkdir()
    for i, color in enumerate([(200, 30, 30), (10, 10, 240)]):
        _image(color).save(tmp_path / "images" / f"{i}.png")
    chat_answer = repr(
        {
            "gpt4_answer": "A mass in the liver.",
            "fig_caption": "CT of the liver.",
            "fig_label": "Figure 1",
            "in_text_mention": "Figure 1 shows the mass.",
            "domain": {
                "chest_xray": False,
                "mri": False,
                "histology": False,
                "gross": False,
                "ct_scan": True,
            },
        }
    )
    open_prompt = "Answer the question based on this image.\nQuestion: What organ?  \nAnswer:"
    rows = [
        ("vqa_rad", "open", open_prompt, "Liver", "images/0.png"),
        ("image_captioning", "pmc_oa", "", "A CT.", "images/1.png"),
        ("image_generation", "report", "Chest X-ray with effusion.", "", "images/0.png"),
        ("visual_chat", "conversation", "<image>\nWhat does it show?", chat_answer, "images/0.png"),
        ("mm_out", "mm_out", "Show a liver CT.", "Here it is.", "images/1.png"),
    ]
    columns = ("task_name", "question_type", "prompt", "answer", "image_path")
    pq.write_table(
        pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}), tmp_path / "eval.parquet"
    )
    env = {"MEDMAX_MEDIA": str(tmp_path / "media")}
    medmax("fetch", "medmax-eval", str(tmp_path / "eval.parquet"), "-o", str(tmp_path / "src.jsonl"), env=env)
    tasks = "vqa,captioning,image_generation,visual_chat,interleaved"
    args = ["--tasks", tasks, "--no-dedup", "--near-dup-bits", "-1", "-o", str(tmp_path / "inst.jsonl")]
    medmax("synthesize", str(tmp_path / "src.jsonl"), *args, env=env)
    records = [orjson.loads(x) for x in (tmp_path / "inst.jsonl").read_bytes().splitlines()]
    for record in records:
        record["prediction"] = [{"text": "  The LIVER  "}]
    asked = []

    def chat(messages):
        asked.append(messages)
        return "8 6" if "[Assistant 2]" in messages[-1]["content"] else "Correctness: 1"

    judge = Judge(chat, model="j", protocol="medmax")
    media = MediaStore(tmp_path / "media")
    lines = {x["eval_task"]: x for x in score_records(records, scorer=Scorer(judge=judge, media=media))}
    assert asked[0] == medmax_open_messages(open_prompt, "Liver", "  the liver  ")
    assert asked[1] == medmax_chat_messages(
        "Figure 1", "CT of the liver.", "Figure 1 shows the mass.", "<image>\nWhat does it show?",
        "A mass in the liver.", "The LIVER",
    )  # fmt: skip
    assert asked[2] == medmax_mm_out_messages("Show a liver CT.", "Here it is.", "  The LIVER  ")
    assert lines["vqa_rad_open"]["score"] == 1.0
    assert lines["visual_chat"]["extra"] == {"visual_chat_conversation": 0.75, "visual_chat_ct_scan": 0.75}
    assert lines["mm_out"]["extra"] == {"mm_out_text": 0.75}
    # no CLIP model here: the similarity families are unscored, with the reason
    for name in ("image_captioning_pmc_oa", "image_generation_report", "mm_out"):
        assert lines[name]["status"] == "unscored" and "--clip-model" in lines[name]["reason"]
