"""Local dataset readers, each on a small file built at test time in the format its source publishes
(file names, headers, sharding and misspelt keys as released; sources cited in docs/fetch.md).

Every test checks that no row is lost or mis-assigned: rows read = records out + rejected + skipped,
each reject or skip with its reason.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fakes.jats_articles import png
from medmax_cli.fetch import datasets
from medmax_cli.records import RecordError, validate
from medmax_cli.streams import ErrorPolicy, parse_jsonl


def run(reader, path: Path, media, **kw) -> tuple[list[dict], list[dict], dict]:
    """Records, rejects (and skips) and the run counts; asserts the counts add up."""
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="fetch")
    records = list(reader(path, media=media, policy=policy, **kw))
    for record in records:
        validate(record)
    entries = [orjson.loads(line) for line in rejects.getvalue().splitlines()]
    report = policy.report
    row_entries = [e for e in entries if not str(e["reason"]).startswith("file not read")]
    assert report.counts["in"] == len(records) + len(row_entries), (report.counts, entries)
    # in = out + rejected + skipped, each counted by class (bounded), each listed in the rejects file
    assert report.counts["in"] == len(records) + sum(report.dropped.values()) + sum(report.skipped.values())
    assert sum(report.skipped.values()) == sum(1 for e in row_entries if e.get("skipped"))
    assert report.counts.get("files not read", 0) == len(entries) - len(row_entries)
    assert len({r["id"] for r in records}) == len(records), "ids must be unique"
    return records, entries, dict(report.counts)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))


def write_csv(path: Path, header: list[str], rows: list[list[str]], *, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")
    with handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def image(path: Path, seed: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(seed, fmt=fmt))


def hf_image(seed: int) -> dict:
    """A Hugging Face `Image` feature as the parquet releases store it."""
    return {"bytes": png(seed), "path": f"{seed}.png"}


# --------------------------------------------------------------------------- MedMax training rows


def test_medmax_rows_tokens_text_and_credential(tmp_path, media):
    image(tmp_path / "images" / "pmc" / "a.png", 1)
    image(tmp_path / "images" / "pmc" / "b.png", 2)
    image(tmp_path / "mimic" / "files" / "p10" / "x.jpg", 3, "JPEG")
    rows = [
        {  # pre-tokenised: kept as is
            "text": "<image>What is shown?<reserved08706>A CT.",
            "tokens": [0, 8197, 5, 8196, 2],
            "image_path": "images/pmc/a.png",
            "task": "vqa",
            "source": "pmc_vqa",
            "credential": "no",
        },
        {  # text without tokens: split into turns, two images in order
            "text": "Compare <image> and <image>.<reserved08706>The second shows a mass.",
            "tokens": None,
            "image_path": ["images/pmc/a.png", "images/pmc/b.png"],
            "task": "Visual Chat",
            "source": "pmc",
            "credential": "no",
        },
        {  # credentialed, as released: no tokens, no image path -> counted skip
            "text": "<image>Write the report.<reserved08706>No acute process.",
            "tokens": None,
            "image_path": None,
            "task": "report_understanding",
            "source": "mimic_cxr",
            "credential": "yes",
        },
        {  # credentialed, completed by the user with the MIMIC-CXR image path
            "text": "<image>Write the report.<reserved08706>No acute process.",
            "tokens": None,
            "image_path": "mimic/files/p10/x.jpg",
            "task": "report_understanding",
            "source": "mimic_cxr",
            "credential": "yes",
        },
        {"text": "x", "tokens": [1], "image_path": "../escape.png", "task": "vqa", "credential": "no"},
        {"text": "<image>Q<reserved08706>A", "tokens": None, "image_path": [], "task": "vqa"},
    ]
    lines = b"".join(orjson.dumps(r) + b"\n" for r in rows) + b"{not json\n"
    (tmp_path / "train.jsonl").write_bytes(lines)
    records, entries, _ = run(datasets.read_medmax, tmp_path, media)
    assert [r["id"] for r in records] == ["medmax-1", "medmax-2", "medmax-4"]
    tokens, text, completed = records
    assert tokens["tokens"] == [0, 8197, 5, 8196, 2] and "turns" not in tokens
    assert text["task"] == "visual_chat" and text["turns"] == [
        {
            "role": "user",
            "content": [{"text": "Compare "}, {"image": 0}, {"text": " and "}, {"image": 1}, {"text": "."}],
        },
        {"role": "assistant", "content": [{"text": "The second shows a mass."}]},
    ]
    assert [i["sha256"] for i in text["images"]] == [
        media.import_file(tmp_path / "images" / "pmc" / n)["sha256"] for n in ("a.png", "b.png")
    ]
    assert completed["credential"] is True and completed["task"] == "report_understanding"
    assert completed["turns"][0]["content"][0] == {"image": 0} and len(completed["images"]) == 1
    reasons = [e["reason"] for e in entries]
    assert reasons[0].startswith("credentialed row not completed")
    assert "may not leave" in reasons[1]
    assert "1 <image> placeholder(s) but the row lists 0" in reasons[2]
    assert reasons[3].startswith("not a JSON object")


def test_released_rows_of_different_tasks_sharing_an_image_all_survive_synthesize(tmp_path, media):
    from medmax_cli.synthesize import synthesize

    image(tmp_path / "a.png", 5)
    rows = [
        {
            "text": "<image>Describe.<reserved08706>A chest CT.",
            "image_path": "a.png",
            "task": "Image Captioning",
        },
        {"text": "<image>Is it CT?<reserved08706>yes", "image_path": "a.png", "task": "VQA"},
        {"text": "Draw a chest CT.<reserved08706><image>", "image_path": "a.png", "task": "Image Generation"},
        {
            "text": "<image>Describe.<reserved08706>A chest CT, axial.",
            "image_path": "a.png",
            "task": "captioning",
        },
    ]
    (tmp_path / "train.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    records, _, _ = run(datasets.read_medmax, tmp_path, media)
    policy = ErrorPolicy("skip", io.BytesIO(), stage="synthesize")
    out = list(synthesize(records, policy=policy, media=media))
    assert [o["id"] for o in out] == [r["id"] for r in records], policy.report.dropped


# --------------------------------------------------------------------------- MedMax evaluation parquet


def _eval_rows(tmp_path: Path) -> list[dict]:
    for i, name in enumerate(("vqa.png", "cap.png", "gen.png", "chat.png", "mm_answer.png")):
        image(tmp_path / "eval" / "images" / name, 10 + i)
    chat_answer = repr(
        {
            "question_id": 7,
            "gpt4_answer": "The CT shows a left lower lobe mass.",
            "fig_caption": "Axial CT of the chest.",
            "fig_label": "Figure 2",
            "in_text_mention": "A mass is seen in Figure 2.",
            "domain": {
                "chest_xray": False,
                "mri": False,
                "histology": False,
                "gross": False,
                "ct_scan": True,
            },
            "type": "conversation",
        }
    )
    return [
        {"task_name": "vqa_rad", "question_type": "closed", "prompt": "Is it CT?", "answer": "yes",
         "image_path": "images/vqa.png"},
        {"task_name": "pmc_vqa", "question_type": "mcq", "prompt": "Which?\nA: x\nB: y\nAnswer with the letter.",
         "answer": "B", "image_path": "images/vqa.png"},
        {"task_name": "quilt_vqa", "question_type": "open", "prompt": "What stain?", "answer": "h&e",
         "image_path": "images/vqa.png"},
        {"task_name": "image_captioning", "question_type": "quilt", "prompt": "Describe the slide.", "answer": "",
         "image_path": "images/cap.png"},
        {"task_name": "image_generation", "question_type": "pmc_oa", "prompt": "An axial CT of the chest.",
         "answer": "", "image_path": "images/gen.png"},
        {"task_name": "image_generation", "question_type": "report", "prompt": "A frontal chest X-ray.",
         "answer": "", "image_path": None},
        {"task_name": "visual_chat", "question_type": "conversation", "prompt": "What does the CT show?\n<image>",
         "answer": chat_answer, "image_path": "images/chat.png"},
        {"task_name": "visual_chat", "question_type": "detailed_description", "prompt": "<image>\nDescribe.",
         "answer": chat_answer, "image_path": "images/chat.png"},
        {"task_name": "mm_out", "question_type": "mm_out", "prompt": "Show an example of a pleural effusion.",
         "answer": "Here is a chest X-ray with a right effusion.", "image_path": "images/mm_answer.png"},
        {"task_name": "something_new", "question_type": "other", "prompt": "?", "answer": "", "image_path": None},
    ]  # fmt: skip


def _write_eval(tmp_path: Path, shards: int = 2) -> Path:
    rows = _eval_rows(tmp_path)
    data = tmp_path / "eval" / "data"
    data.mkdir(parents=True)
    per = -(-len(rows) // shards)
    for k in range(shards):
        part = rows[k * per : (k + 1) * per]
        table = pa.table({c: [r[c] for r in part] for c in rows[0]})
        pq.write_table(table, data / f"train-{k:05d}-of-{shards:05d}.parquet")
    return data


def test_medmax_eval_every_family(tmp_path, media):
    data = _write_eval(tmp_path)
    records, entries, counts = run(datasets.read_medmax_eval, data, media, images=tmp_path / "eval")
    by_task = {r["meta"]["eval_task"]: r for r in records}
    assert list(by_task) == [
        "vqa_rad_closed", "pmc_vqa_mcq", "quilt_vqa_open", "image_captioning_quilt", "image_generation_pmc_oa",
        "image_generation_report", "visual_chat", "mm_out",
    ] or len(records) == 9  # fmt: skip
    assert len(records) == 9 and [e["reason"] for e in entries] == [
        "unknown MedMax eval family: something_new/other"
    ]
    assert counts["eval vqa"] == 3 and counts["eval visual_chat"] == 2 and counts["eval mm_out"] == 1
    assert len({r["id"] for r in records}) == 9  # unique across the two shards
    vqa = by_task["pmc_vqa_mcq"]
    assert vqa["kind"] == "qa" and vqa["options"] == ["x", "y"] and vqa["question_type"] == "multiple_choice"
    assert vqa["meta"]["verbatim_prompt"] and vqa["meta"]["eval_family"] == "vqa"
    cap = by_task["image_captioning_quilt"]
    assert cap["task"] == "captioning" and cap["domain"] == "histopathology"
    assert cap["turns"] == [
        {"role": "user", "content": [{"image": 0}, {"text": "Please describe this picture."}]}
    ]
    assert cap["meta"]["eval_source"] == "quilt" and cap["meta"]["eval_prompt"] == "Describe the slide."
    gen = by_task["image_generation_pmc_oa"]
    assert gen["turns"][0] == {"role": "user", "content": [{"text": "An axial CT of the chest."}]}
    assert gen["turns"][1] == {"role": "assistant", "content": [{"image": 0}]}
    assert (
        by_task["image_generation_report"]["images"] == []
        and len(by_task["image_generation_report"]["turns"]) == 1
    )
    chats = [r for r in records if r.get("task") == "visual_chat"]
    assert chats[0]["turns"][0]["content"] == [{"text": "What does the CT show?"}, {"image": 0}]
    assert chats[1]["turns"][0]["content"] == [
        {"image": 0}, {"text": "Analyze the image in a comprehensive and detailed manner."}
    ]  # fmt: skip
    assert chats[0]["turns"][1]["content"] == [{"text": "The CT shows a left lower lobe mass."}]
    assert (
        chats[0]["meta"]["caption"] == "Axial CT of the chest."
        and chats[0]["meta"]["llava_domain"] == "ct_scan"
    )
    assert chats[0]["domain"] == "radiology" and chats[1]["meta"]["chat_type"] == "detailed_description"
    assert chats[0]["meta"]["mention"] == "A mass is seen in Figure 2."
    mm = by_task["mm_out"]
    assert mm["task"] == "interleaved" and mm["turns"][0]["content"] == [
        {"text": "Show an example of a pleural effusion."}
    ]  # the answer image is never in the prompt
    assert mm["turns"][1]["content"] == [
        {"text": "Here is a chest X-ray with a right effusion."},
        {"image": 0},
    ]
    assert (
        mm["images"][0]["sha256"]
        == media.import_file(tmp_path / "eval" / "images" / "mm_answer.png")["sha256"]
    )
    assert datasets.options_in_prompt("Q\n(A) one\n(B) two\n(D) skipped") == ["one", "two"]
    assert datasets.options_in_prompt("no options here") == []


def test_medmax_eval_families_go_through_synthesize_and_generate_prompts(tmp_path, media):
    from medmax_cli.generate.prompt import _is_prompt_image, resolve_mode
    from medmax_cli.synthesize import synthesize

    data = _write_eval(tmp_path, shards=1)
    records, _, _ = run(datasets.read_medmax_eval, data, media, images=tmp_path / "eval")
    policy = ErrorPolicy("fail", stage="synthesize")
    out = list(synthesize(records, policy=policy, media=media))
    assert len(out) == 9, policy.report.dropped  # nothing merged, nothing dropped
    mm = next(o for o in out if o["meta"]["eval_task"] == "mm_out")
    assert resolve_mode(mm, "auto") == "interleaved" and not _is_prompt_image(mm, 0)
    gen = next(o for o in out if o["meta"]["eval_task"] == "image_generation_pmc_oa")
    assert resolve_mode(gen, "auto") == "image" and not _is_prompt_image(gen, 0)
    vqa = next(o for o in out if o["meta"].get("eval_task") == "pmc_vqa_mcq")
    assert vqa["task"] == "vqa" and vqa["turns"][0]["content"][1]["text"].startswith("Which?\nA: x")


def test_medmax_eval_command_exits_zero_with_every_family(medmax, tmp_path):
    data = _write_eval(tmp_path)
    result = medmax(
        "fetch", "medmax-eval", str(data), "--images", str(tmp_path / "eval"),
        env={"MEDMAX_MEDIA": str(tmp_path / "m")},
    )  # fmt: skip
    lines = parse_jsonl(result.stdout)
    assert len(lines) == 9
    summary = result.stderr.decode()
    assert "in 10" in summary and "out 9" in summary and "unknown MedMax eval family: 1" in summary


def test_medmax_eval_bad_visual_chat_answer_is_a_clear_reject(tmp_path, media):
    image(tmp_path / "c.png", 1)
    table = pa.table(
        {"task_name": ["visual_chat"], "question_type": ["conversation"], "prompt": ["<image>\nQ"],
         "answer": ["{'no_answer': 1"], "image_path": ["c.png"]}
    )  # fmt: skip
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    records, entries, _ = run(datasets.read_medmax_eval, tmp_path, media)
    assert records == [] and "not a dict literal" in entries[0]["reason"]


# --------------------------------------------------------------------------- VQA sets


def _vqa_rad_row(qid: int, name: str, phrase: str, answer: str = "Yes", linked: int | None = None) -> dict:
    # Fields of 'VQA_RAD Dataset Public.json' (OSF release)
    return {
        "qid": qid,
        "phrase_type": phrase,
        "qid_linked_id": linked if linked is not None else qid,
        "image_case_url": "https://medpix.nlm.nih.gov/case?id=x",
        "image_name": name,
        "image_organ": "HEAD",
        "evaluation": "evaluated",
        "question": "Is there a mass?",
        "question_rephrase": "NULL",
        "question_relation": "NULL",
        "question_frame": "NULL",
        "question_type": "PRES",
        "answer": answer,
        "answer_type": "CLOSED" if answer in ("Yes", "No") else "OPEN",
    }


def test_vqa_rad_official_split(tmp_path, media):
    image(tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg", 3, "JPEG")
    write_json(
        tmp_path / "VQA_RAD Dataset Public.json",
        [
            _vqa_rad_row(1, "synpic1.jpg", "freeform"),
            _vqa_rad_row(2, "synpic1.jpg", "para", linked=1),
            _vqa_rad_row(3, "synpic1.jpg", "test_freeform", "left"),
            _vqa_rad_row(4, "synpic1.jpg", "test_para", "left", linked=3),
            _vqa_rad_row(5, "missing.jpg", "freeform"),
        ],
    )
    records, entries, _ = run(datasets.read_vqa_rad, tmp_path, media)
    assert [(r["id"], r["meta"]["split"]) for r in records] == [
        ("vqa_rad-1", "train"), ("vqa_rad-2", "train"), ("vqa_rad-3", "test"), ("vqa_rad-4", "test")
    ]  # fmt: skip
    assert records[3]["meta"]["qid_linked_id"] == 3 and records[2]["question_type"] == "open"
    assert records[0]["question_type"] == "closed" and records[0]["license"] == "cc0"
    assert len(entries) == 1 and "image not found: 'missing.jpg'" in entries[0]["reason"]
    assert entries[0]["class"] == "image not found" and "VQA_RAD Image Folder" in entries[0]["reason"]


def test_vqa_rad_hf_parquet_mirror(tmp_path, media):
    (tmp_path / "data").mkdir()
    for split, n in (("train", 2), ("test", 1)):
        table = pa.table(
            {"image": [hf_image(i) for i in range(n)], "question": ["Mass?"] * n, "answer": ["no"] * n}
        )
        pq.write_table(table, tmp_path / "data" / f"{split}-00000-of-00001-abc.parquet")
    records, _, _ = run(datasets.read_vqa_rad, tmp_path, media)
    assert sorted((r["meta"]["split"], r["id"]) for r in records) == [
        ("test", "vqa_rad-test-00000-0"), ("train", "vqa_rad-train-00000-0"), ("train", "vqa_rad-train-00000-1")
    ]  # fmt: skip


def test_vqa_rad_malformed_file_is_a_clear_error(medmax, tmp_path, media):
    (tmp_path / "VQA_RAD Dataset Public.json").write_text('[{"qid": 1, "question": ')
    with pytest.raises(RecordError, match="not valid JSON"):
        list(datasets.read_vqa_rad(tmp_path, media=media, policy=ErrorPolicy()))
    result = medmax("fetch", "vqa-rad", str(tmp_path), check=False, env={"MEDMAX_MEDIA": str(tmp_path / "m")})
    err = result.stderr.decode()
    assert result.returncode == 1 and "VQA_RAD Dataset Public.json" in err and "not valid JSON" in err
    assert "Traceback" not in err
    write_json(tmp_path / "VQA_RAD Dataset Public.json", {"not": "a list"})
    with pytest.raises(RecordError, match="expected a JSON array"):
        list(datasets.read_vqa_rad(tmp_path, media=media, policy=ErrorPolicy()))


def test_slake_release_files_and_languages(tmp_path, media):
    image(tmp_path / "imgs" / "xmlab1" / "source.jpg", 4, "JPEG")
    row = {
        "img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "Lung",
        "q_lang": "en", "location": "Chest", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa",
        "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 7,
    }  # fmt: skip
    write_json(tmp_path / "train.json", [row, {**row, "q_lang": "zh", "question": "哪个器官?", "qid": 8}])
    write_json(tmp_path / "validate.json", [{**row, "qid": 7, "answer_type": "CLOSED", "answer": "Yes"}])
    write_json(tmp_path / "test.json", [{**row, "qid": 9}])
    records, entries, _ = run(datasets.read_slake, tmp_path, media)
    assert [(r["id"], r["meta"]["split"]) for r in records] == [
        ("slake-train-7", "train"), ("slake-validation-7", "validation"), ("slake-test-9", "test")
    ]  # fmt: skip
    assert entries[0]["reason"].startswith("language zh") and entries[0]["class"] == "language not selected"
    assert entries[0]["skipped"] is True


def test_pathvqa_sharded_splits_keep_every_row(tmp_path, media):
    data = tmp_path / "data"
    data.mkdir()
    seed = 0
    for split, shards in (("train", 2), ("validation", 1), ("test", 3)):
        for k in range(shards):
            n = 2
            table = pa.table(
                {
                    "image": [hf_image(seed + i) for i in range(n)],
                    "question": [f"Is this {split} {k} {i}?" for i in range(n)],
                    "answer": ["yes", "the liver"],
                }
            )
            seed += n
            pq.write_table(table, data / f"{split}-{k:05d}-of-{shards:05d}-0123abcd.parquet")
    records, _, counts = run(datasets.read_pathvqa, tmp_path, media)
    assert len(records) == 12 and counts["in"] == 12
    assert {r["meta"]["split"] for r in records} == {"train", "validation", "test"}
    assert "pathvqa-test-00002-1" in {r["id"] for r in records}
    test_rows = [r for r in records if r["meta"]["split"] == "test"]
    assert [r["question"] for r in test_rows] == [
        f"Is this test {k} {i}?" for k in range(3) for i in range(2)
    ]
    assert [r["question_type"] for r in test_rows[:2]] == ["closed", "open"]


def test_pathvqa_malformed_file_is_a_clear_error(medmax, tmp_path, media):
    (tmp_path / "test-00000-of-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(RecordError, match="not a readable parquet file") as info:
        list(datasets.read_pathvqa(tmp_path, media=media, policy=ErrorPolicy()))
    assert "test-00000-of-00001.parquet" in str(info.value)
    result = medmax("fetch", "pathvqa", str(tmp_path), check=False, env={"MEDMAX_MEDIA": str(tmp_path / "m")})
    err = result.stderr.decode()
    assert result.returncode == 1 and "not a readable parquet file" in err and "Traceback" not in err
    pq.write_table(
        pa.table({"img": [b"x"], "question": ["q"], "answer": ["no"]}),
        tmp_path / "test-00000-of-00001.parquet",
    )
    records, entries, _ = run(datasets.read_pathvqa, tmp_path, media)
    assert records == [] and "row has no field 'image'" in entries[0]["reason"]


V1 = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
V2 = ["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer",
      "split"]  # fmt: skip


def test_pmc_vqa_v1_and_v2_by_header(tmp_path, media):
    image(tmp_path / "figures" / "PMC2_F1.jpg", 6, "JPEG")
    image(tmp_path / "images" / "PMC1_F1.jpg", 7, "JPEG")
    write_csv(
        tmp_path / "train_2.csv",
        V2,
        [["0", "PMC2_F1.jpg", "Coronary angiogram.", "Which artery is occluded?", " A: Right Coronary ",
          " B: Left Anterior Descending ", " C: Circumflex ", " D: Left Main ", "B", "train"]],
    )  # fmt: skip
    write_csv(
        tmp_path / "test.csv",
        V1,
        [["PMC1_F1.jpg", "What modality?", "CT", "A:MRI", "B:CT", "C:US", "D:PET", "B"]],
    )
    write_csv(tmp_path / "test_clean.csv", V1, [["PMC1_F1.jpg", "What modality?", "CT", "A:MRI", "B:CT", "C:US",
                                                 "D:PET", "B"]])  # fmt: skip
    records, entries, _ = run(datasets.read_pmc_vqa, tmp_path, media)
    v1, v2 = records
    assert v2["options"] == ["Right Coronary", "Left Anterior Descending", "Circumflex", "Left Main"]
    assert v2["answer"] == "B" and v2["meta"]["answer_text"] == "Left Anterior Descending"
    assert v2["meta"]["version"] == 2 and v2["meta"]["caption"] == "Coronary angiogram."
    assert v1["options"] == ["MRI", "CT", "US", "PET"] and v1["answer"] == "B" and v1["meta"]["version"] == 1
    assert v1["images"][0]["sha256"] != v2["images"][0]["sha256"]  # v1 from images/, v2 from figures/
    assert [e["reason"] for e in entries] == ["file not read: test_clean.csv is a subset of test.csv"]
    alone, _, _ = run(datasets.read_pmc_vqa, tmp_path / "test_clean.csv", media)
    assert len(alone) == 1


def test_pmc_vqa_wrong_header_is_a_clear_error(tmp_path, media):
    write_csv(tmp_path / "train.csv", ["image", "q"], [["a", "b"]])
    with pytest.raises(RecordError, match="not a PMC-VQA v1 or v2 header"):
        list(datasets.read_pmc_vqa(tmp_path, media=media, policy=ErrorPolicy()))


def test_pubmedvision_paths_start_with_images(tmp_path, media):
    image(tmp_path / "images" / "pmc_1.jpg", 7, "JPEG")
    image(tmp_path / "images" / "pmc_2.jpg", 8, "JPEG")
    row = {
        "id": "PMC1_f1",
        "image": ["images/pmc_1.jpg", "images/pmc_2.jpg"],
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhat?"},
            {"from": "gpt", "value": "A lung."},
        ],
        "modality": "Computed Tomography",
        "body_part": "Chest",
    }
    write_json(tmp_path / "PubMedVision_Alignment_VQA.json", [row])
    write_json(tmp_path / "PubMedVision_InstructionTuning_VQA.json", [{**row, "image": ["images/nope.jpg"]}])
    records, entries, _ = run(datasets.read_pubmedvision, tmp_path, media)
    assert len(records) == 1 and len(records[0]["images"]) == 2
    assert records[0]["conversation"][1] == {"role": "assistant", "text": "A lung."}
    assert records[0]["meta"]["body_part"] == "Chest" and "not found" in entries[0]["reason"]
    for images in (tmp_path, tmp_path / "images"):  # --images: the dataset root or images/ itself
        again, _, _ = run(
            datasets.read_pubmedvision, tmp_path / "PubMedVision_Alignment_VQA.json", media, images=images
        )
        assert len(again[0]["images"]) == 2


def test_llava_med_release_layout_and_misspelt_key(tmp_path, media):
    data = tmp_path / "data"
    image(data / "images" / "17506892_F1.jpg", 9, "JPEG")
    align = {
        "id": "17506892_F1",
        "image": "17506892_F1.jpg",
        "conversatons": [
            {"from": "human", "value": "<image>\nCan you describe the image for me?"},
            {"from": "gpt", "value": "Maps of hypoperfusion."},
        ],
    }
    instruct = {"id": "17506892_F1", "image": "17506892_F1.jpg", "conversations": align["conversatons"],
                "domain": {"chest_xray": False}}  # fmt: skip
    write_json(data / "alignment" / "llava_med_alignment_500k.json", [align])
    write_json(data / "instruct" / "llava_med_instruct_60k_inline_mention.json", [instruct])
    write_json(data / "instruct" / "llava_med_instruct_60k.json", [instruct])
    records, entries, _ = run(datasets.read_llava_med, tmp_path, media)
    assert [r["meta"]["file"] for r in records] == [
        "llava_med_alignment_500k.json", "llava_med_instruct_60k_inline_mention.json"
    ]  # fmt: skip
    assert records[0]["conversation"][0]["text"].endswith("describe the image for me?")
    assert records[0]["id"] != records[1]["id"] and len(records[1]["images"]) == 1
    assert entries[0]["reason"].startswith("file not read: llava_med_instruct_60k.json")


def test_rocov2_concepts_and_licence(tmp_path, media):
    image(tmp_path / "train" / "ROCOv2_2023_train_000001.jpg", 8, "JPEG")
    image(tmp_path / "valid" / "ROCOv2_2023_valid_000001.jpg", 9, "JPEG")
    write_csv(
        tmp_path / "train_captions.csv", ["ID", "Caption"], [["ROCOv2_2023_train_000001", "Head CT, bleed."]]
    )
    write_csv(
        tmp_path / "train_concepts.csv", ["ID", "CUIs"], [["ROCOv2_2023_train_000001", "C0040405;C0019080"]]
    )
    write_csv(
        tmp_path / "valid_captions.csv", ["ID", "Caption"], [["ROCOv2_2023_valid_000001", "Chest X-ray."]]
    )
    records, _, _ = run(datasets.read_rocov2, tmp_path, media)
    assert [r["meta"]["split"] for r in records] == ["train", "validation"]  # one vocabulary
    assert [r["meta"]["source_split"] for r in records] == ["train", "valid"]  # the source's own name
    assert records[0]["meta"]["cuis"] == ["C0040405", "C0019080"] and records[1]["meta"]["cuis"] == []
    assert all(r["license"] == "cc-by-nc-sa" for r in records)


def test_rocov2_hf_parquet(tmp_path, media):
    (tmp_path / "data").mkdir()
    table = pa.table(
        {
            "image": [hf_image(1)],
            "image_id": ["ROCOv2_2023_test_000001"],
            "caption": ["CT."],
            "cui": [["C0040405"]],
        }
    )
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    records, _, _ = run(datasets.read_rocov2, tmp_path, media)
    assert records[0]["meta"] == {
        "split": "test",
        "source_split": "test",
        "cuis": ["C0040405"],
        "image_license": "cc-by or cc-by-nc",
    }


def test_mimic_cxr_split_and_view(tmp_path, media):
    study = tmp_path / "files" / "p10" / "p10000032"
    (study / "s50414267").mkdir(parents=True)
    (study / "s50414267.txt").write_text("FINDINGS: No acute process.\n")
    image(study / "s50414267" / "02aa804e.jpg", 9, "JPEG")
    image(study / "s50414267" / "174413ec.jpg", 10, "JPEG")
    (study / "s53189527").mkdir()
    (study / "s53189527.txt").write_text("FINDINGS: Effusion.\n")
    image(study / "s53189527" / "2a2277a9.jpg", 11, "JPEG")
    write_csv(
        tmp_path / "mimic-cxr-2.0.0-split.csv.gz",
        ["dicom_id", "study_id", "subject_id", "split"],
        [["02aa804e", "50414267", "10000032", "train"], ["174413ec", "50414267", "10000032", "train"],
         ["2a2277a9", "53189527", "10000032", "test"]],
        gz=True,
    )  # fmt: skip
    write_csv(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz",
        ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition"],
        [["02aa804e", "10000032", "50414267", "CHEST (PA AND LAT)", "PA"],
         ["174413ec", "10000032", "50414267", "CHEST (PA AND LAT)", "LATERAL"],
         ["2a2277a9", "10000032", "53189527", "CHEST (PORTABLE AP)", "AP"]],
        gz=True,
    )  # fmt: skip
    records, _, _ = run(datasets.read_mimic_cxr, tmp_path, media)
    assert [(r["meta"]["split"], r["meta"]["views"]) for r in records] == [
        ("train", ["PA", "LATERAL"]), ("test", ["AP"])
    ]  # fmt: skip
    assert all(r["credential"] is True and r["kind"] == "report" for r in records)


def test_split_option_keeps_test_items_out(medmax, tmp_path):
    image(tmp_path / "VQA_RAD Image Folder" / "a.jpg", 1, "JPEG")
    write_json(
        tmp_path / "VQA_RAD Dataset Public.json",
        [_vqa_rad_row(1, "a.jpg", "freeform"), _vqa_rad_row(2, "a.jpg", "test_freeform")],
    )
    env = {"MEDMAX_MEDIA": str(tmp_path / "m")}
    train = medmax("fetch", "vqa-rad", str(tmp_path), "--split", "train", env=env)
    assert [x["id"] for x in parse_jsonl(train.stdout)] == ["vqa_rad-1"]
    assert "skipped 1 (split not selected: 1)" in train.stderr.decode()


def test_list_and_dataset_command(medmax, tmp_path):
    listing = medmax("fetch", "--list").stdout.decode()
    for name in ("pmc", "vqa-rad", "slake", "mimic-cxr", "medmax-eval"):
        assert name in listing
    assert "PhysioNet" in listing
    image(tmp_path / "VQA_RAD Image Folder" / "a.jpg", 1, "JPEG")
    write_json(
        tmp_path / "VQA_RAD Dataset Public.json",
        [{"qid": 1, "image_name": "a.jpg", "answer": "no", "answer_type": "CLOSED", "question": "Mass?",
          "phrase_type": "freeform"}],
    )  # fmt: skip
    out = medmax("fetch", "vqa-rad", str(tmp_path), "-q", env={"MEDMAX_MEDIA": str(tmp_path / "m")}).stdout
    assert parse_jsonl(out)[0]["answer"] == "no"


def test_completed_credentialed_row_with_tokens_trains(tmp_path, media):
    row = {"text": "<image>Report?<reserved08706>Clear.", "tokens": [0, 8197, 9, 8196, 8710, 77, 2],
           "image_path": None, "task": "report_understanding", "source": "mimic_cxr", "credential": "yes"}  # fmt: skip
    (tmp_path / "train.jsonl").write_bytes(orjson.dumps(row) + b"\n")
    records, entries, _ = run(datasets.read_medmax, tmp_path, media)
    assert entries == [] and records[0]["credential"] is True and records[0]["tokens"][-1] == 2
